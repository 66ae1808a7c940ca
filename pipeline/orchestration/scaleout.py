"""Scale-out of the DVC pipeline on Prefect work pools (DESIGN §7): the flows that ``prefect.yaml`` deploys.

- ``ma2mi-pipeline`` (:func:`repro`): ``dvc repro [targets]`` in the deployment's working directory, e.g. the
  whole pipeline on one GPU worker.
- ``ma2mi-stage`` (:func:`stage`): ONE DVC stage (a LOSO fold) in a throw-away ``git clone`` of the project at a
  given revision, against the project's default DVC remote: ``dvc repro --pull -s <target>`` fetches the stage's
  inputs, ``dvc push --run-cache <target>`` publishes its outputs and its run-cache entry. Prefect retries a
  failed attempt once.
- ``ma2mi-coordinator`` (:func:`coordinator`): in its checkout, reproduces and pushes the stages upstream of the
  fold stages, dispatches every stale fold stage as a ``ma2mi-stage`` run (all at once: the pool's workers take
  them as they free up) and waits for all; ``dvc repro --pull`` then restores each completed fold stage from the
  run-cache the workers pushed ("Stage ... is cached - skipping run") and runs the rest (``evaluate``) here, so
  dvc.lock and the metrics are those of a local ``dvc repro``.

A clone per run, because several ``dvc repro`` in one workspace contend for DVC's lock. Workers clone the
committed revision, so the coordinator refuses a workspace with uncommitted changes; it hands its ``dvc.lock`` to
each stage run (a project need not commit it), so ``--pull`` fetches exactly the upstream outputs it built.
DVC writes cache and remote objects under a temporary name and renames them: a worker killed mid-run leaves no
half-written object, and its fold is dispatched again by the next coordinator run (the completed ones are not).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

import yaml
from prefect.deployments import run_deployment
from prefect.runtime import flow_run as current_run
from prefect.utilities.annotations import unmapped

from pipeline.orchestration.stage import flow, get_run_logger, stage_task

__all__ = ["FAULT_ENV", "FOLD_STAGES", "coordinator", "fold_and_upstream_stages", "repro", "stage"]

FOLD_STAGES = r"finetune_[^@]+@.+"  # every arm's foreach stages (finetune_<arm>@<fold>), whatever the arms are
FAULT_ENV = "MA2MI_TEST_FAIL_FIRST_ATTEMPT"  # TEST HOOK: a stage target whose first attempt raises


class CommandError(RuntimeError):
    """A ``git`` or ``dvc`` command exited non-zero; the message names the command, folder and output tail."""


class DirtyWorkspaceError(RuntimeError):
    """The coordinator's checkout has uncommitted changes that the workers' clones would not have."""


def _command_env() -> dict[str, str]:
    # The worker's flow-run identity (PREFECT__FLOW_RUN_ID, ...) must not leak into the stage's own Prefect flow.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT__")}
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def _streamed(args: list[str], cwd: Path) -> str:
    """Run ``args`` in ``cwd``, streaming its output lines to the run's log; return the output.

    Raises:
        CommandError: the command exited non-zero (the message carries the last 30 lines of its output).
    """
    logger = get_run_logger()
    logger.info("$ %s  (in %s)", shlex.join(args), cwd)
    lines = []
    with subprocess.Popen(args, cwd=cwd, env=_command_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as proc:
        for line in proc.stdout:
            if line := line.rstrip():
                lines.append(line)
                logger.info(line)
    if proc.returncode:
        tail = "\n".join(lines[-30:])
        raise CommandError(f"`{shlex.join(args)}` failed in {cwd} (exit {proc.returncode}):\n{tail}")
    return "\n".join(lines)


@stage_task(task_run_name="dvc {args[0]}")
def dvc(args: list[str], cwd: Path) -> str:
    """Prefect task: ``dvc <args>`` in ``cwd``, output streamed to the log (see :func:`_streamed`)."""
    return _streamed(["dvc", *args], cwd)


def _quiet(program: str, args: list[str], cwd: Path) -> str:
    """``program args`` in ``cwd``; its stdout (stripped). Raises CommandError with its stderr on failure."""
    result = subprocess.run([program, *args], cwd=cwd, env=_command_env(), capture_output=True, text=True,
                            check=False)
    if result.returncode:
        raise CommandError(f"`{program} {shlex.join(args)}` failed in {cwd}: {result.stderr.strip()[-2000:]}")
    return result.stdout.strip()


def _git(args: list[str], cwd: Path) -> str:
    return _quiet("git", args, cwd)


def committed_revision(workdir: Path) -> str:
    """The ``HEAD`` commit of ``workdir``, which workers will clone.

    Raises:
        DirtyWorkspaceError: tracked files other than ``dvc.lock`` have uncommitted changes (the workers' clones
            would not see them, so their results would not be this workspace's).
    """
    dirty = _git(["diff", "--name-only", "HEAD", "--", ".", ":(exclude)dvc.lock"], workdir)
    if dirty:
        raise DirtyWorkspaceError(f"{workdir}: uncommitted changes to {', '.join(dirty.splitlines())}; workers "
                                  "clone the committed revision, so commit (or stash) them first")
    return _git(["rev-parse", "HEAD"], workdir)


def fold_and_upstream_stages(workdir: Path, fold_pattern: str = FOLD_STAGES) -> tuple[list[str], list[str]]:
    """The fold stages of ``workdir``'s DVC project and their upstream stages, each list sorted.

    The fold stages are those whose name matches ``fold_pattern``; the upstream ones are every stage they depend
    on (transitively) that does not match it.

    Raises:
        ValueError: no stage matches ``fold_pattern``, or the project has no default DVC remote (workers exchange
            results through it).
    """
    import networkx as nx  # DVC's own dependency; imported here: the stage flow does not need DVC in-process
    from dvc.repo import Repo

    with contextlib.chdir(workdir), Repo(".") as project:  # stage addresses are relative to the cwd
        if not project.config["core"].get("remote"):
            raise ValueError(f"{workdir}: no default DVC remote; `dvc remote add -d <name> <url>` and commit "
                             ".dvc/config (workers push and pull the fold results through it)")
        graph = project.index.graph  # edges: stage -> the stages it depends on
        folds = [node for node in graph if re.fullmatch(fold_pattern, node.addressing)]
        if not folds:
            raise ValueError(f"{workdir}: no stage matches fold_pattern {fold_pattern!r}")
        upstream = set().union(*(nx.descendants(graph, node) for node in folds)) - set(folds)
        return sorted(node.addressing for node in folds), sorted(node.addressing for node in upstream)


@flow(name="ma2mi-pipeline")
def repro(targets: list[str] | None = None, pull: bool = False, push: bool = False) -> None:
    """``dvc repro [targets]`` in the working directory (the deployment's pull step sets it to the project).

    Args:
        targets: DVC stages to reproduce with their upstream; ``None``: the whole pipeline.
        pull: ``--pull``: restore what the DVC remote already has (outputs, run-cache) instead of running it.
        push: afterwards ``dvc push --run-cache`` the outputs to the default remote.
    """
    workdir = Path.cwd()
    dvc(["repro", *(["--pull"] if pull else []), *(targets or [])], workdir)
    if push:
        dvc(["push", "--run-cache", *(targets or [])], workdir)


@flow(name="ma2mi-stage", retries=1, retry_delay_seconds=5)
def stage(target: str, repo_url: str, revision: str, lockfile: str | None = None) -> str:
    """Reproduce the single DVC stage ``target`` in a fresh clone of ``repo_url`` at ``revision``.

    Then push its outputs and run-cache entry to the project's default DVC remote; the clone is removed
    afterwards.

    Args:
        target: a DVC stage name, e.g. ``finetune_ma2mi@3``.
        repo_url: a git URL or path the worker can clone.
        revision: the commit to check out.
        lockfile: the text of the coordinator's ``dvc.lock``: the hashes of the upstream outputs to pull.

    Returns:
        The stage's ``dvc.lock`` entry (YAML), as the worker produced it.

    Raises:
        CommandError: the clone, ``dvc repro`` or ``dvc push`` failed (after Prefect's retry).
        RuntimeError: the test hook ``MA2MI_TEST_FAIL_FIRST_ATTEMPT`` names ``target`` (first attempt only).
    """
    if os.environ.get(FAULT_ENV) == target and current_run.run_count <= 1:
        raise RuntimeError(f"{target}: fault injected by the test hook {FAULT_ENV} (first attempt only)")
    with tempfile.TemporaryDirectory(prefix="ma2mi-stage-") as scratch:
        workdir = Path(scratch) / "project"
        _git(["clone", "--quiet", "--no-checkout", repo_url, str(workdir)], Path(scratch))
        _git(["checkout", "--quiet", "--detach", revision], workdir)
        if lockfile is not None:
            (workdir / "dvc.lock").write_text(lockfile)
        dvc(["repro", "--pull", "--single-item", target], workdir)
        dvc(["push", "--run-cache", target], workdir)
        entry = yaml.safe_load((workdir / "dvc.lock").read_text())["stages"][target]
        return yaml.safe_dump({target: entry}, sort_keys=False)


@stage_task(task_run_name="dispatch {target}")
def dispatch(target: str, deployment: str, parameters: dict, poll_interval_s: float) -> str:
    """Run ``deployment`` for ``target`` and wait; return the final state's name (``Completed``, ``Failed``...)."""
    run = run_deployment(deployment, parameters={**parameters, "target": target}, poll_interval=poll_interval_s,
                         flow_run_name=f"{target} @ {parameters['revision'][:8]}")
    get_run_logger().info("%s: flow run %s ended %s", target, run.name, run.state.name)
    return run.state.name


@flow(name="ma2mi-coordinator")
def coordinator(stage_deployment: str = "ma2mi-stage/gpu", repo_url: str | None = None,
                fold_pattern: str = FOLD_STAGES, poll_interval_s: float = 5.0) -> dict:
    """Reproduce the pipeline in the working directory with its stale fold stages run on a work pool.

    Steps: ``dvc repro --pull`` + ``dvc push --run-cache`` of the stages upstream of the folds; every stale fold
    stage (``dvc status``) dispatched as a ``stage_deployment`` run; the completed ones restored from the
    run-cache (``dvc repro --pull``); once all completed, ``dvc repro --pull`` of the rest (``evaluate``) here.

    Args:
        stage_deployment: the :func:`stage` deployment (``flow/deployment``), whose work pool runs the folds.
        repo_url: what workers clone; ``None``: this working directory (workers on the same file system).
        fold_pattern: regular expression of the stage names dispatched to workers.
        poll_interval_s: how often a dispatched run's state is polled.

    Returns:
        ``{"revision", "upstream", "dispatched", "dispatch_s"}``.

    Raises:
        DirtyWorkspaceError: uncommitted changes (see :func:`committed_revision`).
        ValueError: no default DVC remote, or no stage matches ``fold_pattern``.
        RuntimeError: fold stages failed on the workers (named in the message); the completed ones are restored
            first, so triggering the coordinator again dispatches only the failed ones.
    """
    logger = get_run_logger()
    workdir = Path.cwd()
    revision = committed_revision(workdir)
    folds, upstream = fold_and_upstream_stages(workdir, fold_pattern)
    if upstream:
        dvc(["repro", "--pull", *upstream], workdir)
        dvc(["push", "--run-cache", *upstream], workdir)
    status = json.loads(_quiet("dvc", ["status", "--json", *folds], workdir) or "{}")
    stale = [name for name in folds if name in status]
    logger.info("revision %s: %d of %d fold stages stale, dispatched to %s", revision[:12], len(stale), len(folds),
                stage_deployment)
    parameters = {"repo_url": repo_url or str(workdir), "revision": revision,
                  "lockfile": (workdir / "dvc.lock").read_text() if (workdir / "dvc.lock").is_file() else None}
    start = time.perf_counter()
    states = dispatch.map(stale, unmapped(stage_deployment), unmapped(parameters),
                          unmapped(poll_interval_s)).result() if stale else []
    dispatch_s = time.perf_counter() - start
    done = [name for name, state in zip(stale, states, strict=True) if state == "Completed"]
    if done:  # restored even if other folds failed: the next coordinator run dispatches only those
        output = dvc(["repro", "--pull", *done], workdir)
        if rerun := [name for name in done if f"Running stage '{name}'" in output]:
            logger.warning("not restored from the run-cache, so run here: %s", ", ".join(rerun))
    if failed := [f"{name} ({state})" for name, state in zip(stale, states, strict=True) if state != "Completed"]:
        raise RuntimeError(f"fold stages did not complete on the workers: {', '.join(failed)}; see their flow runs, "
                           "then trigger the coordinator again: it dispatches only these")
    dvc(["repro", "--pull"], workdir)
    return {"revision": revision, "upstream": upstream, "dispatched": stale, "dispatch_s": round(dispatch_s, 1)}
