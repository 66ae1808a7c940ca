"""Audit (issue 19): every server and worker the project starts listens on loopback only.

A Dask worker runs any function sent to it, unauthenticated; the audit of 34752a0 found `make demo`'s workers on
0.0.0.0 and [::], the scheduler's HTTP server on 0.0.0.0:8787 despite ``--no-dashboard``, and a stage's own
cluster's dashboard on 0.0.0.0.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
import sys

import psutil
import pytest

# The command run under pipeline.orchestration.local_prefect: a flow whose task runs on a cluster of its own (as a
# stage does
# without DASK_SCHEDULER_ADDRESS), then a pause while the test lists the sockets.
COMMAND = """
import os
os.environ.pop("DASK_SCHEDULER_ADDRESS", None)  # before dask is imported: a LocalCluster of the flow's own
import time
from pipeline.orchestration.stage import dask_task_runner, flow, stage_task

@stage_task
def ping():
    return os.getpid()

@flow(name="sockets", task_runner=dask_task_runner(1, None, 1))
def sockets():
    ping.submit().result()
    print("cluster up", flush=True)
    time.sleep(5)

sockets()
"""


def _listening(processes: list[psutil.Process]) -> list[tuple[str, str, int]]:
    """(command line, address, port) of every LISTEN socket of ``processes``."""
    found = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            cmdline = " ".join(process.cmdline())[:100]
            for conn in process.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.append((cmdline, conn.laddr.ip, conn.laddr.port))
    return found


def _not_loopback(sockets: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    return [s for s in sockets if not ipaddress.ip_address(s[1].split("%")[0]).is_loopback]


@pytest.mark.slow  # 30-60 s on 2 cores: a Prefect server, two Dask clusters
def test_make_demo_runtime_and_a_stage_cluster_listen_on_loopback_only(tmp_path):
    """`python -m pipeline.orchestration.local_prefect -- <a flow on a LocalCluster>`: its whole process tree,
    loopback only."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "DASK_SCHEDULER_ADDRESS")}
    runtime = subprocess.Popen([sys.executable, "-m", "pipeline.orchestration.local_prefect", "--home",
                                str(tmp_path / "prefect"),
                                "--dask-workers", "1", "--", sys.executable, "-c", COMMAND], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env)
    output = []
    try:
        for line in runtime.stdout:
            output.append(line)
            if "cluster up" in line:
                break
        else:
            pytest.fail("the command did not start its cluster:\n" + "".join(output)[-3000:])
        tree = [psutil.Process(runtime.pid), *psutil.Process(runtime.pid).children(recursive=True)]
        sockets = _listening(tree)
        names = " ".join(s[0] for s in sockets)
        # what must be there: the Prefect server, the shared cluster, and the flow's own cluster (its worker is a
        # multiprocessing child of the command)
        assert "prefect server" in names and "dask_scheduler" in names and "dask_worker" in names, sockets
        assert "multiprocessing" in names, sockets
        assert not _not_loopback(sockets), f"listening beyond loopback: {_not_loopback(sockets)}"
        runtime.stdout.read()
        assert runtime.wait(timeout=120) == 0
    finally:
        if runtime.poll() is None:
            for child in psutil.Process(runtime.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            runtime.kill()
            runtime.wait()


def test_a_stage_s_own_local_cluster_listens_on_loopback_only(monkeypatch):
    """orchestration.dask_task_runner with no address: the LocalCluster prefect-dask builds from its kwargs."""
    import dask
    from distributed import LocalCluster

    from pipeline.orchestration.stage import dask_task_runner

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with dask.config.set({"scheduler-address": None}):
        runner = dask_task_runner(1, None, 1)
    assert runner.address is None  # a local cluster, the case under test
    me = psutil.Process()
    before = set(_listening([me]))
    with LocalCluster(**runner.cluster_kwargs):  # what prefect-dask's DaskTaskRunner instantiates
        sockets = [s for s in _listening([me, *me.children(recursive=True)]) if s not in before]
        assert len({port for *_, port in sockets}) >= 4, sockets  # scheduler comm + HTTP, worker comm, nanny
        assert not _not_loopback(sockets), f"listening beyond loopback: {_not_loopback(sockets)}"
