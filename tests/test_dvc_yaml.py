"""dvc.yaml declares what each fine-tuning stage reads, so `dvc repro` reruns exactly what an edit made stale."""

from __future__ import annotations

import yaml

from pipeline.config import FinetuneParams

# finetune keys that are not part of the training recipe: the fold is the stage's own ${item}, the baseline arm's
# switch (folds) must not rerun the MIACNet arms
NOT_RECIPE = {"folds", "baseline"}


def _stage_params(repo, name: str) -> list[str]:
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]  # YAML anchors resolved
    return stages[name]["do"]["params"]


def test_every_recipe_key_is_a_declared_param_of_each_arm(repo):
    recipe = {f"finetune.{name}" for name in FinetuneParams.model_fields} - {f"finetune.{n}" for n in NOT_RECIPE}
    for stage in ("finetune_ma2mi", "finetune_scratch", "finetune_baseline"):
        declared = set(_stage_params(repo, stage))
        assert recipe <= declared, f"{stage} does not declare {sorted(recipe - declared)}"
        assert not {"finetune", "finetune.folds", "finetune.baseline", "finetune.baseline.folds"} & declared, stage


def test_baseline_stage_reads_its_model_not_miacnets(repo):
    declared = set(_stage_params(repo, "finetune_baseline"))
    assert {"finetune.baseline.model", "finetune.baseline.image_size_px", "model.dropout"} <= declared
    assert "model" not in declared  # MIACNet's widths do not shape the baseline
    assert "model" in _stage_params(repo, "finetune_ma2mi")
