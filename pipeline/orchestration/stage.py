"""Prefect glue shared by the stages (DESIGN §7).

DVC decides what is stale; each DVC stage's command runs one Prefect flow in-process. With no
``PREFECT_API_URL`` Prefect starts an ephemeral local API (about 7 s per process on a 2-core machine); with a
server (``prefect server start``) the runs, logs and artifacts appear in the UI. Prefect task caching is off for
stage work (``cache_policy=NONE``): a cache keyed on arguments would hide changed files from DVC.

Nothing here acts at import time: :func:`run_stage` applies the project's Prefect defaults when the flow starts,
so a stage may import its modules in any order.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE as NO_CACHE
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_API_URL, PREFECT_HOME, PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings

from pipeline.orchestration.local_prefect import DASK_WORKER_CONFIG, LOOPBACK, die_with_parent, local_server

__all__ = ["NO_CACHE", "dask_task_runner", "drain_to_server", "enter_workdir", "flow", "get_run_logger",
           "route_library_logs", "run_stage", "stage_task", "task"]

LIBRARY_LOGGER = "pipeline"


def stage_task(fn: Callable | None = None, **kwargs: Any):
    """``@task`` with caching off (see the module docstring); keyword arguments go to ``prefect.task``."""
    kwargs.setdefault("cache_policy", NO_CACHE)
    return task(fn, **kwargs) if fn is not None else task(**kwargs)


def dask_task_runner(workers: int, cluster: str | None, n_tasks: int):
    """A prefect-dask ``DaskTaskRunner`` for a stage's ``n_tasks`` independent CPU-bound tasks.

    The scheduler at ``cluster`` if given; else the one in Dask's ``scheduler-address`` setting (environment
    variable ``DASK_SCHEDULER_ADDRESS``: ``python -m pipeline.orchestration.local_prefect`` starts one cluster for a
    whole
    ``dvc repro``, so its workers import torch once, not once per stage); else a local cluster of ``workers``
    single-threaded processes (0 = one per core), never more than ``n_tasks``, whose nannies leave glibc's malloc
    tuning alone (:data:`pipeline.orchestration.local_prefect.DASK_WORKER_CONFIG`: Dask's default made training 78%
    slower),
    and whose scheduler, workers, nannies and HTTP servers listen on 127.0.0.1 only (a Dask worker runs any function
    sent to it, unauthenticated; Dask's default dashboard address is 0.0.0.0).

    Always worker processes, also for one: a task then runs the same way (one thread, its own process) whatever
    the number of workers, so its result does not depend on it; and measured, a stage whose CPU-bound tasks ran
    in its own process (Prefect's ThreadPoolTaskRunner) waited ~70 s at exit for Prefect's event service to
    drain.
    """
    import dask
    from prefect_dask import DaskTaskRunner

    logging.getLogger("distributed").setLevel(logging.WARNING)  # Dask's INFO lines drown the stage's lines
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # also in the worker processes it starts
    dask.config.set(DASK_WORKER_CONFIG)  # for the local cluster's nannies, created in this process
    address = cluster or dask.config.get("scheduler-address", None)
    if address:
        return DaskTaskRunner(address=address)
    n_workers = max(1, min(workers or len(os.sched_getaffinity(0)), n_tasks))
    return DaskTaskRunner(cluster_kwargs={"n_workers": n_workers, "threads_per_worker": 1, "processes": True,
                                          "host": LOOPBACK, "dashboard_address": f"{LOOPBACK}:0"})


def enter_workdir(workdir: str) -> None:
    """In a Dask worker, make ``workdir`` (the stage's folder; the project's paths are relative to it) current.

    Raises:
        FileNotFoundError: this worker cannot see ``workdir`` (a cluster's workers need the project's files at
            the same path).
    """
    if os.getcwd() != workdir:
        if not os.path.isdir(workdir):
            raise FileNotFoundError(f"this Dask worker ({os.uname().nodename}) cannot see the project folder "
                                    f"{workdir}: workers need the project's files at the same path")
        os.chdir(workdir)


def route_library_logs() -> None:
    """Send the library's log records (the ``pipeline`` loggers) at INFO and above to the flow run's log.

    This is what ``PREFECT_LOGGING_EXTRA_LOGGERS=pipeline`` does when it is set before ``prefect`` is imported,
    done at run time instead. Prefect leaves the root logger at WARNING, which would hide the library's INFO
    lines (per-epoch numbers, resumes, drops): the ``pipeline`` logger gets its own level. Idempotent.
    """
    library = logging.getLogger(LIBRARY_LOGGER)
    for handler in logging.getLogger("prefect.extra").handlers:
        if handler not in library.handlers:
            library.addHandler(handler)
    library.setLevel(logging.INFO)


def drain_to_server(timeout_s: float = 30.0) -> None:
    """Send the run's pending log records and events to the Prefect API, waiting at most ``timeout_s`` for each.

    Prefect sends them from background services; once the stage's own server is stopped they can no longer be
    delivered ("Error logging to API"), and the services' exit handlers retried for over a minute after a flow with
    many task runs. Called before that server stops.
    """
    APILogWorker.drain_all(timeout=timeout_s)
    EventsWorker.drain_all(timeout=timeout_s)


def run_stage(stage_flow: Callable[..., Any], **kwargs: Any) -> Any:
    """Run ``stage_flow(**kwargs)`` as a stage's ``main()``.

    Ties this process to the one that started it (:func:`pipeline.orchestration.local_prefect.die_with_parent`: a killed
    ``dvc`` takes its stage along), routes the library's logs into the run (:func:`route_library_logs`), turns
    Prefect's server analytics off unless the user set ``PREFECT_SERVER_ANALYTICS_ENABLED`` (it also races the
    SQLite database), and exits non-zero on failure with the error message on stderr (DVC then marks the stage
    failed).

    Without ``PREFECT_API_URL`` the stage starts its own local server (:func:`pipeline.orchestration.local_prefect.
    local_server`, database under ``PREFECT_HOME`` as Prefect's ephemeral API would use) instead of Prefect's
    ephemeral API: that server is tied to this process and dies with it even when the stage is SIGKILLed, where
    the ephemeral API's server outlived a killed stage.

    Returns:
        What the flow returned.

    Raises:
        SystemExit: the flow raised; the exit status is 1.
    """
    die_with_parent()
    route_library_logs()
    updates = {} if "PREFECT_SERVER_ANALYTICS_ENABLED" in os.environ else {PREFECT_SERVER_ANALYTICS_ENABLED: False}
    try:
        with contextlib.ExitStack() as stack:  # on exit, in reverse: drain, settings restored, server stopped
            own_server = not PREFECT_API_URL.value()
            if own_server:
                updates[PREFECT_API_URL] = stack.enter_context(local_server(PREFECT_HOME.value()))
            stack.enter_context(temporary_settings(updates=updates))
            if own_server:
                stack.callback(drain_to_server)
            return stage_flow(**kwargs)
    except Exception as err:  # report the message, not only Prefect's traceback
        print(f"stage failed: {type(err).__name__}: {err}", file=sys.stderr)
        raise SystemExit(1) from err
