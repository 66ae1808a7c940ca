"""Audit findings on micro-expression ingestion, each pinned by a test that failed before its fix.

1. A tree in an unexpected layout: both SAMM layouts are read; a source mostly without frame files fails, naming
   the layout expected and a path tried (CASME II: naming ``micro.casme2_frames`` when the other folder exists).
2. A truncated or corrupt frame file drops its row, naming the file (OpenCV only warned on stderr).
3. Apex fixes are structured rows, listed in summary.json and summary.md.
4. A repeated (subject, clip, onset) fails in every adapter, naming the file and both rows.
5. Subject ids are ``<source>/<subject>`` in samples, dropped rows and fixes.

Results are indexed (``result[0]``) rather than unpacked where the test is about behaviour, so that it ran (and
failed for the right reason) against the code before the fixes.
"""

from __future__ import annotations

import json
import re
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline.config import MicroParams
from pipeline.datasets import AnnotationError, load_dataset
from pipeline.face.video import read_image
from pipeline.ingest.micro import ingest_micro
from tests.test_datasets_samm_smic_megc import MEGC_CSV, SAMM_SHEET, _megc_tree, _samm_tree

CASME2_SHEET = "CASME2-coding-20140508.xlsx"
CASME2_COLUMNS = ["Subject", "Filename", "OnsetFrame", "ApexFrame", "OffsetFrame", "Action Units",
                  "Estimated Emotion"]
ROWS = [  # four samples under megc2019-3class
    ("01", "EP01_01", 10, 12, 15, "12", "happiness"),
    ("01", "EP02_01", 20, 22, 24, "4", "disgust"),
    ("02", "EP01_02", 5, 7, 9, "1+2", "surprise"),
    ("02", "EP03_01", 5, 7, 9, "14", "repression"),
]
LAYOUTS = {"cropped": ("Cropped", "reg_img{}.jpg"), "raw": ("CASME2_RAW_selected", "img{}.jpg")}


def _params(root, **kw):
    base = {"dataset": "casme2", "root": root, "annotation": None, "protocol": "megc2019-3class",
            "apex_outside": "middle", "casme2_frames": "cropped", "smic_labels": "folders", "smic_apex": None,
            "detector": "none", "box_scale": 1.3, "align_margin": 0.25, "image_size_px": 16, "optical_flow": "none"}
    return MicroParams(**{**base, **kw})


def _textured(height: int = 96, width: int = 96) -> np.ndarray:
    """A smooth random image (JPEG keeps detail all over it), ``(height, width, 3) uint8``."""
    noise = np.random.default_rng(0).random((height, width, 3)) * 255
    return cv2.GaussianBlur(noise.astype(np.uint8), (7, 7), 0)


def _casme2_tree(root, rows=ROWS, frames="cropped", sheet_rows=None):
    """CASME II frames of ``rows`` (onset to offset) in the ``frames`` layout, and the standard sheet."""
    folder, pattern = LAYOUTS[frames]
    for subject, clip, onset, _apex, offset, _, _ in rows:
        clip_dir = root / folder / f"sub{subject}" / clip
        clip_dir.mkdir(parents=True, exist_ok=True)
        for n in range(onset, offset + 1):
            cv2.imwrite(str(clip_dir / pattern.format(n)), np.full((24, 24, 3), 40 + n, np.uint8))
    pd.DataFrame(rows if sheet_rows is None else sheet_rows, columns=CASME2_COLUMNS).to_excel(
        root / CASME2_SHEET, index=False)


# --- 1. layouts and missing frames ------------------------------------------------------------------------------

