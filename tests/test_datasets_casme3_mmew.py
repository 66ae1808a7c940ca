"""The CAS(ME)^3 part A and MMEW adapters on the real sheets and on fake trees in the real on-disk layouts.

The trees hold one tiny uniform-grey jpg per frame the samples need (onset and apex), whose grey level encodes the
frame number, so a test can tell that the adapter read the right file for every sample.
"""

from __future__ import annotations

import re
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline.config import MicroParams
from pipeline.datasets import AnnotationError, load_dataset
from pipeline.ingest.micro import ingest_micro
from pipeline.io import decode_png

CASME3_SHEET = "cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx"
MMEW_SHEET = "MMEW_Micro_Exp_delete_others.csv"
CASME3_NATIVE = ["anger", "disgust", "fear", "happy", "others", "sad", "surprise"]


def _params(root, **kw):
    base = {"dataset": "casme3", "root": root, "annotation": None, "protocol": "native", "apex_outside": "middle",
            "casme2_frames": "cropped", "smic_labels": "folders", "smic_apex": None, "detector": "none",
            "box_scale": 1.3, "align_margin": 0.25, "image_size_px": 16, "optical_flow": "none"}
    return MicroParams(**{**base, **kw})


def _grey(frame: int) -> int:
    return 10 + frame % 230


def _write_frames(paths: dict) -> None:
    """One 8x8 uniform-grey jpg per ``{path: frame}``."""
    for path, frame in paths.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.full((8, 8, 3), _grey(frame), np.uint8))


