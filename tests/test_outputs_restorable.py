"""After a killed or failed stage the previous results come back with ``dvc checkout``; leftovers are never data.

DVC removes a stage's outputs before it runs it. Every output is therefore in DVC's cache (no ``cache: false``), so
``dvc checkout`` restores what ``dvc.lock`` describes; and what :mod:`pipeline.io` leaves beside an output it
replaces is in ``.dvcignore``, so it changes no dependency's hash.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _outputs(body: dict):
    for kind in ("outs", "metrics", "plots"):
        for entry in body.get(kind, []):
            yield kind, entry


def test_every_stage_output_is_cached():
    """A ``cache: false`` output is not restorable: DVC deletes it before the stage runs, git ignores it."""
    uncached = []
    for name, stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items():
        body = stage.get("do", stage)
        for kind, entry in _outputs(body):
            if isinstance(entry, dict):
                (path, options), = entry.items()
                if options and options.get("cache") is False:
                    uncached.append(f"{name}.{kind}: {path}")
    assert not uncached, f"outputs that `dvc checkout` cannot restore: {uncached}"


def _run(args: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check:
        assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_a_failed_evaluate_is_restored_by_dvc_checkout(shrunk_project, tmp_path):
    """Audit case: a killed `evaluate` left results/evaluate/ empty and `dvc checkout` restored nothing."""
    work, env = shrunk_project
    copy = tmp_path / "project"
    shutil.copytree(work, copy, symlinks=True)
    env = {**env, "PREFECT_HOME": str(copy / ".prefect")}
    evaluate = copy / "results" / "evaluate"
    before = {path.relative_to(evaluate): path.read_bytes() for path in evaluate.rglob("*") if path.is_file()}
    assert Path("metrics.json") in before
    (copy / "results" / "finetune" / "ma2mi" / "fold0" / "predictions.parquet").write_bytes(b"not parquet")
    failed = _run(["dvc", "repro", "--single-item", "evaluate"], copy, env, check=False)
    assert failed.returncode != 0, failed.stdout[-2000:]
    assert not (evaluate / "metrics.json").exists()  # DVC removed it before the stage ran
    _run(["dvc", "checkout", "evaluate"], copy, env)
    after = {path.relative_to(evaluate): path.read_bytes() for path in evaluate.rglob("*") if path.is_file()}
    assert after == before
    metrics = json.loads((evaluate / "metrics.json").read_text())
    assert "ma2mi" in metrics


@pytest.mark.slow
def test_leftovers_of_a_killed_writer_stale_nothing(shrunk_project):
    """Audit case: a `.partial-*` folder left by a killed ingest_macro made pretrain (which depends on the whole
    ${paths.macro_dir}) and everything after it stale, also after a run-cache restore."""
    work, env = shrunk_project
    macro = work / "data" / "macro"
    leftovers = [macro / ".demo.partial-abc123", macro / ".demo.old-def456"]
    try:
        for folder in leftovers:
            folder.mkdir()
            (folder / "frames-00000.parquet").write_bytes(b"half written")
        (macro / ".demo.lock").touch()
        (macro / ".videos.parquet.x1y2.tmp").write_bytes(b"half written")
        stale = json.loads(_run(["dvc", "status", "--json"], work, env).stdout)
        assert stale == {}, stale
    finally:
        for folder in leftovers:
            shutil.rmtree(folder, ignore_errors=True)
        (macro / ".demo.lock").unlink(missing_ok=True)
        (macro / ".videos.parquet.x1y2.tmp").unlink(missing_ok=True)
