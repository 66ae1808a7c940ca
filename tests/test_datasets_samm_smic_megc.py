"""The SAMM, SMIC-HS and MEGC2019 adapters on the real sheets, with fake frame trees in the real layouts.

Frames are 8x8 images written only where a sample needs one (onset, apex, offset, and the middle frame where the
apex policy moves the apex), at the paths of each dataset's documented layout, computed here independently of
the adapters.
"""

from __future__ import annotations

import re
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline.config import MicroParams
from pipeline.data.loso import loso_folds
from pipeline.datasets import AnnotationError, load_dataset
from pipeline.ingest.micro import ingest_micro

SAMM_SHEET = "SAMM_Micro_FACS_Codes_v2.xlsx"
SMIC_SHEET = "SMIC-HS-E_annotation.xlsx"
CASME2_SHEET = "CASME2-coding-20140508.xlsx"
MEGC_CSV = "combined_3class_gt.csv"
CLASSES = {"0": "negative", "1": "positive", "2": "surprise"}
JPG = cv2.imencode(".jpg", np.full((8, 8, 3), 128, np.uint8))[1].tobytes()
BMP = cv2.imencode(".bmp", np.full((8, 8, 3), 128, np.uint8))[1].tobytes()


def _params(root, **kw):
    base = {"dataset": "samm", "root": root, "annotation": None, "protocol": "native", "apex_outside": "middle",
            "casme2_frames": "cropped", "smic_labels": "folders", "smic_apex": None, "detector": "none",
            "box_scale": 1.3, "align_margin": 0.25, "image_size_px": 16, "optical_flow": "none"}
    return MicroParams(**{**base, **kw})


def _touch(paths, data=JPG):
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _frames(table, onset="onset", apex="apex", offset="offset"):
    """Onset, apex, offset and middle frame numbers of each row of ``table`` (int columns)."""
    middle = (table[onset] + table[offset]) // 2
    return [sorted({a, b, c, d}) for a, b, c, d in zip(table[onset], table[apex], table[offset], middle, strict=True)]


def _samm_sheet(annotations):
    sheet = pd.read_excel(annotations / "samm" / SAMM_SHEET, sheet_name="MICRO_ONLY", skiprows=13, dtype=str)
    frames = sheet[["Onset Frame", "Apex Frame", "Offset Frame"]].astype(int)
    return sheet.assign(onset=frames["Onset Frame"], apex=frames["Apex Frame"], offset=frames["Offset Frame"])