def _assert_right_frames(samples: pd.DataFrame, size_px: int) -> None:
    for column in ("onset", "apex"):
        images = np.stack([decode_png(data) for data in samples[f"{column}_image"]])  # (N, size, size, 3)
        assert images.shape == (len(samples), size_px, size_px, 3)
        expected = samples[f"{column}_frame"].map(_grey).to_numpy()
        assert (np.abs(images[:, size_px // 2, size_px // 2, 0].astype(int) - expected) <= 2).all()


def _every_row_once(samples: pd.DataFrame, dropped: pd.DataFrame, n_rows: int) -> None:
    rows = list(samples["sheet_row"]) + list(dropped["sheet_row"])
    assert sorted(rows) == list(range(2, n_rows + 2))  # header = row 1: each data row exactly once


# --- CAS(ME)^3 part A ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def casme3_sheet(shared_annotations):
    return shared_annotations / "casme3" / CASME3_SHEET


def test_casme3_real_sheet_middle(casme3_sheet, tmp_path):
    samples, dropped, classes, fixes, _ = load_dataset(_params(tmp_path, annotation=casme3_sheet))
    assert len(samples) == 857 and len(dropped) == 3
    _every_row_once(samples, dropped, 860)
    assert samples["subject"].nunique() == 94 and samples["subject"].str.fullmatch(r"casme3/spNO\.\d+").all()
    # one video holds several MEs: (subject, video) repeats, (subject, video, onset) does not
    assert samples.duplicated(["subject", "clip"]).sum() == 395 and samples["sample_id"].is_unique
    assert samples["sample_id"].iloc[1] == "casme3/spNO.1/b/166"
    assert classes == CASME3_NATIVE
    assert samples["label_name"].value_counts()["others"] == 161 - 3  # 'others' 158 + 'Others' 3, less 3 drops
    assert sorted(dropped["reason"]) == [
        f"{CASME3_SHEET} row 751: Offset 2694 is before Onset 3647 (not an interval)",
        f"{CASME3_SHEET} row 798: Offset 0 is before Onset 1812 (not an interval)",
        f"{CASME3_SHEET} row 800: Offset 0 is before Onset 2327 (not an interval)",
    ]
    notes = fixes["reason"].tolist()  # the apex fixes that kept a row
    assert notes == [f"{CASME3_SHEET} row 130: apex 83 outside [onset 112, offset 358]: "
                     "apex set to the middle frame 235"]
    assert samples["apex_path"].iloc[1] == str(tmp_path / "spNO.1" / "b" / "color" / "175.jpg")


def test_casme3_real_sheet_drop(casme3_sheet, tmp_path):
    samples, dropped, _, fixes, _ = load_dataset(_params(tmp_path, annotation=casme3_sheet, apex_outside="drop"))
    assert len(samples) == 856 and len(dropped) == 4 and fixes.empty
    _every_row_once(samples, dropped, 860)
    assert dropped["reason"].str.contains(r"before Onset|apex 83 outside \[onset 112, offset 358\]: dropped").all()
    assert set(dropped["subject"]) == {"casme3/spNO.40", "casme3/spNO.216", "casme3/spNO.149"}


def test_casme3_three_classes(casme3_sheet, tmp_path):
    samples, dropped, classes, _, _ = load_dataset(_params(tmp_path, annotation=casme3_sheet,
                                                        protocol="megc2019-3class"))
    assert classes == ["negative", "positive", "surprise"]
    assert samples["label_name"].value_counts().to_dict() == {"negative": 457, "surprise": 187, "positive": 55}
    _every_row_once(samples, dropped, 860)
    assert dropped["reason"].str.contains("'(?:o|O)thers' is outside protocol|before Onset").all()


@pytest.fixture(scope="module")
def casme3_ingested(casme3_sheet, tmp_path_factory):
    """ingest_micro on a fake part A tree built from the real sheet, the apex of spNO.1/b removed."""
    root = tmp_path_factory.mktemp("casme3")
    shutil.copy(casme3_sheet, root / CASME3_SHEET)  # the standard sheet name under the root
    sheet = pd.read_excel(casme3_sheet, sheet_name="label", dtype=str)
    frames = {root / r.Subject / r.Filename / "color" / f"{int(n)}.jpg": int(n)
              for r in sheet.itertuples() for n in (r.Onset, r.Apex)}
    frames[root / "spNO.149" / "d" / "color" / "235.jpg"] = 235  # the middle frame the apex policy picks
    _write_frames(frames)
    missing = root / "spNO.1" / "b" / "color" / "175.jpg"
    missing.unlink()
    return ingest_micro(_params(root), progress=False), missing


def test_casme3_ingest_reads_the_right_frames(casme3_ingested):
    (samples, dropped, classes, _), missing = casme3_ingested
    assert len(samples) == 856 and len(dropped) == 4 and classes == CASME3_NATIVE
    _assert_right_frames(samples, 16)
    lost = dropped[dropped["reason"].str.contains(str(missing), regex=False)]
    assert lost[["subject", "clip", "sheet_row"]].values.tolist() == [["casme3/spNO.1", "b", 3]]


def _casme3_sheet(path, rows, sheet_name="label", columns=None):
    columns = columns or ["Subject", "Filename", "Onset", "Apex", "Offset", "AU", "Objective class", "emotion"]
    pd.DataFrame(rows, columns=columns).astype(str).to_excel(path, sheet_name=sheet_name, index=False)


GOOD = ("spNO.1", "b", "166", "175", "179", "4", "III", "disgust")


def test_casme3_missing_sheet_worksheet_and_columns(tmp_path):
    with pytest.raises(AnnotationError, match=re.escape(f"{CASME3_SHEET}: annotation file not found")):
        load_dataset(_params(tmp_path))
    _casme3_sheet(tmp_path / "other.xlsx", [GOOD], sheet_name="Sheet1")
    with pytest.raises(AnnotationError, match="Worksheet named 'label' not found"):
        load_dataset(_params(tmp_path, annotation=tmp_path / "other.xlsx"))
    _casme3_sheet(tmp_path / "cols.xlsx", [GOOD[:2]], columns=["Subject", "Filename"])
    with pytest.raises(AnnotationError, match=re.escape("missing columns ['Onset', 'Apex', 'Offset', 'AU', "
                                                        "'emotion']; found ['Subject', 'Filename']")):
        load_dataset(_params(tmp_path, annotation=tmp_path / "cols.xlsx"))


def test_casme3_bad_cells_name_row_and_column(tmp_path):
    rows = [GOOD, ("spNO.1", "b", "abc", "175", "179", "4", "III", "disgust"),
            ("", "c", "1", "2", "3", "4", "III", "disgust"), ("NO.3", "c", "1", "2", "3", "4", "III", "disgust"),
            ("spNO.2", "", "1", "2", "3", "4", "III", "disgust"), ("spNO.2", "a", "1", "/", "3", "4", "III", "Others")]
    _casme3_sheet(tmp_path / CASME3_SHEET, rows)
    samples, dropped, classes, fixes, _ = load_dataset(_params(tmp_path))
    assert dropped["reason"].tolist() == [
        f"{CASME3_SHEET} row 3 column Onset: 'abc' is not a frame number",
        f"{CASME3_SHEET} row 4: empty Subject",
        f"{CASME3_SHEET} row 5 column Subject: 'NO.3' is not a subject id like 'spNO.1'",
        f"{CASME3_SHEET} row 6: empty Filename",
    ]
    assert samples["sample_id"].tolist() == ["casme3/spNO.1/b/166", "casme3/spNO.2/a/1"]
    assert classes == ["disgust", "others"] and samples["apex_frame"].tolist() == [175, 2]
    notes = fixes["reason"].tolist()  # the apex fixes that kept a row
    assert notes == [f"{CASME3_SHEET} row 7: column Apex is not a frame number: apex set to the middle frame 2"]


# --- MMEW ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mmew_sheet(shared_annotations):
    return shared_annotations / "mmew" / MMEW_SHEET


def test_mmew_real_sheet(mmew_sheet, tmp_path):
    samples, dropped, classes, fixes, _ = load_dataset(_params(tmp_path, dataset="mmew", annotation=mmew_sheet))
    assert len(samples) == 234 and dropped.empty and fixes.empty
    _every_row_once(samples, dropped, 234)
    assert samples["subject"].nunique() == 30 and samples["subject"].str.fullmatch(r"mmew/S\d\d").all()
    assert samples["sample_id"].iloc[0] == "mmew/S01/S01-01-001/1"
    assert classes == ["anger", "disgust", "fear", "happiness", "sadness", "surprise"]
    assert samples["label_name"].value_counts().to_dict() == {"surprise": 89, "disgust": 72, "happiness": 36,
                                                              "fear": 16, "sadness": 13, "anger": 8}
    assert samples["apex_path"].iloc[0] == str(tmp_path / "Micro_Expression" / "happiness" / "S01-01-001" / "15.jpg")


def test_mmew_ingest_reads_the_right_frames(mmew_sheet, tmp_path):
    shutil.copy(mmew_sheet, tmp_path / MMEW_SHEET)
    sheet = pd.read_csv(mmew_sheet, dtype=str)
    _write_frames({tmp_path / "Micro_Expression" / r.emotion / r.Filename / f"{n}.jpg": int(n)
                   for r in sheet.rename(columns={"Estimated Emotion": "emotion"}).itertuples()
                   for n in (r.OnsetFrame, r.ApexFrame)})
    missing = tmp_path / "Micro_Expression" / "fear" / "S30-05-001" / "10.jpg"  # the apex of the last fear row
    missing.unlink()
    samples, dropped, classes, _ = ingest_micro(_params(tmp_path, dataset="mmew"), progress=False)
    assert len(samples) == 233 and len(dropped) == 1 and len(classes) == 6
    _assert_right_frames(samples, 16)
    assert str(missing) in dropped["reason"].iloc[0] and dropped["subject"].iloc[0] == "mmew/S30"


MMEW_COLUMNS = ["Subject", "Filename", "OnsetFrame", "ApexFrame", "OffsetFrame", "Action Units", "Estimated Emotion",
                "remarks"]


def test_mmew_bad_input(tmp_path):
    with pytest.raises(AnnotationError, match=f"{MMEW_SHEET}: annotation file not found"):
        load_dataset(_params(tmp_path, dataset="mmew"))
    pd.DataFrame({"Subject": ["1"], "Filename": ["S01-01-001"]}).to_csv(tmp_path / "cols.csv", index=False)
    with pytest.raises(AnnotationError, match=re.escape("missing columns ['OnsetFrame', 'ApexFrame', 'OffsetFrame', "
                                                        "'Action Units', 'Estimated Emotion']; found ['Subject', "
                                                        "'Filename']")):
        load_dataset(_params(tmp_path, dataset="mmew", annotation=tmp_path / "cols.csv"))
    rows = [("1", "S01-01-001", "1", "15", "31", "6+12", "happiness", ""),
            ("1", "S01-01-002", "x1", "15", "45", "12", "happiness", ""),
            ("", "S01-01-003", "1", "7", "23", "12", "happiness", ""),
            ("2", "S01-02-001", "1", "17", "39", "5", "surprise", ""),
            ("2", "S02-02-001", "1", "17", "39", "5", "", ""),
            ("2", "S02-02-002", "30", "17", "9", "5", "surprise", ""),
            ("2", "S02-02-003", "1", "17", "39", "5", "surprise", ""),
            ("2", "S02-02-003", "2", "17", "39", "5", "fear", "")]  # another onset: not a repeated row
    pd.DataFrame(rows, columns=MMEW_COLUMNS).to_csv(tmp_path / MMEW_SHEET, index=False)
    samples, dropped, _, _, _ = load_dataset(_params(tmp_path, dataset="mmew"))
    assert dropped["reason"].tolist() == [
        f"{MMEW_SHEET} row 3 column OnsetFrame: 'x1' is not a frame number",
        f"{MMEW_SHEET} row 4: empty Subject",
        f"{MMEW_SHEET} row 5 column Filename: 'S01-02-001' is not a clip of subject 2",
        f"{MMEW_SHEET} row 6: empty Estimated Emotion (it names the frame folder)",
        f"{MMEW_SHEET} row 7: OffsetFrame 9 is before OnsetFrame 30 (not an interval)",
        f"{MMEW_SHEET} row 9: Filename 'S02-02-003' also annotated 'surprise' in another row",
    ]
    assert samples["sample_id"].tolist() == ["mmew/S01/S01-01-001/1", "mmew/S02/S02-02-003/1"]
