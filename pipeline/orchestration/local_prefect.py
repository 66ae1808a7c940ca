"""Run a command against a local Prefect server and Dask cluster (``make demo``'s wrapper).

``python -m pipeline.orchestration.local_prefect -- dvc repro``.

Without ``PREFECT_API_URL`` every stage process starts and stops Prefect's ephemeral API, about 7 s per process on
a 2-core machine (``benchmarks/orchestration_overhead.py``); a running server costs about 1 s. This starts one
``prefect server start`` on 127.0.0.1 (a free port, its SQLite database under ``--home``), runs the command with
``PREFECT_API_URL`` pointing at it, and stops the server afterwards. The server runs only the two services that
record what ran (:data:`SERVER_SERVICES`): the task run recorder, which turns the task runs' events into the task
runs a flow run's page lists (the ingest videos, synthesis items and fold training runs, with their states and
durations), and the event persister; schedulers, triggers and the other services of a deployment server stay off.
The runs stay in the database: ``PREFECT_HOME=<home> prefect server start`` shows them in the UI later. With
``PREFECT_API_URL`` already set, the command simply runs against that server.

Likewise, unless ``DASK_SCHEDULER_ADDRESS`` is set (or ``--dask-workers 0``), it starts one local Dask cluster
(``dask scheduler`` and ``dask worker`` with one thread per worker process, one process per core) and passes its
address in ``DASK_SCHEDULER_ADDRESS``: the stages whose tasks run on Dask (``ingest_macro``, ``finetune_*``) use
it instead of each starting a cluster whose workers import torch again (~9 s per stage on 2 cores). Both are
tied to this process: they die with it, also when it is SIGKILLed.

Every server and worker it starts listens on 127.0.0.1 only: the Prefect server, the Dask scheduler and its HTTP
server, the workers, their nannies and their HTTP servers (a Dask worker runs any function sent to it,
unauthenticated).

The command runs in a process group of its own and dies with this process: SIGTERM, SIGINT and SIGHUP are
forwarded to its group (SIGKILL after :data:`GRACE_S` seconds), and a SIGKILLed runtime takes the command along
(``PR_SET_PDEATHSIG``). A stage started by ``dvc`` in turn dies with ``dvc`` (:func:`die_with_parent`).
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
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import yaml

__all__ = ["DASK_WORKER_CONFIG", "GRACE_S", "LOOPBACK", "SERVER_SERVICES", "die_with_parent", "free_port",
           "local_dask_cluster", "local_server", "run_command", "wait_for_api"]

DEFAULT_HOME = Path(".cache/prefect")
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
LOOPBACK = "127.0.0.1"  # the only interface the servers and workers started here listen on
GRACE_S = 10.0  # seconds a signalled command has to exit before its process group is SIGKILLed
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
SHELLS = frozenset({"sh", "dash", "bash", "zsh"})  # a `sh -c` between dvc and the stage is looked through
# Dask's nannies set MALLOC_TRIM_THRESHOLD_=65536 in their workers (to hand freed memory back to the OS). Any
# explicit value turns glibc's adaptive mmap threshold off: every tensor over 128 KiB is then mmap'ed and unmapped,
# and a fine-tuning run took 14.8 s instead of 8.3 s (system time 5.3 s instead of 0.7 s) on 2 CPU cores. Unset
# (None) here.
DASK_WORKER_CONFIG = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
# The local server's services: on, those that record task runs and events (Prefect 3 records a task run from the
# events its client sends, so without the recorder a flow run shows no task run); off, the rest (schedules,
# automations, late and cancelled runs, work pools: nothing here is deployed or scheduled).
SERVER_SERVICES = {
    "task_run_recorder": True, "event_persister": True,
    "scheduler": False, "late_runs": False, "foreman": False, "cancellation_cleanup": False,
    "pause_expirations": False, "repossessor": False, "triggers": False, "event_logger": False,
    "db_vacuum": False, "cleanup_reconciler": False,
}


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
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


def _prctl() -> Callable[..., int] | None:
    """The C library's ``prctl``; None where it is unavailable (not Linux)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl
    except (OSError, AttributeError):
        return None


