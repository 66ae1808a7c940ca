"""The CASME II adapter on the real coding sheets and on small trees in the real on-disk layout."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline.config import MicroParams
from pipeline.datasets import AnnotationError, load_dataset
from pipeline.ingest.micro import ingest_micro
from pipeline.sheets import read_table


def _params(root, **kw):
    base = {"dataset": "demo", "root": root, "annotation": None, "protocol": "megc2019-3class",
            "apex_outside": "middle", "casme2_frames": "cropped", "smic_labels": "folders", "smic_apex": None,
            "detector": "none", "box_scale": 1.3, "align_margin": 0.25, "image_size_px": 32, "optical_flow": "none"}
    return MicroParams(**{**base, **kw})


@pytest.mark.parametrize("sheet", ["CASME2-coding-20140508.xlsx", "CASME2-coding-20190701.xlsx"])
def test_real_sheets_every_row_ends_somewhere(shared_annotations, tmp_path, sheet):
    path = shared_annotations / "casme2" / sheet
    samples, dropped, classes, _, _ = load_dataset(_params(tmp_path, dataset="casme2", annotation=path,
                                                        casme2_frames="raw"))
    assert len(samples) + len(dropped) == 255
    assert classes == ["negative", "positive", "surprise"]
    assert samples["subject"].str.match(r"^casme2/sub\d\d$").all()
    assert (samples["source_dataset"] == "casme2").all()
    assert set(samples["label_name"]) == set(classes)
    assert (samples["label"] == samples["label_name"].map(classes.index)).all()
    assert dropped["reason"].str.contains("outside protocol megc2019-3class").all()  # others, sadness, fear
    assert samples["onset_path"].iloc[0].endswith("CASME2_RAW_selected/sub01/EP02_01f/img46.jpg")


@pytest.mark.parametrize(("sheet", "expected"), [("CASME2-coding-20140508.xlsx", 246),
                                                 ("CASME2-coding-20190701.xlsx", 249)])
def test_real_sheets_casme2_5class_counts(shared_annotations, tmp_path, sheet, expected):
    path = shared_annotations / "casme2" / sheet
    samples, dropped, classes, fixes, _ = load_dataset(_params(tmp_path, dataset="casme2", annotation=path,
                                                            protocol="casme2-5class"))
    assert len(samples) == expected and len(samples) + len(dropped) == 255
    assert classes == ["happiness", "disgust", "repression", "surprise", "others"]
    assert set(dropped["reason"].str.extract(r"emotion '(\w+)'")[0]) == {"sadness", "fear"}
    # the '/' apex of 04/EP12_01f: kept, with the middle frame, and logged with file, row and column
    notes = fixes["reason"].tolist()  # the apex fixes that kept a row
    assert notes == [f"{sheet} row 31: column ApexFrame is not a frame number: apex set to the middle frame 291"]
    assert samples.loc[samples["clip"] == "EP12_01f", "apex_frame"].tolist() == [291]


def _write_tree(root, rows, sheet_rows=None):
    """Frames of ``rows`` in the Cropped layout, and a sheet of ``sheet_rows`` (default: ``rows``)."""
    for subject, clip, onset, _apex, offset, _, _ in rows:
        clip_dir = root / "Cropped" / f"sub{subject}" / clip
        clip_dir.mkdir(parents=True, exist_ok=True)
        for n in range(onset, offset + 1):
            cv2.imwrite(str(clip_dir / f"reg_img{n}.jpg"), np.full((40, 40, 3), n % 255, np.uint8))
    sheet = pd.DataFrame(rows if sheet_rows is None else sheet_rows,
                         columns=["Subject", "Filename", "OnsetFrame", "ApexFrame", "OffsetFrame", "Action Units",
                                  "Estimated Emotion"])
    sheet.insert(2, "Unnamed: 2", None)
    sheet.insert(6, "Unnamed: 6", None)
    sheet.columns = [c if not c.startswith("Unnamed") else "" for c in sheet.columns]
    sheet.to_excel(root / "CASME2-coding-20140508.xlsx", index=False)


ROWS = [
    ("01", "EP01_01", 10, 12, 15, "12", "happiness"),
    ("01", "EP02_01", 20, 22, 24, "4", "disgust"),
    ("02", "EP01_02", 5, 7, 9, "1+2", "surprise"),
    ("02", "EP03_01", 5, 7, 9, "14", "others"),
]


def test_adapter_on_a_tree_in_the_casme2_layout(tmp_path):
    _write_tree(tmp_path, ROWS)
    samples, dropped, classes, _ = ingest_micro(_params(tmp_path), progress=False)
    assert classes == ["negative", "positive", "surprise"]
    assert samples["subject"].tolist() == ["demo/sub01", "demo/sub01", "demo/sub02"]
    assert samples["label_name"].tolist() == ["positive", "negative", "surprise"]
    assert samples[["onset_frame", "apex_frame", "offset_frame"]].iloc[0].tolist() == [10, 12, 15]
    assert len(samples["onset_image"].iloc[0]) > 0 and (samples["image_size_px"] == 32).all()
    assert dropped["reason"].str.contains("'others' is outside protocol").tolist() == [True]


def test_missing_frame_file_is_dropped_with_its_name(tmp_path):
    _write_tree(tmp_path, ROWS)
    missing = tmp_path / "Cropped" / "sub01" / "EP02_01" / "reg_img22.jpg"
    missing.unlink()
    samples, dropped, _, _ = ingest_micro(_params(tmp_path), progress=False)
    assert len(samples) == 2
    assert dropped["reason"].str.contains(str(missing), regex=False).any()


def test_missing_sheet_and_columns_are_named(tmp_path):
    with pytest.raises(AnnotationError, match=r"CASME2-coding-20140508.xlsx: annotation file not found"):
        load_dataset(_params(tmp_path))
    pd.DataFrame({"Subject": ["01"], "Filename": ["EP01"]}).to_excel(tmp_path / "bad.xlsx", index=False)
    with pytest.raises(AnnotationError, match=r"missing columns \['OnsetFrame'.*found \['Subject', 'Filename'\]"):
        load_dataset(_params(tmp_path, annotation=tmp_path / "bad.xlsx"))
    with pytest.raises(AnnotationError, match=r"missing columns \['Apex'\]"):
        read_table(tmp_path / "bad.xlsx", ["Subject", "Apex"])


BAD_ROWS = [*ROWS, ("", "EP09_01", 1, 2, 3, "12", "happiness"), ("03", "EP09_02", 9, 20, 12, "12", "happiness")]


def test_bad_cells_name_row_and_column(tmp_path):
    _write_tree(tmp_path, ROWS, sheet_rows=BAD_ROWS)
    samples, dropped, _, fixes, _ = load_dataset(_params(tmp_path))
    reasons = " | ".join(dropped["reason"])
    assert "row 6: empty Subject" in reasons
    assert len(samples) + len(dropped) == len(BAD_ROWS)
    fixed = samples[samples["clip"] == "EP09_02"]
    assert fixed["apex_frame"].tolist() == [10]  # the middle of [9, 12]
    notes = fixes["reason"].tolist()  # the apex fixes that kept a row
    assert notes == ["CASME2-coding-20140508.xlsx row 7: apex 20 outside [onset 9, offset 12]: "
                     "apex set to the middle frame 10"]


def test_apex_outside_can_drop_instead(tmp_path):
    _write_tree(tmp_path, ROWS, sheet_rows=BAD_ROWS)
    samples, dropped, _, fixes, _ = load_dataset(_params(tmp_path, apex_outside="drop"))
    assert "EP09_02" not in set(samples["clip"]) and fixes.empty
    assert dropped["reason"].str.contains(r"row 7: apex 20 outside \[onset 9, offset 12\]: dropped").any()
    assert len(samples) + len(dropped) == len(BAD_ROWS)


def test_adapter_reads_the_synthesized_demo_exactly(tmp_path, raw_params):
    from pipeline.config import SynthesizeParams
    from pipeline.synth import render_demo
    from tests.conftest import shrink

    synth = SynthesizeParams(**shrink(raw_params)["synthesize"])
    truth = render_demo(synth, tmp_path / "micro", tmp_path / "macro", progress=False)
    samples, dropped, _, _ = ingest_micro(_params(tmp_path / "micro", image_size_px=48), progress=False)
    assert dropped.empty
    assert len(samples) == synth.n_subjects * synth.clips_per_class * 3 == len(truth)
    merged = samples.assign(subject=samples["subject"].str.removeprefix("demo/")).merge(
        truth, on=["subject", "clip"], suffixes=("", "_truth"))
    assert len(merged) == len(samples)
    assert (merged["label_name"] == merged["class"]).all()
    assert (merged[["onset_frame", "apex_frame", "offset_frame"]].to_numpy()
            == merged[["onset_frame_truth", "apex_frame_truth", "offset_frame_truth"]].to_numpy()).all()
    assert samples["onset_image"].ne(samples["apex_image"]).all()  # the apex moved


@pytest.mark.parametrize("detector", ["haar", "mtcnn"])
def test_detectors_align_the_demo_onset_and_the_flow_is_stored(tmp_path, raw_params, detector):
    """micro.detector haar | mtcnn: one transform per clip from the onset (stored as crop_matrix), a face found on
    every synthetic onset; micro.optical_flow tvl1: (3, S, S) flow beside the crops, the motion where the AUs are."""
    from pipeline.config import SynthesizeParams
    from pipeline.io import decode_array
    from pipeline.synth import render_demo
    from tests.conftest import shrink

    raw = shrink(raw_params)
    raw["synthesize"].update(n_subjects=2, face_size_px=128)
    truth = render_demo(SynthesizeParams(**raw["synthesize"]), tmp_path / "micro", tmp_path / "macro", progress=False)
    samples, dropped, _, _ = ingest_micro(_params(tmp_path / "micro", image_size_px=64, detector=detector,
                                                  optical_flow="tvl1"), progress=False)
    assert dropped.empty and len(samples) == len(truth)
    matrices = np.array(samples["crop_matrix"].tolist())  # (N, 6)
    assert matrices.shape == (len(samples), 6) and np.isfinite(matrices).all()
    flow = np.stack([decode_array(cell) for cell in samples["flow"]])
    assert flow.shape == (len(samples), 3, 64, 64) and flow.dtype == np.float16
    assert np.abs(flow[:, :2]).max() > 0.1  # sub-pixel to pixel motion was found
