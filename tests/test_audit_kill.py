"""Audit (issue 19): a killed parent takes its work along, by PID.

On 34752a0, SIGTERM to `python -m pipeline.orchestration.local_prefect` (what `timeout` and a CI cancel send) left
`dvc repro`
and its stage running against the dead API, and SIGTERM to `dvc` left the stage running until it finished, still
replacing outputs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]

# A command tree: a shell with two children, one of which ignores the signals (only the SIGKILL after the grace
# takes it; dash execs the subshell's sleep)
TREE = "sleep 600 & (trap '' TERM INT HUP; sleep 600) & echo tree up; wait"
GRACE_S = 2


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "DASK_SCHEDULER_ADDRESS")}
    return {**env, "PYTHONPATH": str(REPO), "DVC_NO_ANALYTICS": "1", **extra}


def _kill_all(processes: list[psutil.Process]) -> None:
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def _start_runtime(tmp_path: Path) -> tuple[subprocess.Popen, list[psutil.Process]]:
    """local_prefect running TREE with no server or cluster of its own (a PREFECT_API_URL given, 0 workers)."""
    runtime = subprocess.Popen([sys.executable, "-m", "pipeline.orchestration.local_prefect", "--home", str(tmp_path),
                                "--dask-workers", "0", "--grace-s", str(GRACE_S), "--", "sh", "-c", TREE],
                               stdout=subprocess.PIPE, text=True, env=_env(PREFECT_API_URL="http://127.0.0.1:9/api"),
                               cwd=REPO)
    for line in runtime.stdout:
        if "tree up" in line:
            break
    deadline = time.monotonic() + 10
    while len(tree := psutil.Process(runtime.pid).children(recursive=True)) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)  # sh, its sleep, the subshell's sleep
    if len(tree) < 3:
        _kill_all([*tree, psutil.Process(runtime.pid)])
        pytest.fail(f"the command tree did not start: {[p.cmdline() for p in tree]}")
    return runtime, tree


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signalled_local_runtime_takes_its_whole_command_tree_along(tmp_path, signum):
    """SIGTERM/SIGINT/SIGHUP to local_prefect: forwarded to the command's group, SIGKILL after the grace."""
    runtime, tree = _start_runtime(tmp_path)
    try:
        runtime.send_signal(signum)
        _, alive = psutil.wait_procs(tree, timeout=GRACE_S + 5)
        assert not alive, f"still running after local_prefect got {signum!r}: {[p.cmdline() for p in alive]}"
        assert runtime.wait(timeout=10) == 128 + signum  # the shell's status, as a shell reports it
    finally:
        _kill_all([*tree, psutil.Process(runtime.pid)] if runtime.poll() is None else tree)


def test_a_sigkilled_local_runtime_takes_its_command_along(tmp_path):
    """PR_SET_PDEATHSIG: the command dies with a SIGKILLed local_prefect."""
    runtime, tree = _start_runtime(tmp_path)
    try:
        (command,) = psutil.Process(runtime.pid).children()
        runtime.kill()
        runtime.wait(10)
        _, alive = psutil.wait_procs([command], timeout=5)
        assert not alive, f"the command outlived a SIGKILLed local_prefect: {command.cmdline()}"
    finally:
        _kill_all(tree)


STAGE = """
import os, time
from pipeline.orchestration.stage import run_stage

def sleeper():
    with open("stage.pid", "w") as f:
        f.write(str(os.getpid()))
    time.sleep(600)

run_stage(sleeper)
"""


@pytest.mark.parametrize("cmd", ["python stage.py", "python stage.py; true"], ids=["direct", "through-sh"])
def test_a_sigtermed_dvc_takes_its_stage_along(tmp_path, cmd):
    """SIGTERM to `dvc repro` (DVC exits and does not stop its stage): the stage process dies within seconds."""
    (tmp_path / "stage.py").write_text(STAGE)
    (tmp_path / "dvc.yaml").write_text(f"stages:\n  sleeper:\n    cmd: {cmd}\n    deps: [stage.py]\n")
    env = _env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               PREFECT_API_URL="http://127.0.0.1:9/api")  # set: run_stage starts no server (the stage never calls it)
    for args in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(args, cwd=tmp_path, env=env, check=True, capture_output=True)
    dvc = subprocess.Popen(["dvc", "repro"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, start_new_session=True)
    stage = None
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "stage.pid").is_file() or not (tmp_path / "stage.pid").read_text():
            assert time.monotonic() < deadline and dvc.poll() is None, dvc.stdout.read() if dvc.poll() else "slow"
            time.sleep(0.1)
        stage = psutil.Process(int((tmp_path / "stage.pid").read_text()))
        chain = {p.pid for p in stage.parents()}
        assert dvc.pid in chain  # the stage is dvc's (grand)child
        dvc.send_signal(signal.SIGTERM)
        dvc.wait(30)
        _, alive = psutil.wait_procs([stage], timeout=5)
        assert not alive, f"the stage outlived a SIGTERMed dvc: {stage.cmdline()}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(dvc.pid, signal.SIGKILL)
        dvc.wait(30)
        if stage is not None:
            _kill_all([stage])
