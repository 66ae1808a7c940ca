"""Stage flows show the library's INFO lines (per-epoch numbers) and fail with the error's message."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
import logging
from pipeline.orchestration import flow, run_stage

@flow(name="probe")
def probe(fail: bool):
    logging.getLogger("pipeline.probe").info("epoch 1/1: train loss 0.5")
    if fail:
        raise ValueError("data/x.parquet: missing")

run_stage(probe, fail={fail})
"""


def _run(tmp_path, fail: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    return subprocess.run([sys.executable, "-c", SCRIPT.format(fail=fail)], capture_output=True, text=True,
                          env=env, timeout=120)


def test_library_info_lines_reach_the_stage_output(tmp_path):
    result = _run(tmp_path, fail=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "pipeline.probe - epoch 1/1: train loss 0.5" in result.stdout + result.stderr


def test_a_failing_stage_exits_nonzero_with_the_message(tmp_path):
    result = _run(tmp_path, fail=True)
    assert result.returncode == 1
    assert "stage failed: ValueError: data/x.parquet: missing" in result.stderr