def test_samm_root_may_hold_samm_or_be_the_samm_folder(shared_annotations, tmp_path, caplog):
    caplog.set_level("INFO", logger="pipeline")
    _samm_tree(tmp_path / "holds", shared_annotations)
    itself = tmp_path / "itself"  # the same tree, micro.root = the SAMM folder (public loaders do both)
    shutil.copytree(tmp_path / "holds" / "SAMM", itself)
    shutil.copy(tmp_path / "holds" / SAMM_SHEET, itself / SAMM_SHEET)
    for root in (tmp_path / "holds", itself):
        result = ingest_micro(_params(root, dataset="samm", protocol="native"), progress=False)
        assert len(result[0]) == 159 and result[1].empty
    assert result[0]["onset_path"].iloc[0] == str(itself / "006" / "006_1_2" / "006_05562.jpg")
    assert f"found {tmp_path / 'holds' / 'SAMM'}, so the first" in caplog.text
    assert f"found the subject folder {itself / '006'} and no {itself / 'SAMM'}, so the second" in caplog.text


def test_megc2019_samm_folder_itself_then_samm_frames_missing(shared_annotations, tmp_path):
    _megc_tree(tmp_path, shared_annotations)
    samm = tmp_path / "samm"
    for subject in (samm / "SAMM").iterdir():
        subject.rename(samm / subject.name)
    (samm / "SAMM").rmdir()
    params = _params(tmp_path, dataset="megc2019")
    assert len(ingest_micro(params, progress=False)[0]) == 442  # was 309: SAMM's 133 dropped at INFO level

    for subject in [p for p in samm.iterdir() if p.is_dir()]:
        shutil.rmtree(subject)
    tried = samm / "SAMM" / "006" / "006_1_2" / "006_05562.jpg"
    with pytest.raises(ValueError, match=re.escape(
            "samm: 133 of 133 samples have no frame file") + r".*" + re.escape(
            f"expected {samm}/SAMM/<subject>/<clip>/<subject>_<frame:05d>.jpg or "
            f"{samm}/<subject>/<clip>/<subject>_<frame:05d>.jpg") + r".*" + re.escape(f"tried {tried}")):
        ingest_micro(params, progress=False)


@pytest.mark.parametrize(("present", "configured"), [("raw", "cropped"), ("cropped", "raw")])
def test_casme2_frames_setting_that_does_not_match_the_tree(tmp_path, present, configured):
    _casme2_tree(tmp_path, frames=present)
    folder, pattern = LAYOUTS[configured]
    tried = tmp_path / folder / "sub01" / "EP01_01" / pattern.format(10)
    with pytest.raises(ValueError, match=re.escape(
            f"{tmp_path / folder} does not exist but {tmp_path / LAYOUTS[present][0]} does: set "
            f"micro.casme2_frames to {present}") + ".*" + re.escape(f"tried {tried}")):
        ingest_micro(_params(tmp_path, casme2_frames=configured), progress=False)
    assert len(ingest_micro(_params(tmp_path, casme2_frames=present), progress=False)[0]) == 4


def test_more_than_half_of_a_source_missing_fails_half_is_dropped(tmp_path):
    _casme2_tree(tmp_path)
    onsets = [tmp_path / "Cropped" / f"sub{s}" / c / f"reg_img{on}.jpg" for s, c, on, *_ in ROWS]
    for path in onsets[:2]:
        path.unlink()
    result = ingest_micro(_params(tmp_path), progress=False)
    assert len(result[0]) == 2
    assert [str(p) in r for p, r in zip(onsets[:2], result[1]["reason"], strict=True)] == [True, True]
    onsets[2].unlink()
    with pytest.raises(ValueError, match=re.escape("casme2: 3 of 4 samples have no frame file (more than 50%")):
        ingest_micro(_params(tmp_path), progress=False)
    from pipeline.datasets import MAX_MISSING_SHARE

    assert MAX_MISSING_SHARE == 0.5  # the documented threshold


# --- 2. truncated or corrupt frames -----------------------------------------------------------------------------

def _video_frame(shared_videos) -> np.ndarray:
    capture = cv2.VideoCapture(str(shared_videos / "single_face.mp4"))
    capture.set(cv2.CAP_PROP_POS_FRAMES, 30)
    ok, frame = capture.read()
    capture.release()
    assert ok
    return frame  # (360, 640, 3) BGR: a man's face


