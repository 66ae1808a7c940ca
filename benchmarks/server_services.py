"""What the local Prefect server's recording services cost (issue 23): a stage-like flow against a server with
the task run recorder and event persister on (``pipeline.orchestration.local_prefect.SERVER_SERVICES``) and with every
service
off (what ``prefect server start --no-services`` ran before).

Usage:
    python -m benchmarks.server_services [--repeats 5] [--tasks 16]

For each setting, one server (127.0.0.1, temporary ``PREFECT_HOME``) and one local Dask cluster of 2 single-thread
workers (as ``make demo`` has); then ``--repeats`` fresh processes, each running one flow of ``--tasks`` tasks of
0.5 s on that cluster (a fold stage has 10 training runs, an ingest stage one task per video). Printed, per
setting: the median wall time of a process, the server's CPU seconds per flow (its process tree, by psutil), and
the task runs and events the database holds at the end. A markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx
import psutil

from pipeline.orchestration.local_prefect import SERVER_SERVICES, local_dask_cluster, local_server

FLOW = textwrap.dedent('''
    import sys, time
    from prefect import flow
    from pipeline.orchestration.stage import dask_task_runner, stage_task

    @stage_task
    def work(x: int) -> int:
        time.sleep(0.5)
        return x

    n = int(sys.argv[1])

    @flow(name="services-probe", task_runner=dask_task_runner(2, None, n))
    def probe() -> int:
        return sum(f.result() for f in [work.with_options(task_run_name=f"work {x}").submit(x) for x in range(n)])

    probe()
''')


def _server_cpu_s(home: Path) -> float:
    """CPU seconds of the `prefect server` processes whose PREFECT_HOME is ``home``."""
    total = 0.0
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "server" in (proc.info["cmdline"] or []) and proc.environ().get("PREFECT_HOME") == str(home):
                times = proc.cpu_times()
                total += times.user + times.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def measure(services: dict[str, bool], repeats: int, tasks: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        script = Path(tmp) / "flow.py"
        script.write_text(FLOW)
        with local_server(home, services=services) as api_url:
            env = {**os.environ, "PREFECT_API_URL": api_url, "PYTHONPATH": str(Path(__file__).parents[1])}
            with local_dask_cluster(2, Path(tmp) / "dask.log", env) as address:
                env["DASK_SCHEDULER_ADDRESS"] = address
                subprocess.run([sys.executable, str(script), "2"], env=env, check=True, capture_output=True)  # warm
                cpu_before, walls = _server_cpu_s(home.resolve()), []
                for _ in range(repeats):
                    start = time.perf_counter()
                    subprocess.run([sys.executable, str(script), str(tasks)], env=env, check=True,
                                   capture_output=True)
                    walls.append(time.perf_counter() - start)
                time.sleep(5)  # let the recorder finish the last flow's events
                cpu = _server_cpu_s(home.resolve()) - cpu_before
                with httpx.Client(base_url=api_url, timeout=30) as client:
                    task_runs = client.post("/task_runs/count", json={}).json()
                    events = client.post("/events/filter", json={"limit": 1}).json()["total"]
    return {"wall_s": statistics.median(walls), "server_cpu_s_per_flow": cpu / repeats, "task_runs": task_runs,
            "events": events}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=16)
    args = parser.parse_args(argv)
    rows = {"every service off (before)": dict.fromkeys(SERVER_SERVICES, False),
            "recorder + persister (now)": SERVER_SERVICES}
    print(f"{args.repeats} flows of {args.tasks} tasks of 0.5 s on 2 Dask workers; "
          f"{os.cpu_count()} CPUs\n")
    print("| services | median wall s per flow process | server CPU s per flow | task runs recorded | events |")
    print("|---|---|---|---|---|")
    for name, services in rows.items():
        result = measure(services, args.repeats, args.tasks)
        print(f"| {name} | {result['wall_s']:.2f} | {result['server_cpu_s_per_flow']:.2f} | "
              f"{result['task_runs']} | {result['events']} |", flush=True)
        print(json.dumps({name: result}), file=sys.stderr)


if __name__ == "__main__":
    main()
