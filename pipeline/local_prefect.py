"""Run a command against a local Prefect server started for it: ``python -m pipeline.local_prefect -- dvc repro``.

Without ``PREFECT_API_URL`` every stage process starts and stops Prefect's ephemeral API, about 7 s per process on
a 2-core machine (``benchmarks/orchestration_overhead.py``); a running server costs about 1 s. This starts one
``prefect server start --no-services`` on 127.0.0.1 (a free port, its SQLite database under ``--home``), runs the
command with ``PREFECT_API_URL`` pointing at it, and stops the server afterwards. The flow runs stay in the
database: ``PREFECT_HOME=<home> prefect server start`` shows them in the UI later. With ``PREFECT_API_URL``
already set, the command simply runs against that server.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

__all__ = ["free_port", "local_server", "wait_for_api"]

DEFAULT_HOME = Path(".cache/prefect")
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_api(api_url: str, server: subprocess.Popen, timeout_s: float) -> None:
    """Wait until ``<api_url>/health`` answers 200.

    Raises:
        RuntimeError: the server process exited first.
        TimeoutError: no answer within ``timeout_s`` seconds.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server for {api_url} exited with code {server.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.25)
    raise TimeoutError(f"prefect server on {api_url} did not answer within {timeout_s:.0f} s")


def _die_with(parent_pid: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive SIGKILL when its parent dies.

    Linux's ``PR_SET_PDEATHSIG`` works even when the parent is SIGKILLed, so a killed stage leaves no server
    behind. None where prctl is unavailable (not Linux).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent_pid:  # the parent died before the line above: nothing would signal us
            os._exit(1)

    return arm


@contextlib.contextmanager
def local_server(home: Path = DEFAULT_HOME, timeout_s: float = 120) -> Iterator[str]:
    """A ``prefect server start --no-services`` on 127.0.0.1 with ``PREFECT_HOME=home``.

    Yields its API URL and stops it (SIGTERM, then SIGKILL after 20 s) on exit. Its output goes to
    ``<home>/server.log``.

    Raises:
        RuntimeError, TimeoutError: the server did not come up (see :func:`wait_for_api`; the log names why).
    """
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home.resolve()), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    with open(home / "server.log", "ab") as log:
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                   "--port", str(port), "--no-services"], env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True,
                                  preexec_fn=_die_with(os.getpid()))
    try:
        try:
            wait_for_api(api_url, server, timeout_s)
        except (RuntimeError, TimeoutError) as err:
            raise type(err)(f"{err}; see {home / 'server.log'}") from err
        yield api_url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME,
                        help=f"PREFECT_HOME of the server (its SQLite database); default {DEFAULT_HOME}")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (e.g. `python -m pipeline.local_prefect -- dvc repro`)")
    if os.environ.get("PREFECT_API_URL"):
        return subprocess.call(command)
    with local_server(args.home) as api_url:
        print(f"Prefect server at {api_url} (PREFECT_HOME={args.home}); running: {' '.join(command)}", flush=True)
        return subprocess.call(command, env={**os.environ, "PREFECT_API_URL": api_url})


if __name__ == "__main__":
    sys.exit(main())
