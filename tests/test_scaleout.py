"""Scale-out on a real Prefect server and real workers (pipeline/orchestration/scaleout.py, prefect.yaml;
docs/scaling.md).

One setup for the module, loopback only: ``prefect server start`` (temporary PREFECT_HOME, SQLite), the ``cpu`` and
``gpu`` process pools, ``prefect deploy --all`` of the project's prefect.yaml, a ``cpu`` worker for the coordinator
and two ``gpu`` workers (``--limit 1``) for the folds, and a git clone of the session's shrunk project with a
local-folder DVC remote. The coordinator is triggered twice. In the first run one fold's first attempt fails (the
test hook) and a gpu worker is SIGKILLed, with every process under it, while another fold trains; the second run,
after a replacement worker has started, must complete with the metrics of the plain ``dvc repro`` of that config.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml

from pipeline.orchestration.scaleout import FAULT_ENV, DirtyWorkspaceError, committed_revision, fold_and_upstream_stages
from tests.conftest import GIT_IDENTITY
from tests.prefect_harness import Processes, api, prefect_env, run, start_server, start_worker, wait_for_run

POOLS = {"cpu-0": "cpu", "gpu-0": "gpu", "gpu-1": "gpu"}  # worker -> pool; gpu-1 is killed, gpu-2 replaces it
RUN_TIMEOUT_S = 420


@dataclass
class Cluster:
    """The module's server, workers and coordinator workspace."""

    base: Path
    project: Path
    remote: Path
    api_url: str
    env: dict
    procs: Processes
    faulty: str  # the fold stage whose first attempt fails (FAULT_ENV)

    def worker_env(self, name: str) -> dict:
        tmp = self.base / "tmp" / name  # the worker's scratch (its flow runs' clones), kept apart to inspect it
        tmp.mkdir(parents=True, exist_ok=True)
        return {**self.env, "MA2MI_PROJECT_DIR": str(self.project), "TMPDIR": str(tmp),
                "PREFECT_WORKER_QUERY_SECONDS": "1", FAULT_ENV: self.faulty}

    def trigger(self, deployment: str, **parameters):
        from prefect.deployments import run_deployment

        with api(self.api_url):
            return run_deployment(deployment, parameters=parameters, timeout=0).id


@pytest.fixture(scope="module")
def cluster(shrunk_project, tmp_path_factory, repo):
    reference, _ = shrunk_project
    base = tmp_path_factory.mktemp("scaleout")
    project, remote, home = base / "project", base / "remote", base / "prefect"
    env = {**prefect_env(home), **GIT_IDENTITY}
    run(["git", "clone", "-q", str(reference), str(project)], base, env)
    shutil.copy(repo / "prefect.yaml", project)
    run(["dvc", "remote", "add", "-d", "shared", str(remote)], project, env)
    run(["git", "add", "prefect.yaml", ".dvc/config"], project, env)
    run(["git", "commit", "-q", "-m", "Prefect deployments, a DVC remote"], project, env)
    folds, _ = fold_and_upstream_stages(project)
    with Processes(base / "logs") as procs:
        api_url = start_server(procs, home)
        env = {**env, **prefect_env(home, api_url)}
        for pool in sorted(set(POOLS.values())):
            run(["prefect", "work-pool", "create", pool, "--type", "process"], project, env)
        run(["prefect", "--no-prompt", "deploy", "--all"], project, env, timeout=300)
        cluster = Cluster(base, project, remote, api_url, env, procs, folds[-1])
        for name, pool in POOLS.items():
            start_worker(procs, name, pool, cluster.worker_env(name), limit=1 if pool == "gpu" else None)
        yield cluster


