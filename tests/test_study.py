"""The study of docs/study.md (issue 21): the validation split, the plan, the selection rule, the dev workspace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.config import ConfigError
from pipeline.data.loso import loso_folds, validation_fold
from tests.test_parallel_runs import fold_workspace
from tools import study

REPO = Path(__file__).resolve().parents[1]


def test_validation_split_never_holds_the_test_subject_and_covers_every_subject_once():
    subjects = pd.Series(np.repeat([f"demo/sub{i:02d}" for i in (3, 1, 8, 2, 5)], [2, 3, 1, 4, 2]))
    seen = []
    for fold in loso_folds(subjects):
        split = validation_fold(fold, subjects)
        rows = subjects.to_numpy()
        assert fold.test_subject not in set(rows[split.train_idx]) | set(rows[split.test_idx])
        assert set(rows[split.test_idx]) == {split.test_subject}
        assert split.test_subject not in set(rows[split.train_idx])
        assert sorted([*split.train_idx, *split.test_idx]) == sorted(fold.train_idx)  # nothing lost, nothing added
        assert split.index == fold.index
        seen.append(split.test_subject)
    assert sorted(seen) == sorted(subjects.unique())  # each subject validates once


def test_validation_split_needs_three_subjects():
    subjects = pd.Series(["a", "a", "b"])
    with pytest.raises(ValueError, match="at least 3 subjects"):
        validation_fold(loso_folds(subjects)[0], subjects)


def test_the_committed_plan_is_valid_against_params_yaml():
    plan = study.Plan.read(study.PLAN)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, variant in plan.variants.items():
        params = study.variant_params(raw, variant.set, name)
        for key, value in variant.set.items():
            node = params.model_dump()
            for part in key.split("."):
                node = node[part]
            assert (list(node) if isinstance(node, tuple) else node) == value, (name, key)  # ranges load as tuples
    assert len(study.planned_runs(plan, ["default"])) == 3 * 1 * len(plan.folds) * len(plan.seeds)


def test_variant_params_names_an_unknown_key_and_a_bad_value():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    with pytest.raises(KeyError, match=r"variant x: 'finetune\.recipe\.lrr'"):
        study.variant_params(raw, {"finetune.recipe.lrr": 0.1}, "variant x")
    with pytest.raises(ConfigError, match="variant y"):
        study.variant_params(raw, {"finetune.recipe.lr": -1.0}, "variant y")


def _scores(uf1: dict[tuple[str, str], list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"variant": variant, "arm": arm, "split": "validation", "seed": seed, "uf1": value}
                         for (variant, arm), values in uf1.items() for seed, value in enumerate(values)])


def _variant(stage: str, arms: list[str], overrides: dict, splits: tuple[str, ...] = ("validation",)) -> study.Variant:
    return study.Variant(stage=stage, arms=arms, splits=list(splits), set=overrides)


def test_stage_a_keeps_the_default_on_a_tie_and_takes_a_strictly_better_candidate():
    plan = study.Plan(seeds=[0, 1], folds=[0], variants={
        "default": _variant("A", ["ma2mi", "scratch"], {}),
        "fast": _variant("A", ["ma2mi", "scratch"], {"x": 1}),
        "faster": _variant("A", ["ma2mi", "scratch"], {"x": 2})})
    scores = _scores({("default", "ma2mi"): [0.5, 0.7], ("fast", "ma2mi"): [0.7, 0.5],  # tie: default stays
                      ("faster", "ma2mi"): [0.6, 0.6],
                      ("default", "scratch"): [0.5, 0.5], ("fast", "scratch"): [0.8, 0.8],
                      ("faster", "scratch"): [0.8, 0.8]})  # tie between candidates: the earlier one
    (stage_a,) = study.decisions(scores, plan)
    assert stage_a["chosen"]["ma2mi"] == "default" and stage_a["chosen"]["scratch"] == "fast"
    incomplete = scores[~((scores["variant"] == "faster") & (scores["arm"] == "scratch") & (scores["seed"] == 1))]
    assert study.decisions(incomplete, plan) == []  # a stage with a missing seed is not decided
    assert study.decisions(pd.DataFrame(), plan) == []  # before any run finished (a fresh study)
    assert study.configuration(plan, pd.DataFrame(), "fast", "ma2mi") == {"x": 1}


def test_later_stages_decide_jointly_on_top_of_the_earlier_choices():
    plan = study.Plan(seeds=[0], folds=[0], variants={
        "default": _variant("A", ["ma2mi", "scratch"], {}),
        "lr": _variant("A", ["ma2mi", "scratch"], {"finetune.recipe.lr": 0.003}),
        "flow": _variant("B", ["ma2mi", "scratch"], {"model.action_input": "flow"}),
        "long": _variant("C", ["ma2mi"], {"pretrain.epochs": 40}),
        "chosen": _variant("check", ["ma2mi", "scratch"], {}, splits=("test",))})
    assert study.decision_stages(plan) == ["A", "B", "C"]
    scores = _scores({("default", "ma2mi"): [0.5], ("lr", "ma2mi"): [0.9], ("default", "scratch"): [0.6],
                      ("lr", "scratch"): [0.5]})
    assert study.configuration(plan, scores, "flow", "ma2mi") == {"finetune.recipe.lr": 0.003,
                                                                   "model.action_input": "flow"}
    assert study.configuration(plan, scores, "flow", "scratch") == {"model.action_input": "flow"}
    with pytest.raises(RuntimeError, match="stage B is not decided"):
        study.configuration(plan, scores, "long", "ma2mi")
    # flow: ma2mi 0.8 (< 0.9), scratch 0.8 (> 0.6): mean 0.8 > the reference's (0.9 + 0.6) / 2 = 0.75, so both switch
    scores = pd.concat([scores, _scores({("flow", "ma2mi"): [0.8], ("flow", "scratch"): [0.8]})])
    _, stage_b = study.decisions(scores, plan)
    assert stage_b["chosen"] == {"ma2mi": "flow", "scratch": "flow", "baseline": "default"}
    assert stage_b["scores"]["reference"] == pytest.approx(0.75)
    assert study.configuration(plan, scores, "long", "ma2mi") == {
        "finetune.recipe.lr": 0.003, "model.action_input": "flow", "pretrain.epochs": 40}
    scores = pd.concat([scores, _scores({("long", "ma2mi"): [0.7]})])  # worse than flow's 0.8: not taken
    assert study.decisions(scores, plan)[-1]["chosen"]["ma2mi"] == "flow"
    assert study.configuration(plan, scores, "chosen", "ma2mi") == {"finetune.recipe.lr": 0.003,
                                                                     "model.action_input": "flow"}
    scores = scores.assign(uar=scores["uf1"], accuracy=scores["uf1"], train_accuracy=1.0, wall_s=2.0)
    text = study.report_markdown(scores, plan, {"workspace (pretrain.epochs: 20)": 0.8675})
    assert "- `ma2mi`: {'finetune.recipe.lr': 0.003, 'model.action_input': 'flow'}" in text
    assert "- `scratch`: {'model.action_input': 'flow'}" in text and "pretrain.epochs: 20): 0.8675" in text
    assert "chosen configuration" not in study.report_markdown(scores[scores["variant"] != "long"], plan)


def test_set_dev_seed_changes_that_one_key():
    text = (REPO / "params.yaml").read_text()
    changed = study.set_dev_seed(text, 7)
    diff = [(a, b) for a, b in zip(text.splitlines(), changed.splitlines(), strict=True) if a != b]
    assert diff == [("  seed: 0", "  seed: 7")]
    with pytest.raises(ValueError, match="synthesize"):
        study.set_dev_seed("pretrain:\n  seed: 0\n", 1)


def test_a_study_run_trains_on_the_validation_split_and_resumes_nothing_twice(tmp_path, raw_params):
    """One run of the tool's worker function, in-process: it predicts the validation subject only (never the test
    subject), trains on the remaining subjects, and records its last epoch and wall time."""
    params = fold_workspace(tmp_path / "ws", raw_params, seeds=[0], epochs=2)
    from pipeline.models.registry import arm_model

    run = study.Run("default", "scratch", "validation", 0, 0)
    out = tmp_path / "study"
    study._train(run, params.paths, arm_model("scratch", finetune=params.finetune, model=params.model),
                 params.finetune.recipe, str(out))
    table = pd.read_parquet(run.result(out))
    assert set(table["subject"]) == {"b"}  # fold 0 tests "a"; its validation subject is the next one
    assert set(table["train_clips"]) == {4}  # subject "c" only
    assert table["train_accuracy"].between(0, 1).all() and (table["wall_s"] > 0).all()
    assert not list(run.result(out).parent.glob("model_seed*.pt"))  # selection runs keep no weights
    assert not list(run.result(out).parent.glob("state_seed*.pt"))


def test_a_variant_may_add_an_arms_recipe_change_but_not_shadow_one():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    params = study.variant_params(raw, {"finetune.arm_recipes.baseline.lr": 0.0042}, "v")
    assert params.finetune.arm_recipe("baseline").lr == 0.0042 and params.finetune.arm_recipe("ma2mi").lr != 0.0042
    with pytest.raises(KeyError, match=r"finetune\.arm_recipes\.x\.lr"):
        study.variant_params(raw, {"finetune.arm_recipes.x.lr": 0.003}, "v")
