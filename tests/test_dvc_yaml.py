"""dvc.yaml declares what each fine-tuning stage reads, so `dvc repro` reruns exactly what an edit made stale."""

from __future__ import annotations

import yaml

from pipeline.arms import ARMS


def _stages(repo) -> dict:
    return yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]  # YAML anchors resolved


def test_every_arm_has_a_stage_and_declares_the_recipe_as_one_section(repo):
    stages = _stages(repo)
    assert {name.removeprefix("finetune_") for name in stages if name.startswith("finetune_")} == set(ARMS)
    for arm in ARMS:
        declared = set(stages[f"finetune_{arm}"]["do"]["params"])
        assert "finetune.recipe" in declared, arm  # a new recipe key cannot be forgotten by one arm
        assert not {p for p in declared if p.startswith("finetune.recipe.")}, arm
        assert not {"finetune", "finetune.folds", "finetune.baseline", "finetune.baseline.folds"} & declared, arm


def test_baseline_stage_reads_its_model_not_miacnets(repo):
    stages = _stages(repo)
    declared = set(stages["finetune_baseline"]["do"]["params"])
    assert {"finetune.baseline.model", "finetune.baseline.image_size_px", "model.dropout"} <= declared
    assert "model" not in declared  # MIACNet's widths do not shape the baseline
    assert "model" in stages["finetune_ma2mi"]["do"]["params"]


def test_pretrain_declares_every_key_but_the_loader(repo):
    from pipeline.config import PretrainParams

    declared = set(_stages(repo)["pretrain"]["params"])
    keys = {f"pretrain.{name}" for name in PretrainParams.model_fields} - {"pretrain.loader"}
    assert keys <= declared, sorted(keys - declared)
    assert not {"pretrain", "pretrain.loader"} & declared


def test_pretrain_and_probe_read_the_encoders_model_keys_not_the_fine_tuning_ones(repo):
    from pipeline.config import ModelParams

    encoder_keys = {f"model.{name}" for name in ModelParams.model_fields} - {"model.action_input", "model.dropout"}
    for stage in ("pretrain", "probe"):
        declared = {key for key in _stages(repo)[stage]["params"] if key.startswith("model")}
        assert declared == encoder_keys, stage  # model.action_input: flow must not retrain the encoder