def _kill_worker_during_a_fold(cluster: Cluster, worker: str, timeout: float) -> str:
    """Wait until a fold stage's command has run for 2 s under ``worker`` (not the faulty fold), SIGKILL the worker
    and all its descendants, and mark that flow run Crashed, as Prefect's zombie automation would (docs/scaling.md).
    Returns the fold's name."""
    deadline = time.monotonic() + timeout
    root = psutil.Process(cluster.procs.procs[worker].pid)
    while time.monotonic() < deadline:
        for proc in root.children(recursive=True):
            try:
                args = proc.cmdline()
                if "-m" not in args[:-1] or not args[args.index("-m") + 1].startswith("stages."):
                    continue  # not a DVC stage's command (python -m stages.<name> ...)
                if time.time() - proc.create_time() < 2:
                    continue  # let it get into its work
                run_id = next(p.environ()["PREFECT__FLOW_RUN_ID"] for p in proc.parents()
                              if "PREFECT__FLOW_RUN_ID" in p.environ())
            except (psutil.Error, StopIteration):
                continue
            with api(cluster.api_url) as client:
                target = client.read_flow_run(run_id).parameters["target"]
                if target == cluster.faulty:
                    continue
                cluster.procs.kill(worker)
                from prefect.states import Crashed

                client.set_flow_run_state(run_id, Crashed(message=f"{worker} was killed (test)"), force=True)
            return target
        time.sleep(0.2)
    raise TimeoutError(f"no fold ran on {worker} within {timeout:.0f} s:\n{cluster.procs.log(worker)}")


@pytest.fixture(scope="module")
def scenario(cluster) -> dict:
    """Coordinator run 1 (a faulty fold, a killed worker), then run 2 (a replacement worker); both final runs."""
    first_id = cluster.trigger("ma2mi-coordinator/cpu", poll_interval_s=1)
    killed = _kill_worker_during_a_fold(cluster, "gpu-1", timeout=RUN_TIMEOUT_S)
    start_worker(cluster.procs, "gpu-2", "gpu", cluster.worker_env("gpu-2"))
    first = wait_for_run(cluster.api_url, first_id, timeout=RUN_TIMEOUT_S)
    second = wait_for_run(cluster.api_url, cluster.trigger("ma2mi-coordinator/cpu", poll_interval_s=1),
                          timeout=RUN_TIMEOUT_S)
    return {"first": first, "second": second, "killed": killed}


def _content_addressed(root: Path) -> int:
    """Assert every file of the DVC cache or remote ``root`` is intact: an object hashes (md5) to its name, a
    run-cache entry (YAML) to its own; return how many there are."""
    from dvc.stage.cache import _get_cache_hash

    count = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        kind = path.relative_to(root).parts[0]
        if kind == "files":
            digest = hashlib.md5(path.read_bytes()).hexdigest()
            assert path.parent.name + path.name.removesuffix(".dir") == digest, f"{path}: content hashes to {digest}"
        else:
            assert kind == "runs", f"{path}: neither an object nor a run-cache entry"
            assert _get_cache_hash(yaml.safe_load(path.read_text())) == path.name, f"{path}: not its entry's hash"
        count += 1
    return count


@pytest.mark.slow
def test_prefect_yaml_deploys_each_flow_to_its_pool(cluster):
    with api(cluster.api_url) as client:
        flows = {flow.id: flow.name for flow in client.read_flows()}
        deployments = {f"{flows[d.flow_id]}/{d.name}": d for d in client.read_deployments()}
    assert {name: d.work_pool_name for name, d in deployments.items()} == {
        "ma2mi-pipeline/gpu": "gpu", "ma2mi-stage/gpu": "gpu", "ma2mi-stage/cpu": "cpu", "ma2mi-coordinator/cpu": "cpu"}
    # the project folder is resolved on each worker when a run starts, not frozen at deploy time
    assert all("{{ $MA2MI_PROJECT_DIR }}" in json.dumps(d.pull_steps) for d in deployments.values())


@pytest.mark.slow
def test_a_failed_fold_attempt_is_retried_by_prefect(cluster, scenario):
    with api(cluster.api_url) as client:
        runs = [r for r in client.read_flow_runs() if r.name.startswith(f"{cluster.faulty} @ ")]
        retried = [r for r in runs if r.run_count == 2 and r.state.is_completed()]
        assert retried, [(r.name, r.state_name, r.run_count) for r in runs]
        assert "AwaitingRetry" in [state.name for state in client.read_flow_run_states(retried[0].id)]


@pytest.mark.slow
def test_a_killed_worker_fails_only_its_fold_and_leaves_no_half_written_object(cluster, scenario):
    first = scenario["first"]
    assert first.state.is_failed()
    failed = re.findall(r"(finetune_\S+) \((\w+)\)", first.state.message)
    assert failed == [(scenario["killed"], "Crashed")], first.state.message
    clones = list((cluster.base / "tmp" / "gpu-1").glob("ma2mi-stage-*/project"))
    assert clones, "the killed worker's clone is where it was killed (nothing removed it)"
    caches = [cluster.remote, cluster.project / ".dvc" / "cache", *(c / ".dvc" / "cache" for c in clones)]
    assert all(_content_addressed(cache) for cache in caches if cache.is_dir())


