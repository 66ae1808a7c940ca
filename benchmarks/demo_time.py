"""Where a finished ``make demo`` spent its time, from the Prefect database it leaves behind, as markdown.

Usage:
    python -m benchmarks.demo_time [--home .cache/prefect] [--workers 2]

Reads the flow runs of the last ``make demo`` (``pipeline.orchestration.local_prefect`` keeps them in
``<home>/prefect.db``),
from its last ``samples`` flow to the ``report`` flow after it:

1. Per kind of stage (flow name; fold stages by arm): how many ran, the time inside their flows, and the time
   between the end of the previous flow and the start of theirs (process start-up, imports, DVC's hashing and
   lock updates: everything outside a flow).
2. The training runs of the fold stages (the Prefect task runs that log ``N training clips``), grouped by arm and
   training-set size: their count and durations (first to last log line of the run: from the end of its first
   epoch to its result, so a run's input loading and first epoch are left out: the floor below is a lower bound).
3. A floor for this demo's params on this machine: the other stages' flow time as measured, plus the fold
   stages' training runs as if ``--workers`` ran them back to back with no gap (sum of run durations / workers),
   plus nothing between stages. A run's duration is taken as measured while another ran beside it.

Run it in the project folder after ``make demo`` (or pass ``--home`` of a copy). Only reads the database.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sqlite3
import statistics
from datetime import datetime
from pathlib import Path

RUN_RESULT = re.compile(r", (\d+) training clips: accuracy")


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def stage_rows(db: sqlite3.Connection) -> list[dict]:
    """The flow runs in start order: kind (flow name, with the arm for fold stages), start, end, id."""
    rows = []
    query = ("SELECT fr.id, f.name, fr.parameters, fr.start_time, fr.end_time FROM flow_run fr "
             "JOIN flow f ON f.id = fr.flow_id WHERE fr.start_time IS NOT NULL AND fr.end_time IS NOT NULL "
             "ORDER BY fr.start_time")
    for run_id, name, parameters, start, end in db.execute(query):
        arm = json.loads(parameters or "{}").get("arm")
        rows.append({"id": run_id, "kind": f"{name} ({arm})" if arm else name, "start": _time(start),
                     "end": _time(end)})
    return rows


def training_runs(db: sqlite3.Connection, kinds: dict[str, str]) -> dict[tuple[str, int], list[float]]:
    """Durations (s) of the fold stages' training runs by (stage kind, training clips)."""
    spans: dict[str, list] = {}
    for flow_run_id, task_run_id, message, stamp in db.execute(
            "SELECT flow_run_id, task_run_id, message, timestamp FROM log WHERE task_run_id IS NOT NULL"):
        span = spans.setdefault(task_run_id, [flow_run_id, None, None, None])
        stamp = _time(stamp)
        span[1] = stamp if span[1] is None else min(span[1], stamp)
        span[2] = stamp if span[2] is None else max(span[2], stamp)
        if match := RUN_RESULT.search(message):
            span[3] = int(match.group(1))
    runs = collections.defaultdict(list)
    for flow_run_id, first, last, clips in spans.values():
        if clips is not None and flow_run_id in kinds:
            runs[(kinds[flow_run_id], clips)].append((last - first).total_seconds())
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path(".cache/prefect"), help="PREFECT_HOME of the run")
    parser.add_argument("--workers", type=int, default=2, help="training runs at once, for the floor")
    args = parser.parse_args(argv)
    path = args.home / "prefect.db"
    if not path.is_file():
        raise SystemExit(f"no Prefect database at {path}: run `make demo` first or pass --home")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    rows = stage_rows(db)
    if not rows:
        raise SystemExit(f"{path} holds no finished flow run")
    # the last demo only: from the last `samples` flow to the `report` flow after it (the database may also hold
    # earlier runs, and stages rerun by hand later)
    first = max((i for i, row in enumerate(rows) if row["kind"] == "samples"), default=0)
    last = next((i for i in range(first, len(rows)) if rows[i]["kind"] == "report"), len(rows) - 1)
    rows = rows[first:last + 1]
    groups: dict[str, dict] = {}
    previous_end = None
    for row in rows:
        group = groups.setdefault(row["kind"], {"n": 0, "flow": 0.0, "gap": 0.0})
        group["n"] += 1
        group["flow"] += (row["end"] - row["start"]).total_seconds()
        group["gap"] += (row["start"] - previous_end).total_seconds() if previous_end else 0.0
        previous_end = row["end"]
    wall = (rows[-1]["end"] - rows[0]["start"]).total_seconds()
    print(f"## `make demo`: {len(rows)} flows, {wall:.0f} s from the first flow's start to the last one's end\n")
    print("| stage kind | flows | inside flows (s) | between flows, before them (s) |")
    print("|---|---:|---:|---:|")
    for kind, group in groups.items():
        print(f"| {kind} | {group['n']} | {group['flow']:.1f} | {group['gap']:.1f} |")
    inside = sum(g["flow"] for g in groups.values())
    between = sum(g["gap"] for g in groups.values())
    print(f"| **all** | {len(rows)} | {inside:.1f} | {between:.1f} |\n")

    runs = training_runs(db, {row["id"]: row["kind"] for row in rows})
    print("| fold stages' training runs | training clips | runs | median (s) | min-max (s) | sum (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for (kind, clips), durations in sorted(runs.items()):
        print(f"| {kind} | {clips} | {len(durations)} | {statistics.median(durations):.1f} | "
              f"{min(durations):.1f}-{max(durations):.1f} | {sum(durations):.1f} |")
    fold_kinds = {kind for kind, _ in runs}
    fold_flows = sum(g["flow"] for kind, g in groups.items() if kind in fold_kinds)
    training = sum(sum(d) for d in runs.values())
    other_flows = inside - fold_flows
    floor = other_flows + training / args.workers
    print(f"\nFloor with {args.workers} runs at once, no gaps: other stages' flows {other_flows:.0f} s + training "
          f"runs {training:.0f} s / {args.workers} = **{floor:.0f} s ({floor / 60:.1f} min)**; the fold stages' "
          f"flows took {fold_flows:.0f} s and all gaps {between:.0f} s.")


if __name__ == "__main__":
    main()