def test_a_real_jpeg_cut_in_half_is_dropped_naming_the_file(shared_videos, tmp_path):
    _casme2_tree(tmp_path)
    clip = tmp_path / "Cropped" / "sub01" / "EP02_01"
    data = cv2.imencode(".jpg", _video_frame(shared_videos), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    for frame in clip.iterdir():  # the whole clip is real video frames: only the truncation is wrong
        frame.write_bytes(data)
    onset = clip / "reg_img20.jpg"
    onset.write_bytes(data[: len(data) // 2])
    result = ingest_micro(_params(tmp_path, image_size_px=112), progress=False)
    assert result[0]["clip"].tolist() == ["EP01_01", "EP01_02", "EP03_01"]
    (reason,) = result[1]["reason"]
    assert reason.startswith(f"casme2/sub01/EP02_01/20: {onset}: truncated or corrupt image file")
    assert "image file is truncated" in reason


@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp"])
def test_read_image_rejects_a_truncated_frame(tmp_path, ext):
    path = tmp_path / f"frame{ext}"
    data = cv2.imencode(ext, _textured())[1].tobytes()
    path.write_bytes(data)
    assert read_image(path).shape == (96, 96, 3)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=re.escape(f"{path}: truncated or corrupt image file")):
        read_image(path)
    path.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=re.escape(f"{path}: truncated or corrupt image file")):
        read_image(path)
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path / 'gone.jpg'}: frame file missing")):
        read_image(tmp_path / "gone.jpg")


# --- 3. apex fixes --------------------------------------------------------------------------------------------

def test_apex_fixes_are_rows_in_summary_json_and_md(tmp_path):
    from pipeline.ingest.micro import samples_summary_markdown, summarise

    bad = [*ROWS, ("03", "EP09_02", 9, 20, 12, "12", "happiness"), ("03", "EP09_03", 9, "/", 13, "12", "surprise")]
    _casme2_tree(tmp_path, rows=[*ROWS, ("03", "EP09_02", 9, 0, 12, "", ""), ("03", "EP09_03", 9, 0, 13, "", "")],
                 sheet_rows=bad)
    samples, dropped, classes, fixes = ingest_micro(_params(tmp_path), progress=False)
    assert len(samples) == 6 and dropped.empty
    assert fixes.columns.tolist() == ["source_dataset", "sheet_row", "subject", "clip", "apex_before", "apex_after",
                                      "reason"]
    assert fixes.drop(columns="reason").values.tolist() == [["casme2", 6, "casme2/sub03", "EP09_02", 20, 10],
                                                            ["casme2", 7, "casme2/sub03", "EP09_03", None, 11]]
    assert fixes["reason"].tolist() == [
        f"{CASME2_SHEET} row 6: apex 20 outside [onset 9, offset 12]: apex set to the middle frame 10",
        f"{CASME2_SHEET} row 7: column ApexFrame is not a frame number: apex set to the middle frame 11"]
    summary = json.loads(json.dumps(summarise(samples, dropped, classes, "megc2019-3class", fixes)))
    assert summary["apex_fixes"] == 2
    assert summary["apex_fix_rows"][1] == {"source_dataset": "casme2", "sheet_row": 7, "subject": "casme2/sub03",
                                           "clip": "EP09_03", "apex_before": None, "apex_after": 11,
                                           "reason": fixes["reason"].iloc[1]}
    markdown = samples_summary_markdown(samples, dropped, summary, fixes)
    table = markdown.split("## Apex fixes")[1]
    cells = [[cell.strip() for cell in line.split("|")[1:-1]] for line in table.splitlines() if line.startswith("|")]
    assert cells[0] == fixes.columns.tolist()
    assert [row[:6] for row in cells[2:]] == [["casme2", "6", "casme2/sub03", "EP09_02", "20", "10"],
                                              ["casme2", "7", "casme2/sub03", "EP09_03", "not a number", "11"]]
    assert "2 apexes moved to the middle frame" in markdown

    loaded = load_dataset(_params(tmp_path, apex_outside="drop"))
    assert loaded.fixes.empty and loaded.dropped["sheet_row"].tolist() == [6, 7]