def _die_with(parent_pid: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive SIGKILL when its parent dies.

    Linux's ``PR_SET_PDEATHSIG`` works even when the parent is SIGKILLed, so a killed stage leaves no server
    behind. None where prctl is unavailable (not Linux).
    """
    prctl = _prctl()
    if prctl is None:
        return None

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent_pid:  # the parent died before the line above: nothing would signal us
            os._exit(1)

    return arm


def _start_time(pid: int) -> str | None:
    """Field 22 of ``/proc/<pid>/stat`` (start time in clock ticks: tells a reused PID apart); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


_WATCHED: list[int] | None = None  # what die_with_parent watches (it runs once per process)


def die_with_parent(poll_s: float = 0.5) -> list[int]:
    """Make this process (a stage) die when the process that started it dies: ``dvc``, or whoever ran it.

    ``PR_SET_PDEATHSIG`` (SIGKILL when the parent dies) is armed, and a daemon thread checks every ``poll_s``
    seconds that the parent, and the parent's parent where the parent is a shell (``sh -c`` between ``dvc`` and
    the stage), still run; when one is gone it SIGKILLs this process, whose own servers and workers follow it
    (they are tied to it the same way). A SIGTERMed ``dvc`` exits without stopping its stage, which would
    otherwise go on replacing outputs that no ``dvc.lock`` describes. Does nothing where ``/proc`` is missing
    (not Linux).

    Returns:
        The PIDs watched (empty: nothing to watch); a second call returns the first one's.
    """
    global _WATCHED
    parent = os.getppid()
    if _WATCHED is not None or parent <= 1 or not Path("/proc").is_dir():
        return _WATCHED or []
    prctl = _prctl()
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    watched = [parent]
    grandparent = _parent_of(parent)
    if _name(parent) in SHELLS and grandparent and grandparent > 1:
        watched.append(grandparent)
    started = {pid: _start_time(pid) for pid in watched}
    if os.getppid() != parent or None in started.values():  # died before we looked
        os.kill(os.getpid(), signal.SIGKILL)

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            for pid, start in started.items():
                if _start_time(pid) != start:
                    print(f"the process that started this stage (PID {pid}) is gone: stopping", file=sys.stderr,
                          flush=True)
                    os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()
    _WATCHED = watched
    return watched


@contextlib.contextmanager
def local_server(home: Path = DEFAULT_HOME, timeout_s: float = 120,
                 services: dict[str, bool] | None = None) -> Iterator[str]:
    """A ``prefect server start`` on 127.0.0.1 with ``PREFECT_HOME=home`` and the services of :data:`SERVER_SERVICES`.

    Yields its API URL and stops it (SIGTERM, then SIGKILL after 20 s) on exit. Its output goes to
    ``<home>/server.log``. ``services`` (service name -> on) replaces :data:`SERVER_SERVICES` (for
    ``benchmarks/server_services.py``, which measures what the recording services cost).

    Raises:
        RuntimeError, TimeoutError: the server did not come up (see :func:`wait_for_api`; the log names why).
    """
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home.resolve()), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           **{f"PREFECT_SERVER_SERVICES_{name.upper()}_ENABLED": str(on).lower()
              for name, on in (SERVER_SERVICES if services is None else services).items()}}
    env.pop("PREFECT_API_URL", None)
    with open(home / "server.log", "ab") as log:
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                   "--port", str(port)], env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True,
                                  preexec_fn=_die_with(os.getpid()))
    try:
        try:
            wait_for_api(api_url, server, timeout_s)
        except (RuntimeError, TimeoutError) as err:
            raise type(err)(f"{err}; see {home / 'server.log'}") from err
        yield api_url
    finally:
        _stop(server)


