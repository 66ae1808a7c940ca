"""The whole DAG, shrunk: ``dvc repro`` in a temporary copy of the project (the session's ``shrunk_project``
fixture, tests/conftest.py), then staleness checks."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from sklearn.metrics import f1_score


def _run(args: list[str], cwd: Path, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_repro_produces_metrics_for_both_arms_over_seeds(shrunk_project):
    work, env = shrunk_project
    evaluate = work / "results" / "evaluate"
    metrics = json.loads((evaluate / "metrics.json").read_text())
    samples = json.loads((work / "data" / "micro" / "summary.json").read_text())
    assert samples["samples"] == 18 and samples["subjects"] == 3
    assert samples["classes"] == ["negative", "positive", "surprise"]
    assert "## Per subject and class" in (work / "data" / "micro" / "summary.md").read_text()
    assert metrics["run"]["seeds"] == [0, 1]
    per_seed = pd.read_csv(evaluate / "per_seed.csv")
    for arm in ("ma2mi", "scratch"):
        assert metrics[arm]["n"] == 18 and metrics[arm]["seeds"] == 2  # each seed pools every LOSO fold once
        scores = per_seed[per_seed["arm"] == arm].set_index("seed")
        for score in ("accuracy", "uf1", "uar"):
            assert metrics[arm][score] == pytest.approx(scores[score].mean())
            assert metrics[arm][f"{score}_std"] == pytest.approx(scores[score].std(ddof=1))
        # recomputed from the fold stages' predictions, independently of the evaluate stage
        predictions = pd.concat(pd.read_parquet(path) for path in (work / "results" / "finetune" / arm).glob(
            "fold*/predictions.parquet"))
        assert set(predictions["label_budget"]) == {"all", "1"}  # finetune.label_budgets: [1]
        predictions = predictions[predictions["label_budget"] == "all"]  # the ablation's own runs
        assert sorted(predictions["seed"].unique()) == [0, 1]
        for seed, part in predictions.groupby("seed"):
            assert len(part) == 18 and part["sample_id"].is_unique
            assert scores.loc[seed, "uf1"] == pytest.approx(
                f1_score(part["label"], part["predicted"], labels=[0, 1, 2], average="macro", zero_division=0))
    difference = (per_seed.pivot(index="seed", columns="arm", values="uf1").eval("ma2mi - scratch"))
    assert metrics["ma2mi_minus_scratch"]["uf1"] == pytest.approx(difference.mean())
    assert metrics["ma2mi_minus_scratch"]["uf1_std"] == pytest.approx(difference.std(ddof=1))
    pretrain = json.loads((work / "models" / "pretrain" / "metrics.json").read_text())
    assert pretrain["heldout_recon_over_copy"] > 0
    shown = _run(["dvc", "metrics", "show"], work, env).stdout
    assert "ma2mi.uf1" in shown and "scratch.uar_std" in shown and "ma2mi_minus_scratch.uf1" in shown
    videos = work / "data" / "macro" / "samples" / "videos.parquet"
    assert videos.is_file()
    for figure in ("confusion.png", "ablation.png", "curves.png"):
        assert (evaluate / figure).stat().st_size > 0, figure
    assert {p.name for p in (evaluate / "confusion").iterdir()} == {"ma2mi.csv", "scratch.csv", "ststnet.csv"}
    assert (work / "results" / "finetune" / "ma2mi" / "fold0" / "model_seed1.pt").is_file()
    assert not any((work / ".cache" / "checkpoints").rglob("*.pt"))  # resume states are removed on success


@pytest.mark.slow
def test_second_repro_runs_nothing(shrunk_project):
    work, env = shrunk_project
    result = _run(["dvc", "repro"], work, env)
    assert "Running stage" not in result.stdout + result.stderr


def _stale_after_edit(work: Path, env: dict, edit) -> set[str]:
    """Stage names `dvc status` lists after ``edit(raw_params)``; params.yaml is restored afterwards."""
    params_path = work / "params.yaml"
    original = params_path.read_text()
    raw = yaml.safe_load(original)
    edit(raw)
    params_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    try:
        return set(json.loads(_run(["dvc", "status", "--json"], work, env).stdout))
    finally:
        params_path.write_text(original)


def _stage_names(work: Path, stage: str, body: dict) -> set[str]:
    """The DVC stage names of a dvc.yaml entry: ``name``, or ``name@item`` for each item of its foreach."""
    if "foreach" not in body:
        return {stage}
    items = yaml.safe_load((work / "params.yaml").read_text())
    for part in body["foreach"].strip("${}").split("."):
        items = items[part]
    return {f"{stage}@{item}" for item in items}


def _declaring(work: Path, key: str) -> set[str]:
    """Every stage that declares the param ``key`` or a section holding it (e.g. ``finetune.recipe``)."""
    parts = key.split(".")
    covering = {".".join(parts[: i + 1]) for i in range(len(parts))}
    names = set()
    for stage, body in yaml.safe_load((work / "dvc.yaml").read_text())["stages"].items():
        declared = (body.get("do") or body).get("params", [])
        if covering & {p if isinstance(p, str) else next(iter(p)) for p in declared}:
            names |= _stage_names(work, stage, body)
    return names


@pytest.mark.slow
def test_a_recipe_edit_stales_exactly_the_stages_that_read_the_recipe(shrunk_project):
    work, env = shrunk_project
    stale = _stale_after_edit(work, env, lambda raw: raw["finetune"]["recipe"].update(
        lr=raw["finetune"]["recipe"]["lr"] * 2))
    arms = {f"finetune_{arm}@{fold}" for arm in ("ma2mi", "scratch", "baseline") for fold in (0, 1, 2)}
    assert arms | {"evaluate", "final_ma2mi", "final_scratch"} <= stale
    assert stale == _declaring(work, "finetune.recipe.lr")
    assert not {"ingest_micro", "pretrain", "probe"} & stale


@pytest.mark.slow
def test_switching_the_baseline_model_reruns_no_miacnet_stage(shrunk_project):
    work, env = shrunk_project
    stale = _stale_after_edit(work, env, lambda raw: raw["finetune"]["baseline"].update(model="resnet18-diff"))
    assert {"finetune_baseline@0", "finetune_baseline@1", "finetune_baseline@2", "evaluate"} <= stale
    assert stale == _declaring(work, "finetune.baseline.model")
    assert not any(name.startswith(("finetune_ma2mi", "finetune_scratch", "final_ma2mi", "final_scratch"))
                   for name in stale)


@pytest.mark.slow
def test_baseline_arm_runs_and_joins_the_ablation(shrunk_project, tmp_path):
    work, env = shrunk_project
    copy = tmp_path / "project"
    shutil.copytree(work, copy, symlinks=True)  # the module's project stays as the other tests expect it
    env = {**env, "PREFECT_HOME": str(copy / ".prefect")}
    raw = yaml.safe_load((copy / "params.yaml").read_text())
    raw["finetune"]["baseline"].update(model="resnet18-diff", image_size_px=48, folds=[0, 1, 2])
    raw["final"]["baseline"] = []  # the final STSTNet model goes with the STSTNet arm
    (copy / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    ran = set(re.findall(r"Running stage '([^']+)'", _run(["dvc", "repro"], copy, env).stdout))
    assert {"finetune_baseline@0", "finetune_baseline@1", "finetune_baseline@2", "evaluate"} <= ran
    assert not any(name.startswith(("finetune_ma2mi", "finetune_scratch", "pretrain", "ingest")) for name in ran)
    metrics = json.loads((copy / "results" / "evaluate" / "metrics.json").read_text())
    assert metrics["resnet18-diff"]["n"] == 18 and metrics["resnet18-diff"]["seeds"] == 2
    assert metrics["ma2mi"] == json.loads((work / "results" / "evaluate" / "metrics.json").read_text())["ma2mi"]
    predictions = pd.read_parquet(copy / "results" / "finetune" / "baseline" / "fold0" / "predictions.parquet")
    assert set(predictions["model"]) == {"resnet18-diff"} and set(predictions["seed"]) == {0, 1}
    final = copy / "models" / "final" / "ma2mi.pt"  # only its card's LOSO metrics changed: the weights are restored
    assert final.read_bytes() == (work / "models" / "final" / "ma2mi.pt").read_bytes()


@pytest.mark.slow
def test_a_missing_micro_root_is_named_and_the_samples_are_kept(shrunk_project):
    """A wrong micro.root fails in check_micro, naming the key, before ingest_micro: DVC would otherwise stop with a
    bare "No such file or directory" after removing data/micro."""
    work, env = shrunk_project
    samples = work / "data" / "micro" / "samples.parquet"
    before = samples.read_bytes()
    params_path = work / "params.yaml"
    original = params_path.read_text()
    raw = yaml.safe_load(original)
    raw["micro"].update(dataset="casme2", root=str(work / "no" / "CASME2"))
    params_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    try:
        result = subprocess.run(["dvc", "repro", "ingest_micro"], cwd=work, env=env, capture_output=True, text=True,
                                timeout=600)
    finally:
        params_path.write_text(original)
    assert result.returncode != 0
    assert "micro.root: " in result.stderr and "is not a folder; set micro.root in params.yaml" in result.stderr
    assert samples.read_bytes() == before


@pytest.mark.slow
@pytest.mark.parametrize("module", ["pipeline/ingest/micro.py", "pipeline/data/micro_table.py", "pipeline/sheets.py"])
def test_editing_a_module_stales_exactly_the_stages_that_import_it(shrunk_project, module):
    """A comment added to a module makes `dvc status` list exactly the stages whose command imports it (the static
    import walk of tests/test_stage_deps.py), nothing more: e.g. the fine-tuning folds do not import ingestion."""
    from tests.test_stage_deps import _command_module, imported_files

    work, env = shrunk_project
    stages = yaml.safe_load((work / "dvc.yaml").read_text())["stages"]
    expected = set()
    for name, stage in stages.items():
        if module in imported_files(_command_module(stage)):
            if "foreach" in stage:  # one DVC stage per item
                raw = yaml.safe_load((work / "params.yaml").read_text())
                key = stage["foreach"].strip("${}").split(".")
                items = raw
                for part in key:
                    items = items[part]
                expected |= {f"{name}@{item}" for item in items}
            else:
                expected.add(name)
    path = work / module
    original = path.read_text()
    path.write_text(original + "\n# an edit that changes nothing\n")
    try:
        stale = set(json.loads(_run(["dvc", "status", "--json"], work, env).stdout))
    finally:
        path.write_text(original)
    assert expected, f"no stage imports {module}"
    assert stale == expected


RUN_FOLD = """
from stages.finetune import finetune_flow
from pipeline.orchestration.stage import run_stage
run_stage(finetune_flow, arm="ma2mi", fold=1, params_path="{params}")
"""


@pytest.mark.slow
def test_a_fold_stage_gives_the_same_predictions_whatever_the_number_of_workers(shrunk_project, tmp_path):
    """The fixture's `dvc repro` ran every fold on a local cluster of one worker per core; one single-threaded
    worker gives the same predictions and weights, bit for bit."""
    import sys

    import torch

    work, env = shrunk_project
    raw = yaml.safe_load((work / "params.yaml").read_text())
    raw["finetune"]["workers"] = 1
    raw["paths"].update(finetune_dir=str(tmp_path / "finetune"), checkpoint_dir=str(tmp_path / "checkpoints"))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {k: v for k, v in env.items() if k not in ("DASK_SCHEDULER_ADDRESS", "PREFECT_API_URL")}
    _run([sys.executable, "-c", RUN_FOLD.format(params=params)], work, env)
    ours, theirs = tmp_path / "finetune" / "ma2mi" / "fold1", work / "results" / "finetune" / "ma2mi" / "fold1"
    assert (ours / "predictions.parquet").is_file()
    pd.testing.assert_frame_equal(pd.read_parquet(ours / "predictions.parquet"),
                                  pd.read_parquet(theirs / "predictions.parquet"))
    for seed in raw["finetune"]["recipe"]["seeds"]:
        a, b = (torch.load(d / f"model_seed{seed}.pt", weights_only=False)["model"] for d in (ours, theirs))
        assert all(torch.equal(a[key], b[key]) for key in a), seed