# --- 4. repeated rows -----------------------------------------------------------------------------------------

def test_a_repeated_row_of_the_real_casme2_sheet_names_file_and_rows(shared_annotations, tmp_path):
    sheet = pd.read_excel(shared_annotations / "casme2" / CASME2_SHEET, dtype=str)
    pd.concat([sheet, sheet.iloc[[10]]]).to_excel(tmp_path / CASME2_SHEET, index=False)  # row 12 again, as 257
    key = "sub{}/{}/{}".format(*sheet.iloc[10][["Subject", "Filename", "OnsetFrame"]])
    with pytest.raises(AnnotationError, match=re.escape(
            f"{CASME2_SHEET} rows 12 and 257: the same (subject, clip, onset) {key}")):
        load_dataset(_params(tmp_path))


def _xlsx(path, rows, sheet_name="Sheet1", startrow=0):
    with pd.ExcelWriter(path) as writer:
        pd.DataFrame(rows).to_excel(writer, sheet_name=sheet_name, startrow=startrow, index=False)


def _repeat(row: dict, other: dict) -> list[dict]:
    """``row``, ``other``, ``row`` again: the repeat is 2 rows below the first."""
    return [row, other, dict(row)]


DUPLICATES = {  # dataset -> (params, write the sheet under root, expected message)
    "casme2": ({}, lambda root: _xlsx(root / CASME2_SHEET, _repeat(
        dict(zip(CASME2_COLUMNS, ROWS[0], strict=True)), dict(zip(CASME2_COLUMNS, ROWS[1], strict=True))),
    ), f"{CASME2_SHEET} rows 2 and 4: the same (subject, clip, onset) sub01/EP01_01/10"),
    "samm": ({"protocol": "native"}, lambda root: _xlsx(root / SAMM_SHEET, _repeat(
        {"Subject": "006", "Filename": "006_1_2", "Onset Frame": 10, "Apex Frame": 12, "Offset Frame": 14,
         "Action Units": "4", "Estimated Emotion": "Anger"},
        {"Subject": "6", "Filename": "006_1_3", "Onset Frame": 10, "Apex Frame": 12, "Offset Frame": 14,
         "Action Units": "4", "Estimated Emotion": "Anger"}), sheet_name="MICRO_ONLY", startrow=13),
     f"{SAMM_SHEET} rows 15 and 17: the same (subject, clip, onset) 006/006_1_2/10"),
    "smic": ({"smic_labels": "sheet"}, lambda root: _xlsx(root / "SMIC-HS-E_annotation.xlsx", _repeat(
        {"Subject": 1, "Filename": "s1_ne_01", "OnsetF": 10, "OffsetF": 20, "Emotion": "negative"},
        {"Subject": 1, "Filename": "s1_ne_02", "OnsetF": 10, "OffsetF": 20, "Emotion": "negative"}),
        sheet_name="HS"), "SMIC-HS-E_annotation.xlsx rows 2 and 4: the same (subject, clip, onset) s1/s1_ne_01/10"),
    "casme3": ({"protocol": "native"}, lambda root: _xlsx(root / "cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx", _repeat(
        {"Subject": "spNO.1", "Filename": "b", "Onset": "166", "Apex": "175", "Offset": "179", "AU": "4",
         "emotion": "disgust"},
        {"Subject": "spNO.1", "Filename": "b", "Onset": "200", "Apex": "210", "Offset": "220", "AU": "4",
         "emotion": "disgust"}), sheet_name="label"),
     "cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx rows 2 and 4: the same (subject, clip, onset) spNO.1/b/166"),
    "mmew": ({"protocol": "native"}, lambda root: pd.DataFrame(_repeat(
        {"Subject": "1", "Filename": "S01-01-001", "OnsetFrame": "1", "ApexFrame": "15", "OffsetFrame": "31",
         "Action Units": "12", "Estimated Emotion": "happiness"},
        {"Subject": "1", "Filename": "S01-01-002", "OnsetFrame": "1", "ApexFrame": "15", "OffsetFrame": "31",
         "Action Units": "12", "Estimated Emotion": "happiness"})).to_csv(
        root / "MMEW_Micro_Exp_delete_others.csv", index=False),
     "MMEW_Micro_Exp_delete_others.csv rows 2 and 4: the same (subject, clip, onset) S01/S01-01-001/1"),
    "megc2019": ({}, lambda root: (root / MEGC_CSV).write_bytes(
        b"samm,6,006_1_2,0\r\ncasme2,sub01,EP01_01,1\r\nsamm,006,006_1_2,0\r\n"),
     f"{MEGC_CSV} rows 1 and 3: the same (dataset, subject, clip) samm/006/006_1_2"),
}