@pytest.mark.slow
def test_retriggered_coordinator_ends_with_the_lock_and_metrics_of_a_plain_repro(cluster, scenario, shrunk_project):
    reference, _ = shrunk_project
    second = scenario["second"]
    assert second.state.is_completed(), second.state.message
    ours = json.loads((cluster.project / "results" / "evaluate" / "metrics.json").read_text())
    theirs = json.loads((reference / "results" / "evaluate" / "metrics.json").read_text())
    assert ours["run"].pop("git_revision") == committed_revision(cluster.project)
    theirs["run"].pop("git_revision")
    assert ours == theirs
    lock = yaml.safe_load((cluster.project / "dvc.lock").read_text())["stages"]
    reference_lock = yaml.safe_load((reference / "dvc.lock").read_text())["stages"]
    assert lock.keys() == reference_lock.keys()
    # metrics.json carries the git revision; the model cards and the report quote it
    assert {name for name in lock if lock[name] != reference_lock[name]} == {
        "evaluate", "final_ma2mi", "final_scratch", "final_baseline@ststnet", "report"}
    folds, _ = fold_and_upstream_stages(cluster.project)
    log = cluster.procs.log("cpu-0", chars=10**7)
    restored = re.findall(r"Stage '([^']+)' is cached - skipping run", log)
    assert sorted(restored) == folds, "each fold stage comes from a worker, through the run-cache, once"
    # the first run restored the folds that completed, so the second dispatched only the killed worker's
    assert re.findall(r"(\d+) of \d+ fold stages stale", log) == [str(len(folds)), "1"]


@pytest.mark.slow
def test_pipeline_deployment_runs_dvc_repro_in_the_project_from_the_cli(cluster, scenario):
    watched = run(["prefect", "deployment", "run", "ma2mi-pipeline/gpu", "--param", "targets=[\"evaluate\"]",
                   "--watch", "--watch-timeout", str(RUN_TIMEOUT_S)], cluster.project, cluster.env,
                  timeout=RUN_TIMEOUT_S + 60)
    assert "Completed" in watched, watched
    assert json.loads(run(["dvc", "status", "--json"], cluster.project, cluster.env)) == {}


def test_coordinator_refuses_uncommitted_changes(tmp_path):
    env = {**prefect_env(tmp_path / "prefect"), **GIT_IDENTITY}
    for name in ("params.yaml", "dvc.lock"):
        (tmp_path / name).write_text("a: 1\n")
    run(["git", "init", "-q"], tmp_path, env)
    run(["git", "add", "-A"], tmp_path, env)
    run(["git", "commit", "-q", "-m", "first"], tmp_path, env)
    (tmp_path / "dvc.lock").write_text("a: 2\n")  # DVC's own record: the coordinator ships it to the workers
    head = run(["git", "rev-parse", "HEAD"], tmp_path, env).strip()
    assert committed_revision(tmp_path) == head
    (tmp_path / "params.yaml").write_text("a: 2\n")
    with pytest.raises(DirtyWorkspaceError, match=r"uncommitted changes to params\.yaml;"):
        committed_revision(tmp_path)


def test_fold_stages_come_from_the_dag_not_from_arm_names(tmp_path, repo):
    env = prefect_env(tmp_path / "prefect")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(repo / name, tmp_path / name)
    run(["dvc", "init", "--no-scm", "-q"], tmp_path, env)
    with pytest.raises(ValueError, match="no default DVC remote"):
        fold_and_upstream_stages(tmp_path)
    run(["dvc", "remote", "add", "-d", "shared", str(tmp_path / "remote")], tmp_path, env)
    folds, upstream = fold_and_upstream_stages(tmp_path)
    assert {"finetune_ma2mi@0", "finetune_scratch@7"} <= set(folds) and all("@" in name for name in folds)
    assert {"pretrain", "ingest_micro", "synthesize"} <= set(upstream)
    assert "evaluate" not in folds + upstream
    with pytest.raises(ValueError, match="no stage matches"):
        fold_and_upstream_stages(tmp_path, r"train_\d+")
