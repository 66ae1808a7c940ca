"""Audit of 34752a0, params side (issue 19, items 1 and 8): paths that could delete inputs, lax types, folds and
label budgets the data cannot have. Each case failed (was accepted) before; each is now a clear error naming
the keys."""

from __future__ import annotations

import os

import pandas as pd
import pytest
import yaml

from pipeline.config import ConfigError, load_params
from pipeline.data.loso import fold_and_budget_problems
from pipeline.ingest.checks import check_micro


def _load(tmp_path, raw):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    return load_params(tmp_path / "params.yaml")


def _casme2(tmp_path, raw):
    (tmp_path / "CASME2").mkdir(exist_ok=True)
    raw["micro"].update(dataset="casme2", root=str(tmp_path / "CASME2"))
    return raw


# -- item 1: an output at, around or inside an input or another output -----------------------------------------

def test_an_output_at_the_dataset_root_is_refused_naming_both_keys(tmp_path, raw_params):
    """Before: ingest_micro exited 0 and replaced the 7,632-file dataset folder by its 4 output files."""
    raw = _casme2(tmp_path, raw_params)
    raw["paths"]["micro_dir"] = str(tmp_path / "CASME2")
    with pytest.raises(ConfigError, match=r"paths\.micro_dir .* overlaps the input micro\.root"):
        _load(tmp_path, raw)


@pytest.mark.parametrize("output", ["around", "inside", "symlink"])
def test_an_output_around_inside_or_linked_to_the_dataset_is_refused(tmp_path, raw_params, output):
    raw = _casme2(tmp_path, raw_params)
    if output == "symlink":  # another name for the same folder
        os.symlink(tmp_path / "CASME2", tmp_path / "link")
    path = {"around": tmp_path, "inside": tmp_path / "CASME2" / "out", "symlink": tmp_path / "link"}[output]
    raw["paths"]["evaluate_dir"] = str(path)
    with pytest.raises(ConfigError, match=r"paths\.evaluate_dir .* overlaps the input micro\.root"):
        _load(tmp_path, raw)


def test_an_output_holding_another_output_is_refused(tmp_path, raw_params):
    """Before: ``paths.pretrain_dir: models`` made the pretrain stage remove ``models/final``."""
    raw_params["paths"]["pretrain_dir"] = "models"
    with pytest.raises(ConfigError, match=r"paths\.pretrain_dir \(models\) and final\.dir \(models/final\) overlap"):
        _load(tmp_path, raw_params)


def test_the_demo_micro_dir_as_an_output_of_ingest_is_refused(tmp_path, raw_params):
    raw_params["paths"]["micro_dir"] = raw_params["paths"]["demo_micro_dir"]
    with pytest.raises(ConfigError, match=r"paths\.demo_micro_dir .* and paths\.micro_dir .* overlap"):
        _load(tmp_path, raw_params)


def test_a_macro_output_inside_a_macro_source_is_refused(tmp_path, raw_params):
    (tmp_path / "CK+").mkdir()
    raw_params["macro"]["sources"]["ckplus"] = {"kind": "ckplus", "root": str(tmp_path / "CK+"), "csv": None,
                                                "fps": 30.0}
    raw_params["paths"]["macro_cache_dir"] = str(tmp_path / "CK+" / "cache")
    with pytest.raises(ConfigError, match=r"paths\.macro_cache_dir .* overlaps the input macro\.sources\.ckplus"):
        _load(tmp_path, raw_params)


def test_every_overlap_is_listed_and_the_shipped_paths_are_separate(tmp_path, raw_params):
    assert load_params("params.yaml").paths.micro_dir  # the project's own params pass
    raw = _casme2(tmp_path, raw_params)
    raw["paths"].update(micro_dir=str(tmp_path / "CASME2"), pretrain_dir="models")
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, raw)
    assert "paths.micro_dir" in str(err.value) and "final.dir" in str(err.value)


# -- item 8: lax coercion ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("section", "key", "value"), [
    ("recipe", "epochs", True),  # before: 1 epoch
    ("recipe", "flip", "no"),  # before: False
    ("recipe", "deterministic", 1),  # before: True
    ("recipe", "batch_size", 4.5),  # before: refused only when fractional; 4.0 was taken as 4
    ("recipe", "lr", "0.001"),  # a quoted number: before, the float 0.001
    ("recipe", "lr", True),  # before: 1.0
])
def test_a_value_of_the_wrong_type_is_refused_naming_the_key(tmp_path, raw_params, section, key, value):
    raw_params["finetune"][section][key] = value
    with pytest.raises(ConfigError, match=rf"finetune\.{section}\.{key}: Input should be a valid"):
        _load(tmp_path, raw_params)