@pytest.mark.parametrize("dataset", sorted(DUPLICATES))
def test_a_repeated_row_fails_in_every_adapter_naming_file_and_rows(tmp_path, dataset):
    params, write, message = DUPLICATES[dataset]
    write(tmp_path)
    with pytest.raises(AnnotationError, match=re.escape(message)):
        load_dataset(_params(tmp_path, dataset=dataset, **params))


def test_mmew_same_key_other_emotion_is_a_repeat_too(tmp_path):
    rows = [("1", "S01-01-001", "1", "15", "31", "12", "happiness"), ("1", "S01-01-001", "1", "15", "31", "12", "fear")]
    pd.DataFrame(rows, columns=CASME2_COLUMNS).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(AnnotationError, match=re.escape("m.csv rows 2 and 3: the same (subject, clip, onset)")):
        load_dataset(_params(tmp_path, dataset="mmew", protocol="native", annotation=tmp_path / "m.csv"))


def test_smic_clip_under_two_class_folders_names_both(tmp_path):
    folders = [tmp_path / "HS" / "s1" / "micro" / label / "s1_ne_01" for label in ("negative", "positive")]
    for folder in folders:
        folder.mkdir(parents=True)
        cv2.imwrite(str(folder / "image7.bmp"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(AnnotationError, match=re.escape(f"{folders[0]} and {folders[1]}: the same clip s1_ne_01")):
        load_dataset(_params(tmp_path, dataset="smic", protocol="native"))


# --- 5. namespaced subjects -----------------------------------------------------------------------------------

def test_subjects_are_namespaced_in_samples_drops_and_fixes(shared_annotations, tmp_path):
    loaded = load_dataset(_params(tmp_path, annotation=shared_annotations / "casme2" / CASME2_SHEET,
                                  protocol="casme2-5class"))
    samples, dropped, fixes = loaded[0], loaded[1], loaded[3]
    assert len(dropped) == 9 and dropped["subject"].str.fullmatch(r"casme2/sub\d\d").all()  # sadness, fear
    assert samples["subject"].str.fullmatch(r"casme2/sub\d\d").all()
    assert fixes["subject"].tolist() == ["casme2/sub04"]

    sheet = [*ROWS, ("", "EP09_01", 1, 2, 3, "12", "happiness")]
    _casme2_tree(tmp_path, sheet_rows=sheet)
    (tmp_path / "Cropped" / "sub02" / "EP01_02" / "reg_img7.jpg").unlink()
    dropped = ingest_micro(_params(tmp_path), progress=False)[1]
    assert dropped[["subject", "clip"]].values.tolist() == [["", "EP09_01"], ["casme2/sub02", "EP01_02"]]
