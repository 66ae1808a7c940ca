"""The whole DAG, shrunk: ``dvc repro`` in a temporary copy of the project, then staleness checks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import shrink

PROJECT_FILES = ["pipeline", "stages", "dvc.yaml"]


def _run(args: list[str], cwd: Path, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def shrunk_project(tmp_path_factory, repo) -> tuple[Path, dict]:
    """A copy of the project with shrunk params, DVC initialised without git, run once with ``dvc repro``."""
    work = tmp_path_factory.mktemp("project")
    for name in PROJECT_FILES:
        source = repo / name
        if source.is_dir():
            shutil.copytree(source, work / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, work / name)
    raw = shrink(yaml.safe_load((repo / "params.yaml").read_text()))
    cache = work / ".cache" / "wheels"
    if (repo / ".cache" / "wheels").is_dir():  # reuse wheels a previous run downloaded; else the stage fetches
        shutil.copytree(repo / ".cache" / "wheels", cache)
    raw["samples"]["wheel_cache_dir"] = str(cache)
    (work / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PREFECT_HOME": str(work / ".prefect"), "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1"}
    _run(["dvc", "init", "--no-scm", "-q"], work, env)
    _run(["dvc", "repro"], work, env)
    return work, env


@pytest.mark.slow
def test_repro_produces_metrics_for_both_inits(shrunk_project):
    work, env = shrunk_project
    metrics = json.loads((work / "results" / "evaluate" / "metrics.json").read_text())
    samples = json.loads((work / "data" / "micro" / "summary.json").read_text())
    assert samples["samples"] == 9 and samples["subjects"] == 3
    assert samples["classes"] == ["negative", "positive", "surprise"]
    assert "## Per subject and class" in (work / "data" / "micro" / "summary.md").read_text()
    for init in ("ma2mi", "scratch"):
        assert set(metrics[init]) >= {"accuracy", "uf1", "uar", "n"}
        assert metrics[init]["n"] == 9  # pooled over every LOSO fold, each sample once
        assert all(0.0 <= metrics[init][k] <= 1.0 for k in ("accuracy", "uf1", "uar"))
    assert metrics["ma2mi_minus_scratch"]["uf1"] == pytest.approx(metrics["ma2mi"]["uf1"] - metrics["scratch"]["uf1"])
    pretrain = json.loads((work / "models" / "pretrain" / "metrics.json").read_text())
    assert pretrain["heldout_recon_over_copy"] > 0
    shown = _run(["dvc", "metrics", "show"], work, env).stdout
    assert "ma2mi.uf1" in shown and "scratch.uar" in shown
    videos = work / "data" / "macro" / "samples" / "videos.parquet"
    assert videos.is_file() and (work / "results" / "evaluate" / "confusion.png").stat().st_size > 0


@pytest.mark.slow
def test_second_repro_runs_nothing(shrunk_project):
    work, env = shrunk_project
    result = _run(["dvc", "repro"], work, env)
    assert "Running stage" not in result.stdout + result.stderr


@pytest.mark.slow
def test_finetune_param_edit_stales_only_finetune_and_evaluate(shrunk_project):
    work, env = shrunk_project
    params_path = work / "params.yaml"
    original = params_path.read_text()
    raw = yaml.safe_load(original)
    raw["finetune"]["lr"] = raw["finetune"]["lr"] * 2
    params_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    try:
        status = json.loads(_run(["dvc", "status", "--json"], work, env).stdout)
    finally:
        params_path.write_text(original)
    stale = set(status)
    assert stale, "editing finetune.lr must make stages stale"
    assert all(name.startswith(("finetune_ma2mi@", "finetune_scratch@")) or name == "evaluate" for name in stale), stale
    assert {f"finetune_{init}@{fold}" for init in ("ma2mi", "scratch") for fold in (0, 1, 2)} <= stale
