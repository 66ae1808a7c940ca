"""Prefect's per-stage overhead (ephemeral API vs a server) and fold throughput on 1 vs 2 workers, as markdown.

Usage:
    python -m benchmarks.orchestration_overhead [--repeats 7] [--demo-wall-s 551] [--workers 1 2]
        [--skip-throughput]

1. Flow start-up per process: a fresh Python process imports the stages' Prefect glue (``pipeline.orchestration.stage``)
   and runs a trivial flow, with Prefect's ephemeral API (no ``PREFECT_API_URL``: what each DVC stage pays offline)
   and against a running server; median of ``--repeats`` runs each (after one warm-up), minus the median of the
   same process without the flow (imports only). Multiplied by the number of DVC stages of the real params.yaml
   and divided by the demo's wall time (``--demo-wall-s``, from docs/benchmarks.md, "The demo's time").
2. Fold throughput: the shrunk test config (tests/conftest.py) in a temporary git repo with a local-folder DVC
   remote, a real server (127.0.0.1, temporary PREFECT_HOME), ``prefect deploy --all``, the coordinator on a
   ``cpu`` worker and 1, then 2, ``gpu`` process workers (``--limit 1``); the dispatch phase is timed from the
   server's records of the stage runs (first start to last end). Each measurement after the first commits a new
   ``finetune.lr``, so that every fold stage is stale and nothing else is.

Tables go to stdout, progress to the log. Needs the test extras (it reuses tests/conftest.py and
tests/prefect_harness.py).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from tests.conftest import GIT_IDENTITY, REPO, shrunk_git_project
from tests.prefect_harness import Processes, api, prefect_env, run, start_server, start_worker, wait_for_run

log = logging.getLogger("orchestration_overhead")

IMPORT_ONLY = "import pipeline.orchestration.stage"
TRIVIAL_FLOW = """
from pipeline.orchestration.stage import flow

@flow(name="noop")
def noop() -> int:
    return 1

noop()
"""


def _median_wall_s(code: str, env: dict, repeats: int) -> float:
    """Median wall time of ``python -c code`` in fresh processes (one warm-up run first, not counted)."""
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True, capture_output=True, timeout=300)
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _demo_stage_count() -> int:
    """Number of DVC stages of the project's dvc.yaml with the real params.yaml (read in a temporary copy)."""
    from dvc.repo import Repo

    with tempfile.TemporaryDirectory() as tmp:
        for name in ("dvc.yaml", "params.yaml"):
            shutil.copy(REPO / name, Path(tmp) / name)
        subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=tmp, check=True, timeout=120)
        with contextlib.chdir(tmp), Repo(".") as project:
            return len(project.index.stages)


def flow_startup(repeats: int, demo_wall_s: float) -> str:
    """Markdown table: seconds per process for imports only, a flow on the ephemeral API, a flow on a server."""
    with tempfile.TemporaryDirectory() as tmp, Processes(Path(tmp) / "logs") as procs:
        home = Path(tmp) / "prefect"
        api_url = start_server(procs, home)
        local = prefect_env(Path(tmp) / "ephemeral")  # its own SQLite database, not the server's
        rows = {"imports only (`import pipeline.orchestration.stage`)": _median_wall_s(IMPORT_ONLY, local, repeats)}
        log.info("imports only: %.2f s", rows[next(iter(rows))])
        rows["trivial flow, ephemeral API (no `PREFECT_API_URL`)"] = _median_wall_s(TRIVIAL_FLOW, local, repeats)
        rows["trivial flow, running server (`PREFECT_API_URL`)"] = _median_wall_s(
            TRIVIAL_FLOW, prefect_env(home, api_url), repeats)
    stages = _demo_stage_count()
    base = rows[next(iter(rows))]
    lines = [(f"Flow start-up per process (median of {repeats}; {stages} DVC stages in the demo, demo wall time "
              f"{demo_wall_s:.0f} s):"), "",
             "| process | wall s | Prefect overhead s | x stages, s | share of the demo's wall time |",
             "|---|---|---|---|---|"]
    for name, seconds in rows.items():
        overhead = seconds - base
        cells = [f"{overhead:.2f}", f"{overhead * stages:.0f}", f"{overhead * stages / demo_wall_s:.1%}"]
        lines.append(f"| {name} | {seconds:.2f} | {' | '.join(cells if seconds > base else ['–'] * 3)} |")
    return "\n".join(lines)