def _stop(process: subprocess.Popen, timeout_s: float = 20) -> None:
    """SIGTERM the process group of ``process``, SIGKILL after ``timeout_s``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def local_dask_cluster(n_workers: int, log_path: Path, env: dict[str, str] | None = None,
                       timeout_s: float = 120) -> Iterator[str]:
    """``dask scheduler`` and ``dask worker`` with ``n_workers`` single-threaded processes, all on 127.0.0.1.

    The scheduler's comm and HTTP servers (which run even with ``--no-dashboard``), the workers', the nannies'
    and their HTTP servers listen on :data:`LOOPBACK` only.

    Yields the scheduler's address once every worker has joined; stops both on exit. Their output goes to
    ``log_path``; ``env`` is the workers' environment (e.g. with ``PREFECT_API_URL``). Each is tied to this
    process by ``PR_SET_PDEATHSIG``; the worker processes exit with the ``dask worker`` process that started them.

    Raises:
        TimeoutError: the workers did not join within ``timeout_s`` seconds (the log names why).
    """
    from distributed import Client

    port = free_port()
    address = f"tcp://{LOOPBACK}:{port}"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    config = log_path.with_name("dask-config.yaml")  # DASK_WORKER_CONFIG as YAML, for the dask CLIs
    nested: dict = {}
    for dotted, value in DASK_WORKER_CONFIG.items():
        *parents, leaf = dotted.split(".")
        node = nested
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    config.write_text(yaml.safe_dump(nested))
    env = {**(env or os.environ), "DASK_LOGGING__DISTRIBUTED": "warning", "DASK_CONFIG": str(config.resolve())}
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    http = f"{LOOPBACK}:0"  # each HTTP server: loopback, a free port (Dask's default is 0.0.0.0, the scheduler's 8787)
    commands = [[sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", LOOPBACK, "--port", str(port),
                 "--no-dashboard", "--dashboard-address", http],
                [sys.executable, "-m", "distributed.cli.dask_worker", address, "--host", LOOPBACK, "--nworkers",
                 str(n_workers), "--nthreads", "1", "--no-dashboard", "--dashboard-address", http]]
    processes: list[subprocess.Popen] = []
    try:
        with open(log_path, "ab") as log:
            for command in commands:
                processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                  start_new_session=True, preexec_fn=_die_with(os.getpid())))
        with Client(address, timeout=f"{timeout_s}s") as client:
            try:
                client.wait_for_workers(n_workers, timeout=timeout_s)
            except TimeoutError as err:
                raise TimeoutError(f"{n_workers} Dask workers did not join {address} within {timeout_s:.0f} s; "
                                   f"see {log_path}") from err
        yield address
    finally:
        for process in reversed(processes):
            _stop(process)


def run_command(command: list[str], env: dict[str, str], grace_s: float = GRACE_S) -> int:
    """Run ``command`` in a new session (its own process group) tied to this process; its exit status.

    SIGTERM, SIGINT and SIGHUP received meanwhile are forwarded to the command's whole group; what is still alive
    in it ``grace_s`` seconds later is SIGKILLed. ``PR_SET_PDEATHSIG`` kills the command if this process is
    SIGKILLed.

    Returns:
        The command's exit status; ``128 + n`` if signal ``n`` ended it (as a shell reports it).
    """
    process = subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=_die_with(os.getpid()))
    signalled_at: list[float] = []

    def forward(signum: int, _frame: object) -> None:
        signalled_at.append(time.monotonic())
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)

    def group_alive() -> bool:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return False
        return True

    previous = {signum: signal.signal(signum, forward) for signum in FORWARDED_SIGNALS}
    try:
        while process.poll() is None or (signalled_at and group_alive()):
            if signalled_at and time.monotonic() - signalled_at[0] > grace_s:
                os.killpg(process.pid, signal.SIGKILL)
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.1)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if process.poll() is None:  # this process is failing (an exception): leave nothing running
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return 128 - process.returncode if process.returncode < 0 else process.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME,
                        help=f"PREFECT_HOME of the server (its SQLite database); default {DEFAULT_HOME}")
    parser.add_argument("--dask-workers", type=int, default=-1,
                        help="worker processes of the local Dask cluster (one thread each); default: one per core; "
                             "0: no cluster (each stage starts its own)")
    parser.add_argument("--grace-s", type=float, default=GRACE_S,
                        help="seconds a signalled command has before its process group is SIGKILLed; "
                             f"default {GRACE_S:g}")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (e.g. `python -m pipeline.orchestration.local_prefect -- dvc repro`)")
    with contextlib.ExitStack() as stack:
        env = dict(os.environ)
        if not env.get("PREFECT_API_URL"):
            env["PREFECT_API_URL"] = stack.enter_context(local_server(args.home))
            print(f"Prefect server at {env['PREFECT_API_URL']} (PREFECT_HOME={args.home})", flush=True)
        n_workers = len(os.sched_getaffinity(0)) if args.dask_workers < 0 else args.dask_workers
        if n_workers and not env.get("DASK_SCHEDULER_ADDRESS"):
            env["DASK_SCHEDULER_ADDRESS"] = stack.enter_context(
                local_dask_cluster(n_workers, args.home / "dask.log", env))
            print(f"Dask cluster at {env['DASK_SCHEDULER_ADDRESS']} ({n_workers} single-threaded workers)",
                  flush=True)
        print(f"running: {' '.join(command)}", flush=True)
        return run_command(command, env, args.grace_s)


if __name__ == "__main__":
    sys.exit(main())