def _samm_tree(root, annotations, clips=None):
    """The real SAMM sheet at ``root`` and frames at SAMM/<subj>/<clip>/<subj>_<frame:05d>.jpg."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(annotations / "samm" / SAMM_SHEET, root / SAMM_SHEET)
    sheet = _samm_sheet(annotations)
    if clips is not None:
        sheet = sheet[sheet["Filename"].isin(clips)]
    for (subject, clip), frames in zip(zip(sheet["Subject"], sheet["Filename"], strict=True), _frames(sheet),
                                       strict=True):
        _touch(root / "SAMM" / subject / clip / f"{subject}_{n:05d}.jpg" for n in frames)


def _megc_csv(annotations):
    return pd.read_csv(annotations / "megc2019" / MEGC_CSV, header=None, dtype=str,
                       names=["dataset", "subject", "filename", "label"])


def _smic_sheet(annotations, name=SMIC_SHEET):
    sheet = pd.read_excel(annotations / "smic" / name, sheet_name="HS", dtype=str)
    return sheet.assign(onset=sheet["OnsetF"].astype(int), offset=sheet["OffsetF"].astype(int))


def _smic_folder_tree(root, annotations):
    """HS/s<N>/micro/<class>/s<N>_xx_yy/image<N>.bmp for the CSV's SMIC rows (class from the CSV), frames at
    the HS-E sheet's onset / middle / offset where the sheet has the clip, else at 100 / 105 / 110."""
    smic = _megc_csv(annotations).query("dataset == 'smic'")
    clips = smic["filename"].str.replace(r"^s0*(\d+)_", r"s\1_", regex=True)
    sheet = _smic_sheet(annotations).set_index("Filename")
    for clip, label in zip(clips, smic["label"], strict=True):
        onset, offset = (sheet.loc[clip, "onset"], sheet.loc[clip, "offset"]) if clip in sheet.index else (100, 110)
        folder = root / "HS" / clip.split("_")[0] / "micro" / CLASSES[label] / clip
        _touch((folder / f"image{n}.bmp" for n in {onset, (onset + offset) // 2, offset}), BMP)
    return dict(zip(clips, smic["label"].map(CLASSES), strict=True))


# --- SAMM -------------------------------------------------------------------------------------------------------

def test_samm_native_counts_and_apex_anomalies(shared_annotations, tmp_path):
    _samm_tree(tmp_path, shared_annotations, clips=[])
    samples, dropped, classes, fixes, _ = load_dataset(_params(tmp_path))
    assert len(samples) == 159 and dropped.empty
    assert samples["subject"].nunique() == 29 and samples["subject"].str.fullmatch(r"samm/\d{3}").all()
    assert samples["label_name"].value_counts().to_dict() == {
        "anger": 57, "other": 26, "happiness": 26, "surprise": 15, "contempt": 12, "disgust": 9, "fear": 8,
        "sadness": 6}
    assert classes == sorted(classes) and len(classes) == 8
    assert samples["sheet_row"].min() == 15  # 13 preamble rows, header on row 14
    notes = fixes["reason"].tolist()  # the apex fixes that kept a row
    assert notes == [f"{SAMM_SHEET} row 140: apex 1143 outside [onset 1071, offset 1134]: apex set to the middle "
                     "frame 1102",
                     f"{SAMM_SHEET} row 147: apex 1930 outside [onset 4896, offset 4970]: apex set to the middle "
                     "frame 4933"]
    first = samples.iloc[0]
    assert first["onset_path"] == str(tmp_path / "SAMM" / "006" / "006_1_2" / "006_05562.jpg")
    assert first["emotion"] == "Anger" and first["action_units"] == "4+7"

    samples, dropped, _, fixes, _ = load_dataset(_params(tmp_path, apex_outside="drop"))
    assert len(samples) == 157 and fixes.empty
    assert dropped["clip"].tolist() == ["028_4_1", "032_3_1"]
    assert dropped["reason"].str.contains(r"outside \[onset \d+, offset \d+\]: dropped").all()


def test_samm_frames_are_read_and_a_missing_one_is_named(shared_annotations, tmp_path):
    _samm_tree(tmp_path, shared_annotations)
    missing = tmp_path / "SAMM" / "006" / "006_1_3" / "006_03912.jpg"
    missing.unlink()
    samples, dropped, _, _ = ingest_micro(_params(tmp_path), progress=False)
    assert len(samples) == 158 and len(dropped) == 1
    assert dropped["clip"].tolist() == ["006_1_3"] and str(missing) in dropped["reason"].iloc[0]
    assert samples.loc[samples["clip"] == "028_4_1", "apex_frame"].tolist() == [1102]  # read from disk


def _write_samm(path, rows, preamble=13, sheet_name="MICRO_ONLY"):
    with pd.ExcelWriter(path) as writer:
        pd.DataFrame(rows).to_excel(writer, sheet_name=sheet_name, startrow=preamble, index=False)


SAMM_ROW = {"Subject": "006", "Filename": "006_1_2", "Onset Frame": 10, "Apex Frame": 12, "Offset Frame": 14,
            "Action Units": "4", "Estimated Emotion": "Anger"}


def test_samm_bad_input_is_named(tmp_path):
    with pytest.raises(AnnotationError, match=f"{SAMM_SHEET}: annotation file not found"):
        load_dataset(_params(tmp_path))
    _write_samm(tmp_path / "sheet.xlsx", [SAMM_ROW], sheet_name="Sheet1")
    with pytest.raises(AnnotationError, match=r"sheet.xlsx: cannot be read.*MICRO_ONLY"):
        load_dataset(_params(tmp_path, annotation=tmp_path / "sheet.xlsx"))
    _write_samm(tmp_path / "cols.xlsx", [{k: v for k, v in SAMM_ROW.items() if k != "Offset Frame"}])
    with pytest.raises(AnnotationError, match=r"missing columns \['Offset Frame'\]; found \['Subject', 'Filename'"):
        load_dataset(_params(tmp_path, annotation=tmp_path / "cols.xlsx"))
    rows = [SAMM_ROW, {**SAMM_ROW, "Subject": None}, {**SAMM_ROW, "Onset Frame": "n/a"},
            {**SAMM_ROW, "Offset Frame": 8}, {**SAMM_ROW, "Filename": "006_1_3", "Apex Frame": "?"}]
    _write_samm(tmp_path / "bad.xlsx", rows)
    samples, dropped, _, fixes, _ = load_dataset(_params(tmp_path, annotation=tmp_path / "bad.xlsx"))
    assert dropped["reason"].tolist() == ["bad.xlsx row 16: empty Subject",
                                          "bad.xlsx row 17 column Onset Frame: 'n/a' is not a frame number",
                                          "bad.xlsx row 18: Offset Frame 8 is before Onset Frame 10"]
    assert samples["clip"].tolist() == ["006_1_2", "006_1_3"] and samples["apex_frame"].tolist() == [12, 12]
    notes = fixes["reason"].tolist()  # the apex fixes that kept a row
    assert notes == ["bad.xlsx row 19: column Apex Frame is not a frame number: apex set to the middle frame 12"]


# --- SMIC -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "counts"), [(SMIC_SHEET, {"negative": 66, "positive": 51, "surprise": 40}),
                                              ("SMIC-HS-E_annotation_orig.xlsx",
                                               {"negative": 70, "positive": 51, "surprise": 41})])
def test_smic_hs_e_sheet(shared_annotations, tmp_path, name, counts):
    sheet = _smic_sheet(shared_annotations, name)
    shutil.copy(shared_annotations / "smic" / name, tmp_path / SMIC_SHEET)
    for subject, clip, frames in zip(sheet["Subject"], sheet["Filename"], _frames(sheet, apex="onset"), strict=True):
        folder = tmp_path / "HS_long" / "SMIC_HS_E" / f"s{int(subject):02d}" / clip
        _touch(folder / f"image{n:06d}.jpg" for n in frames)
    samples, dropped, classes, _ = ingest_micro(_params(tmp_path, dataset="smic", smic_labels="sheet"), progress=False)
    assert dropped.empty and len(samples) == sum(counts.values())  # _orig: the 'MISSING' FirstF is not needed
    assert samples["subject"].nunique() == 16 and samples["subject"].str.fullmatch(r"smic/s\d+").all()
    assert samples["label_name"].value_counts().to_dict() == counts and classes == list(counts)
    assert (samples["apex_frame"] == (samples["onset_frame"] + samples["offset_frame"]) // 2).all()
    assert samples.loc[samples["clip"] == "s18_sur_03", "label_name"].tolist() == ["negative"]  # as the sheet says
    assert samples.loc[samples["clip"] == "s14_ne_01", "onset_path"].item().endswith(
        "HS_long/SMIC_HS_E/s14/s14_ne_01/image034208.jpg")


def test_smic_folders_and_spotted_apex(shared_annotations, tmp_path):
    labels = _smic_folder_tree(tmp_path, shared_annotations)
    samples, dropped, _, fixes, _ = load_dataset(_params(tmp_path, dataset="smic"))
    assert len(samples) == 164 and dropped.empty and fixes.empty
    assert samples["subject"].nunique() == 16 and set(samples["subject"].str.split("/").str[0]) == {"smic"}
    assert dict(zip(samples["clip"], samples["label_name"], strict=True)) == labels
    assert samples["sheet_row"].tolist() == list(range(1, 165))
    sheet = _smic_sheet(shared_annotations).set_index("Filename")
    merged = samples.join(sheet, on="clip", how="inner")
    assert len(merged) == 157  # the folder tree gives the sheet's onset and offset back
    assert (merged["onset_frame"] == merged["onset"]).all() and (merged["offset_frame"] == merged["offset"]).all()
    assert samples["onset_path"].iloc[0] == str(tmp_path / "HS/s1/micro/negative/s1_ne_01/image559740.bmp")

    spotted = pd.DataFrame({"subject": ["s01", "1"], "clip": ["s01_ne_01", "s1_ne_03"],
                            "apex_frame": [559741, "n/a"]})
    spotted.to_csv(tmp_path / "apex.csv", index=False)
    samples, _, _, fixes, _ = load_dataset(_params(tmp_path, dataset="smic", smic_apex=tmp_path / "apex.csv"))
    assert samples.loc[samples["clip"] == "s1_ne_01", "apex_frame"].item() == 559741
    assert samples.loc[samples["clip"] == "s1_ne_01", "apex_path"].item().endswith("s1_ne_01/image559741.bmp")
    assert len(fixes) == 163 and "column apex_frame of apex.csv is not a frame number" in fixes["reason"].iloc[0]


def test_smic_bad_input_is_named(tmp_path):
    with pytest.raises(AnnotationError, match="no SMIC-HS clip folder"):
        load_dataset(_params(tmp_path, dataset="smic"))
    (tmp_path / "HS" / "s1" / "micro" / "negative" / "s1_ne_01").mkdir(parents=True)
    _touch([tmp_path / "HS" / "s1" / "micro" / "positive" / "s1_po_01" / "image7.bmp"], BMP)
    samples, dropped, _, _, _ = load_dataset(_params(tmp_path, dataset="smic"))
    assert samples["clip"].tolist() == ["s1_po_01"] and samples["apex_frame"].tolist() == [7]
    assert dropped["reason"].str.endswith("s1_ne_01: no .bmp frame file").tolist() == [True]
    with pytest.raises(ValueError, match="smic_labels = folders"):
        load_dataset(_params(tmp_path, dataset="smic", annotation=tmp_path / "x.xlsx"))
    sheet = pd.DataFrame({"Subject": [1, 2, None], "Filename": ["s1_ne_01", "s2_ne_01", "s3_ne_01"],
                          "OnsetF": ["MISSING <-426679", 10, 10], "OffsetF": [20, 20, 20],
                          "Emotion": ["negative"] * 3})
    with pd.ExcelWriter(tmp_path / "hs.xlsx") as writer:
        sheet.to_excel(writer, sheet_name="HS", index=False)
    samples, dropped, _, _, _ = load_dataset(_params(tmp_path, dataset="smic", smic_labels="sheet",
                                                  annotation=tmp_path / "hs.xlsx"))
    assert dropped["reason"].tolist() == ["hs.xlsx row 2 column OnsetF: 'MISSING <-426679' is not a frame number",
                                          "hs.xlsx row 4: empty Subject"]
    with pytest.raises(AnnotationError, match=r"hs.xlsx: missing columns \['Emotion'\]"):
        sheet.drop(columns="Emotion").to_excel(tmp_path / "hs.xlsx", sheet_name="HS", index=False)
        load_dataset(_params(tmp_path, dataset="smic", smic_labels="sheet", annotation=tmp_path / "hs.xlsx"))


# --- MEGC2019 ---------------------------------------------------------------------------------------------------

def _megc_tree(root, annotations):
    """The composite root: the CSV, casme2/ (sheet + Cropped frames of the CSV's clips), samm/, smic/."""
    (root / "casme2").mkdir(parents=True)
    shutil.copy(annotations / "megc2019" / MEGC_CSV, root / MEGC_CSV)
    shutil.copy(annotations / "casme2" / CASME2_SHEET, root / "casme2" / CASME2_SHEET)
    csv = _megc_csv(annotations)
    _samm_tree(root / "samm", annotations, clips=set(csv["filename"]))
    _smic_folder_tree(root / "smic", annotations)
    casme = pd.read_excel(annotations / "casme2" / CASME2_SHEET, dtype=str)
    casme = casme[("sub" + casme["Subject"] + "/" + casme["Filename"]).isin(csv["subject"] + "/" + csv["filename"])]
    casme = casme.assign(onset=casme["OnsetFrame"].astype(int), apex=casme["ApexFrame"].astype(int),
                         offset=casme["OffsetFrame"].astype(int))
    for subject, clip, frames in zip(casme["Subject"], casme["Filename"], _frames(casme), strict=True):
        _touch(root / "casme2" / "Cropped" / f"sub{subject}" / clip / f"reg_img{n}.jpg" for n in frames)
    return csv


def test_megc2019_composite_counts(shared_annotations, tmp_path):
    csv = _megc_tree(tmp_path, shared_annotations)
    samples, dropped, classes, _ = ingest_micro(_params(tmp_path, dataset="megc2019", protocol="megc2019-3class"),
                                             progress=False)
    assert len(samples) == 442 and dropped.empty
    assert classes == ["negative", "positive", "surprise"]
    assert samples["label_name"].value_counts().to_dict() == {"negative": 250, "positive": 109, "surprise": 83}
    per_source = samples.groupby("source_dataset")["subject"].agg(["size", "nunique"])
    assert per_source.to_dict("index") == {"smic": {"size": 164, "nunique": 16},
                                           "casme2": {"size": 145, "nunique": 24},
                                           "samm": {"size": 133, "nunique": 28}}
    assert samples["subject"].nunique() == 68 and (samples["dataset"] == "megc2019").all()
    assert samples["subject"].str.fullmatch(r"casme2/sub\d\d|samm/\d{3}|smic/s\d+").all()
    truth = csv.assign(sheet_row=np.arange(1, len(csv) + 1), label_name=csv["label"].map(CLASSES))
    merged = samples.merge(truth, on="sheet_row")
    assert (merged["label_name_x"] == merged["label_name_y"]).all()
    assert (merged["clip"].str.replace(r"^s(\d)_", r"s0\1_", regex=True) == merged["filename"]).all()
    samm = samples[samples["source_dataset"] == "samm"]
    assert "Other" not in set(samm["emotion"]) and samm["emotion"].str.istitle().all()  # own emotion kept
    for fold in loso_folds(samples["subject"]):
        assert not set(samples["subject"].iloc[fold.train_idx]) & set(samples["subject"].iloc[fold.test_idx])


def test_megc2019_unmatched_rows_are_dropped_with_reasons(shared_annotations, tmp_path):
    _megc_tree(tmp_path, shared_annotations)
    (tmp_path / "smic" / "HS" / "s3" / "micro" / "negative" / "s3_ne_99").mkdir()
    extra = "samm,99,099_1_1,0\r\nsmic,s03,s03_ne_99,0\r\ncasme3,spNO.1,a,0\r\nsamm,6,006_1_2,7\r\n"
    with open(tmp_path / MEGC_CSV, "a", newline="") as f:
        f.write(extra)
    params = _params(tmp_path, dataset="megc2019", protocol="megc2019-3class")
    samples, dropped, _, fixes, _ = load_dataset(params)
    assert len(samples) == 442 and len(samples) + len(dropped) == 446
    notes = fixes["reason"].tolist()  # the apex fixes that kept a row
    assert notes == [f"{MEGC_CSV} row 414: apex 1143 outside [onset 1071, offset 1134]: apex set to the middle "
                     "frame 1102",
                     f"{MEGC_CSV} row 421: apex 1930 outside [onset 4896, offset 4970]: apex set to the middle "
                     "frame 4933"]  # SAMM's 028_4_1 and 032_3_1 go through the apex policy
    reasons = dict(zip(dropped["sheet_row"], dropped["reason"], strict=True))
    assert reasons[443] == f"{MEGC_CSV} row 443: samm subject '099' clip '099_1_1' is not in {SAMM_SHEET}"
    assert reasons[444].startswith(f"{MEGC_CSV} row 444: smic subject 's3' clip 's3_ne_99' was dropped by the smic "
                                   "adapter: ") and reasons[444].endswith("s3_ne_99: no .bmp frame file")
    assert "dataset 'casme3' is not one of" in reasons[445] and "label '7' is not 0, 1 or 2" in reasons[446]
    assert set(dropped["subject"]) == {"samm/099", "smic/s3", "casme3/spNO.1", "samm/006"}
    with open(tmp_path / MEGC_CSV, "a", newline="") as f:
        f.write("samm,006,006_1_2,0\r\n")  # a repeat of row 310 (samm,6,006_1_2): fails, as in every adapter
    with pytest.raises(AnnotationError, match=re.escape(
            f"{MEGC_CSV} rows 310 and 447: the same (dataset, subject, clip) samm/006/006_1_2")):
        load_dataset(params)
    with pytest.raises(ValueError, match="megc2019-3class"):
        load_dataset(_params(tmp_path, dataset="megc2019", protocol="native"))


def test_megc2019_with_smic_labels_from_the_hs_e_sheet(shared_annotations, tmp_path, caplog):
    _megc_tree(tmp_path, shared_annotations)
    shutil.copy(shared_annotations / "smic" / SMIC_SHEET, tmp_path / "smic" / SMIC_SHEET)
    samples, dropped, _, _, _ = load_dataset(_params(tmp_path, dataset="megc2019", protocol="megc2019-3class",
                                                  smic_labels="sheet"))
    assert len(samples) == 435 and len(dropped) == 7  # 7 SMIC clips of the CSV are not in the HS-E sheet
    assert sorted(dropped["clip"]) == ["s1_ne_02", "s2_sur_05", "s3_ne_03", "s3_ne_20", "s4_ne_05", "s4_ne_06",
                                       "s9_sur_02"]  # the CSV's s01_ne_02 etc., in the folders' spelling
    assert dropped["reason"].str.endswith(f"is not in {SMIC_SHEET}").all()
    s18 = samples[samples["clip"] == "s18_sur_03"]
    assert s18[["label_name", "emotion"]].values.tolist() == [["surprise", "negative"]]  # CSV class, own emotion
    assert "s18_sur_03 is surprise in the CSV" in caplog.text
