"""Stage flows show the library's INFO lines (per-epoch numbers) and fail with the error's message; a command can
run against a local Prefect server started for it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import pytest

from tests.conftest import sigkill_leaves_none_behind

SCRIPT = """
{first}
import logging
from pipeline.orchestration.stage import flow, run_stage

@flow(name="probe")
def probe(fail: bool):
    logging.getLogger("pipeline.evaluate.probe").info("epoch 1/1: train loss 0.5")
    if fail:
        raise ValueError("data/x.parquet: missing")

run_stage(probe, fail={fail})
"""


def _run(tmp_path, fail: bool, first: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    for name in ("PREFECT_API_URL", "PREFECT_LOGGING_EXTRA_LOGGERS"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-c", SCRIPT.format(fail=fail, first=first)], capture_output=True,
                          text=True, env=env, timeout=120)


@pytest.mark.parametrize("first", ["", "import prefect.artifacts  # Prefect imported before the project"])
def test_library_info_lines_reach_the_stage_output(tmp_path, first):
    """Whatever the import order, the library's INFO lines reach the stage's output exactly once."""
    result = _run(tmp_path, fail=False, first=first)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (result.stdout + result.stderr).count("pipeline.evaluate.probe - epoch 1/1: train loss 0.5") == 1


def test_a_failing_stage_exits_nonzero_with_the_message(tmp_path):
    result = _run(tmp_path, fail=True)
    assert result.returncode == 1
    assert "stage failed: ValueError: data/x.parquet: missing" in result.stderr


CHILD = """
import os, sys
from distributed import Client
from pipeline.orchestration.stage import flow

@flow(name="probe")
def probe():
    return os.environ["PREFECT_API_URL"]

print("api:", probe())
with Client() as client:  # Dask's scheduler-address setting, from DASK_SCHEDULER_ADDRESS
    print("dask:", client.scheduler.address, len(client.scheduler_info()["workers"]))
    print("malloc:", client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_", "unset")))
sys.exit(3)
"""


def _env_without_servers() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "DASK_SCHEDULER_ADDRESS")}


def test_a_command_runs_against_a_local_server_and_cluster_that_are_stopped_afterwards(tmp_path):
    """`make demo` runs `dvc repro` this way: one Prefect server instead of an ephemeral API per stage process,
    one Dask cluster (glibc's malloc left alone) instead of one per stage."""
    import socket

    import httpx

    home = tmp_path / "prefect"
    result = subprocess.run([sys.executable, "-m", "pipeline.orchestration.local_prefect", "--home", str(home),
                             "--dask-workers",
                             "2", "--", sys.executable, "-c", CHILD], capture_output=True, text=True,
                            env=_env_without_servers(), timeout=300)
    assert result.returncode == 3, result.stdout[-2000:] + result.stderr[-2000:]  # the command's exit code
    api_url = result.stdout.split("api: ")[1].split()[0]
    assert api_url.startswith("http://127.0.0.1:") and api_url.endswith("/api")
    address, n_workers = result.stdout.split("dask: ")[1].split()[:2]
    assert address.startswith("tcp://127.0.0.1:") and n_workers == "2"
    assert "65536" not in result.stdout.split("malloc: ")[1].splitlines()[0]
    assert (home / "prefect.db").is_file()  # the runs are kept in the server's database
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{api_url}/health", timeout=2)  # the server is gone
    host, port = address.removeprefix("tcp://").split(":")
    with pytest.raises(ConnectionRefusedError), socket.create_connection((host, int(port)), timeout=2):
        pass  # the scheduler is gone


def test_a_killed_local_runtime_leaves_no_server_or_worker_behind(tmp_path):
    """SIGKILL of `python -m pipeline.orchestration.local_prefect` takes its Prefect server and Dask processes along."""
    import psutil

    runtime = subprocess.Popen([sys.executable, "-m", "pipeline.orchestration.local_prefect", "--home",
                                str(tmp_path / "prefect"),
                                "--dask-workers", "1", "--", "sleep", "600"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=_env_without_servers())
    command: list[psutil.Process] = []
    try:
        for line in runtime.stdout:
            if line.startswith("running:"):
                break
        children = psutil.Process(runtime.pid).children(recursive=True)
        command = [p for p in children if p.name() == "sleep"]  # the caller's command: not tied to the runtime
        helpers = [p for p in children if p not in command]
        names = " ".join(" ".join(_cmdline(p)) for p in helpers)
        assert "prefect" in names and "dask_scheduler" in names and "dask_worker" in names, names
        sigkill_leaves_none_behind(runtime, helpers, "runtime")
    finally:
        if runtime.poll() is None:
            for child in psutil.Process(runtime.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            runtime.kill()
        for process in command:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


def _cmdline(process) -> list[str]:
    """A process's command line, [] if it ended meanwhile (the server's and Dask's short-lived helpers do: the one
    listed and gone before its line was read failed this test once)."""
    import psutil

    try:
        return process.cmdline()
    except psutil.NoSuchProcess:
        return []


SLEEPER = """
import time
from pipeline.orchestration.stage import flow, run_stage

@flow(name="sleeper")
def sleeper():
    print("flow started", flush=True)
    time.sleep(600)

run_stage(sleeper)
"""


def test_a_killed_stage_leaves_no_process_behind(tmp_path):
    """SIGKILL of a stage process (what a killed `dvc repro` or an OOM kill does) takes its Prefect server along."""

    import psutil

    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    stage = subprocess.Popen([sys.executable, "-c", SLEEPER], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env=env)
    try:
        for line in stage.stdout:
            if "flow started" in line:
                break
        children = psutil.Process(stage.pid).children(recursive=True)
        assert children, "the stage runs its flow against a server of its own"
        sigkill_leaves_none_behind(stage, children, "stage", timeout_s=30)
    finally:
        if stage.poll() is None:
            stage.kill()
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
