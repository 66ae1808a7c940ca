"""The local Prefect server records task runs and events (issue 23, item 1).

Before: ``pipeline.orchestration.local_prefect`` started ``prefect server start --no-services``, and Prefect 3 records
a task
run from the events its client sends (the task run recorder service), so after ``make demo`` the database held
37 flow runs, 0 task runs and 0 events: a flow run's page in the UI listed none of its per-video or per-seed tasks.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.prefect_harness import prefect_env

SCRIPT = textwrap.dedent('''
    import asyncio, json, sys, time
    from prefect import flow, get_client
    from pipeline.orchestration.stage import dask_task_runner, stage_task

    @stage_task
    def square(x: int) -> int:
        time.sleep(0.2)
        return x * x

    @flow(name="task-runs-probe", task_runner=dask_task_runner(2, None, 3))
    def probe() -> list[int]:
        futures = [square.with_options(task_run_name=f"square {x}").submit(x) for x in range(3)]
        return [f.result() for f in futures]

    state = probe(return_state=True)
    flow_run_id = state.state_details.flow_run_id

    async def recorded():
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
        async with get_client() as client:
            for _ in range(120):  # the recorder works through the events asynchronously
                only_this = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
                runs = await client.read_task_runs(flow_run_filter=only_this)
                if len(runs) == 3 and all(r.state and r.state.is_completed() for r in runs):
                    break
                await asyncio.sleep(0.5)
            events = await client.request("POST", "/events/filter", json={"limit": 50})
            return ([{"name": r.name, "state": r.state.name if r.state else None, "total_run_time_s":
                      r.total_run_time.total_seconds()} for r in runs], events.json()["total"])

    runs, n_events = asyncio.run(recorded())
    print("RESULT " + json.dumps({"result": state.result(), "runs": runs, "events": n_events}))
''')


def test_a_flow_run_lists_its_task_runs_on_dask(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    env = prefect_env(tmp_path / "home")
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    result = subprocess.run([sys.executable, "-m", "pipeline.orchestration.local_prefect", "--home",
                             str(tmp_path / "home"),
                             "--dask-workers", "2", "--", sys.executable, str(script)],
                            env={**env, "PYTHONPATH": str(__import__("pathlib").Path(__file__).parents[1])},
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    recorded = json.loads(line.removeprefix("RESULT "))
    assert recorded["result"] == [0, 1, 4]
    runs = sorted(recorded["runs"], key=lambda r: r["name"])
    assert [r["name"] for r in runs] == ["square 0", "square 1", "square 2"]
    assert all(r["state"] == "Completed" and r["total_run_time_s"] >= 0.2 for r in runs), runs
    assert recorded["events"] > 0  # the event persister stored the runs' events
