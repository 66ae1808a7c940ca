"""split_rows (the row checks every sheet adapter shares) and what the CASME II and MMEW adapters add to it."""

from __future__ import annotations

import pandas as pd

from pipeline.datasets import casme2, mmew
from pipeline.datasets.common import ANNOTATION_COLUMNS, DROPPED_COLUMNS
from pipeline.datasets.rows import split_rows

NAMES = {"subject": "S", "clip": "F", "onset_frame": "On", "apex_frame": "Ap", "offset_frame": "Off",
         "emotion": "E"}


def _sheet(rows: list[tuple]) -> pd.DataFrame:
    """A sheet as read_table returns it: stripped text cells and sheet_row (header = row 1)."""
    sheet = pd.DataFrame(rows, columns=["S", "F", "On", "Ap", "Off", "E"], dtype=str)
    sheet.insert(0, "sheet_row", range(2, len(sheet) + 2))
    return sheet


def test_numeric_subjects_are_formatted_in_rows_and_dropped():
    sheet = _sheet([("6", "a", "1", "2", "3", "x"), ("6.0", "b", "5", "/", "4", "x"), ("x6", "c", "1", "2", "3", "x"),
                    ("7", "d", "1", "2", "3", "x")])
    rows, dropped = split_rows(sheet, "f.csv", "src", NAMES, subject_format="{:03d}")
    assert list(rows.columns) == ANNOTATION_COLUMNS and list(dropped.columns) == DROPPED_COLUMNS
    assert rows["subject"].tolist() == ["006", "007"] and rows["apex_frame"].tolist() == [2, 2]
    assert dropped["reason"].tolist() == ["f.csv row 3: Off 4 is before On 5",
                                          "f.csv row 4 column S: 'x6' is not a subject number"]
    assert dropped["subject"].tolist() == ["006", "x6"]  # formatted where valid, else as written


def test_text_subject_ids_and_the_interval_note():
    sheet = _sheet([("spNO.1", "b", "1", "2", "3", "x"), ("NO.3", "c", "1", "2", "3", "x"),
                    ("spNO.2", "d", "30", "2", "9", "x")])
    rows, dropped = split_rows(sheet, "f.xlsx", "casme3", NAMES, subject_id=(r"spNO\.\d+", "spNO.1"),
                               interval_note=" (not an interval)")
    assert rows["subject"].tolist() == ["spNO.1"]
    assert dropped["reason"].tolist() == ["f.xlsx row 3 column S: 'NO.3' is not a subject id like 'spNO.1'",
                                          "f.xlsx row 4: Off 9 is before On 30 (not an interval)"]


def test_an_empty_sheet_gives_empty_frames_with_the_columns():
    rows, dropped = split_rows(_sheet([]), "f.csv", "src", NAMES, subject_format="S{:02d}")
    assert rows.empty and list(rows.columns) == ANNOTATION_COLUMNS
    assert dropped.empty and list(dropped.columns) == DROPPED_COLUMNS


def test_casme2_drops_an_offset_before_the_onset(tmp_path):
    sheet = pd.DataFrame([("01", "EP01", 10, 12, 15, "12", "happiness"), ("02", "EP02", 20, 22, 9, "4", "disgust")],
                         columns=list(casme2.COLUMNS.values()))
    sheet.to_excel(tmp_path / "c.xlsx", index=False)
    rows, dropped = casme2.read_sheet(tmp_path / "c.xlsx", "casme2")
    assert rows["subject"].tolist() == ["sub01"]
    assert dropped[["subject", "reason"]].values.tolist() == [
        ["sub02", "c.xlsx row 3: OffsetFrame 9 is before OnsetFrame 20"]]


def test_mmew_own_checks_come_after_the_shared_ones(tmp_path):
    rows = [("1", "S01-01-001", "1", "15", "31", "12", "happiness"),
            ("2", "S01-02-001", "x", "15", "31", "12", "happiness"),  # a foreign Filename and a bad onset
            ("2", "S02-02-001", "1", "15", "31", "12", ""),
            ("1", "S01-01-001", "2", "15", "31", "12", "fear")]  # another onset: not a repeated row
    pd.DataFrame(rows, columns=list(mmew.COLUMNS.values())).to_csv(tmp_path / "m.csv", index=False)
    kept, dropped = mmew.read_sheet(tmp_path / "m.csv")
    assert kept["sheet_row"].tolist() == [2]
    assert dropped[["sheet_row", "subject", "reason"]].values.tolist() == [
        [3, "S02", "m.csv row 3 column OnsetFrame: 'x' is not a frame number"],
        [4, "S02", "m.csv row 4: empty Estimated Emotion (it names the frame folder)"],
        [5, "S01", "m.csv row 5: Filename 'S01-01-001' also annotated 'happiness' in another row"]]