def test_exponent_floats_are_floats_as_in_yaml_1_2(tmp_path, raw_params):
    """PyYAML (YAML 1.1) reads ``1e-3`` as a string; DVC (YAML 1.2) as a float. The params loader follows 1.2,
    so strict floats do not refuse the way researchers write learning rates."""
    raw_params["finetune"]["recipe"]["lr"] = 0.007  # a value no other key has
    text = yaml.safe_dump(raw_params).replace("lr: 0.007", "lr: 7e-3", 1)
    assert "lr: 7e-3" in text and isinstance(yaml.safe_load(text)["finetune"]["recipe"]["lr"], str)  # YAML 1.1
    (tmp_path / "params.yaml").write_text(text)
    assert load_params(tmp_path / "params.yaml").finetune.recipe.lr == pytest.approx(7e-3)


def test_an_int_is_a_float(tmp_path, raw_params):
    raw_params["finetune"]["recipe"]["rotate_deg"] = 0
    assert _load(tmp_path, raw_params).finetune.recipe.rotate_deg == 0.0


# -- item 8: folds and label budgets the data cannot have -------------------------------------------------------

def test_a_demo_label_budget_of_every_clip_is_refused_when_params_load(tmp_path, raw_params):
    """Before: ``label_budgets`` at or above the clips per class gave a curve point that was the full run."""
    clips = raw_params["synthesize"]["clips_per_class"]
    raw_params["finetune"]["label_budgets"] = [1, clips]
    with pytest.raises(ConfigError, match=rf"finetune\.label_budgets \[{clips}\]: the demo has "
                                          rf"synthesize\.clips_per_class = {clips}"):
        _load(tmp_path, raw_params)
    raw_params["finetune"]["label_budgets"] = [clips - 1]
    assert _load(tmp_path, raw_params).finetune.label_budgets == [clips - 1]


@pytest.mark.parametrize("key", ["folds", "baseline"])
def test_a_demo_fold_past_the_subjects_is_refused_when_params_load(tmp_path, raw_params, key):
    """Before: refused only when the fold's stage ran, after ingestion and pre-training."""
    n = raw_params["synthesize"]["n_subjects"]
    raw_params["finetune"]["folds"] = raw_params["finetune"]["baseline"]["folds"] = [0, n]
    with pytest.raises(ConfigError, match=rf"finetune\.folds \[0, {n}\]: the demo has synthesize\.n_subjects"):
        _load(tmp_path, raw_params)


def test_folds_and_budgets_of_a_real_sheet_are_checked_before_ingestion(tmp_path, raw_params, shared_annotations):
    """check_micro reads the user's annotation sheet (not the frames): CASME II has 24 subjects in the 3-class
    protocol and at most 23 clips of one class per subject."""
    raw = _casme2(tmp_path, raw_params)
    raw["micro"].update(annotation=str(shared_annotations / "casme2" / "CASME2-coding-20190701.xlsx"),
                        casme2_frames="raw")
    raw["finetune"].update(folds=[0, 30], label_budgets=[1, 100])
    raw["finetune"]["baseline"]["folds"] = [0, 30]
    with pytest.raises(ConfigError) as err:
        check_micro(_load(tmp_path, raw))
    message = str(err.value)
    assert "finetune.folds: folds [30] do not exist: the data has 24 subjects" in message
    assert "finetune.baseline.folds: folds [30]" in message
    assert "finetune.label_budgets: [100] keep every training clip (no subject has more than 23" in message
    raw["finetune"].update(folds=[0, 23], label_budgets=[1, 22])
    raw["finetune"]["baseline"]["folds"] = [0, 23]
    assert check_micro(_load(tmp_path, raw))["dataset"] == "casme2"


def test_the_fold_stage_refuses_a_budget_of_every_ingested_clip():
    """The fold stage checks again on the ingested table (ingestion may have skipped clips)."""
    subjects = pd.Series(["a", "a", "a", "b", "b"])
    labels = pd.Series([0, 0, 1, 0, 1])
    assert fold_and_budget_problems(subjects, labels, {"finetune.folds": [0, 1]}, [1]) == []
    problems = fold_and_budget_problems(subjects, labels, {"finetune.folds": [2]}, [2])
    assert problems[0].startswith("finetune.folds: folds [2] do not exist: the data has 2 subjects")
    assert problems[1].startswith("finetune.label_budgets: [2] keep every training clip")
