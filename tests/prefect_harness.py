"""A real Prefect server, work pools and process workers for the scale-out tests and benchmark.

Loopback only (127.0.0.1, a free port), a temporary ``PREFECT_HOME`` (embedded SQLite), every process in its own
session with its output in a log file, and every process killed by PID together with its descendants (a process
worker starts each flow run in a session of its own, so killing the worker's group alone would orphan them).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import psutil

from pipeline.orchestration.local_prefect import free_port, wait_for_api

BIN = Path(sys.executable).parent


def prefect_env(home: Path, api_url: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a Prefect process: this venv first on PATH, ``PREFECT_HOME=home``, the server's API."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", PREFECT_HOME=str(home), DVC_NO_ANALYTICS="1",
               HF_HUB_OFFLINE="1", PREFECT_SERVER_ANALYTICS_ENABLED="false", **extra)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def run(args: list[str], cwd: Path, env: dict, timeout: float = 120) -> str:
    """Run a command to completion; its stdout. Raises AssertionError with its output if it fails."""
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def kill_tree(proc: subprocess.Popen | psutil.Process) -> None:
    """SIGKILL ``proc`` and every descendant (collected first, so none is re-parented and missed); reap it."""
    try:
        root = psutil.Process(proc.pid)
        victims = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        victims = []
    for victim in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            victim.send_signal(signal.SIGKILL)
    psutil.wait_procs(victims, timeout=30)
    if isinstance(proc, subprocess.Popen):
        proc.wait(timeout=30)


class Processes:
    """Long-running processes (server, workers) started in their own sessions, killed by PID on exit."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.procs: dict[str, subprocess.Popen] = {}
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, args: list[str], env: dict, cwd: Path | None = None) -> subprocess.Popen:
        """Start ``args`` with stdout and stderr in ``<logs>/<name>.log``."""
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs[name] = proc
        return proc

    def log(self, name: str, chars: int = 4000) -> str:
        """The tail of process ``name``'s log."""
        return (self.logs / f"{name}.log").read_text(errors="replace")[-chars:]

    def kill(self, name: str) -> None:
        """Kill process ``name`` and its descendants."""
        kill_tree(self.procs.pop(name))

    def close(self) -> None:
        """Kill every process still running, newest first."""
        for name in reversed(list(self.procs)):
            self.kill(name)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def start_server(procs: Processes, home: Path, timeout: float = 120) -> str:
    """Start ``prefect server start`` on 127.0.0.1 (SQLite under ``home``); its API URL once ``/api/health`` answers.

    Raises:
        TimeoutError: the server did not answer within ``timeout`` seconds (the message carries its log).
    """
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    server = procs.start("server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                                    str(port)], prefect_env(home))
    try:
        wait_for_api(api_url, server, timeout)
    except (RuntimeError, TimeoutError) as err:
        raise TimeoutError(f"prefect server on {api_url} did not start ({err}):\n{procs.log('server')}") from err
    return api_url


def start_worker(procs: Processes, name: str, pool: str, env: dict, limit: int | None = 1) -> subprocess.Popen:
    """``prefect worker start --pool <pool>`` (process type) named ``name``, at most ``limit`` runs at once."""
    args = [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process", "--name", name]
    return procs.start(name, args + (["--limit", str(limit)] if limit else []), env)


@contextlib.contextmanager
def api(api_url: str) -> Iterator:
    """A synchronous Prefect client of the server at ``api_url`` (settings changed for this block only)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        yield client


def wait_for_run(api_url: str, flow_run_id, timeout: float, poll_s: float = 2.0):
    """Poll a flow run until it reaches a final state; return it.

    Raises:
        TimeoutError: still not final after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    with api(api_url) as client:
        while True:
            flow_run = client.read_flow_run(flow_run_id)
            if flow_run.state and flow_run.state.is_final():
                return flow_run
            if time.monotonic() > deadline:
                raise TimeoutError(f"flow run {flow_run.name} still {flow_run.state_name} after {timeout:.0f} s")
            time.sleep(poll_s)