def _stage_runs(api_url: str, revision: str) -> list:
    with api(api_url) as client:
        return [r for r in client.read_flow_runs(limit=200) if r.name.endswith(f" @ {revision[:8]}")]


def fold_throughput(worker_counts: list[int]) -> str:
    """Markdown table: folds per minute of the coordinator's dispatch phase with each number of gpu workers."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp, Processes(Path(tmp) / "logs") as procs:
        base = Path(tmp)
        project, remote, home = base / "project", base / "remote", base / "prefect"
        project.mkdir()
        env = {**shrunk_git_project(REPO, project), **prefect_env(home), **GIT_IDENTITY}
        shutil.copy(REPO / "prefect.yaml", project)
        run(["dvc", "remote", "add", "-d", "shared", str(remote)], project, env)
        run(["git", "add", "-A"], project, env)
        run(["git", "commit", "-q", "-m", "deployments, remote"], project, env)
        api_url = start_server(procs, home)
        env = {**env, **prefect_env(home, api_url)}
        for pool in ("cpu", "gpu"):
            run(["prefect", "work-pool", "create", pool, "--type", "process"], project, env)
        run(["prefect", "--no-prompt", "deploy", "--all"], project, env, timeout=300)
        worker_env = {**env, "MA2MI_PROJECT_DIR": str(project), "PREFECT_WORKER_QUERY_SECONDS": "1"}
        start_worker(procs, "cpu-0", "cpu", worker_env, limit=None)
        for i, count in enumerate(worker_counts):
            gpu_workers = sorted(name for name in procs.procs if name.startswith("gpu-"))
            for name in gpu_workers[count:]:
                procs.kill(name)
            for index in range(len(gpu_workers), count):
                start_worker(procs, f"gpu-{index}", "gpu", worker_env)
            if i:  # every fold stage stale again, nothing else
                raw = yaml.safe_load((project / "params.yaml").read_text())
                raw["finetune"]["lr"] *= 1.5
                (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
                run(["git", "commit", "-q", "-am", f"lr {raw['finetune']['lr']}"], project, env)
            revision = run(["git", "rev-parse", "HEAD"], project, env).strip()
            from prefect.deployments import run_deployment

            start = time.perf_counter()
            with api(api_url):
                coordinator = run_deployment("ma2mi-coordinator/cpu", parameters={"poll_interval_s": 1}, timeout=0)
            finished = wait_for_run(api_url, coordinator.id, timeout=1800)
            total_s = time.perf_counter() - start
            if not finished.state.is_completed():
                raise RuntimeError(f"coordinator ended {finished.state_name}: {finished.state.message}\n"
                                   f"{procs.log('cpu-0')}")
            runs = _stage_runs(api_url, revision)
            wall_s = (max(r.end_time for r in runs) - min(r.start_time for r in runs)).total_seconds()
            per_fold = statistics.mean(r.total_run_time.total_seconds() for r in runs)
            log.info("%d worker(s): %d folds in %.1f s (coordinator %.1f s)", count, len(runs), wall_s, total_s)
            rows.append(f"| {count} | {len(runs)} | {wall_s:.0f} | {len(runs) / wall_s * 60:.1f} | {per_fold:.1f} | "
                        f"{total_s:.0f} |")
    title = ("Fold throughput, shrunk config (coordinator's dispatch phase; one fold = one `ma2mi-stage` run: clone, "
             "`dvc repro --pull -s`, `dvc push --run-cache`):")
    return "\n".join([title, "",
                      ("| gpu workers | fold stages | dispatch wall s | folds / min | mean s per fold run | "
                       "coordinator wall s |"), "|---|---|---|---|---|---|", *rows, "",
                      "(The first coordinator run also reproduced the upstream stages.)"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--demo-wall-s", type=float, default=551.0,
                        help="wall time of a demo dvc repro to compare with (551 s: revision e20d5a7, ephemeral API "
                             "per stage)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"Machine: {os.cpu_count()} CPU cores ({cpu}), no GPU used; Python {platform.python_version()}\n")
    print(flow_startup(args.repeats, args.demo_wall_s) + "\n")
    if not args.skip_throughput:
        print(fold_throughput(args.workers))


if __name__ == "__main__":
    main()
