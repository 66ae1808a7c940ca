"""Prefect glue shared by the stages (DESIGN §7).

DVC decides what is stale; each DVC stage's command runs one Prefect flow in-process. With no
``PREFECT_API_URL`` Prefect starts an ephemeral local API (about 5 s per process on a 2-core machine); with a
server (``prefect server start``) the runs, logs and artifacts appear in the UI. Prefect task caching is off for
stage work (``cache_policy=NONE``): a cache keyed on arguments would hide changed files from DVC.

Import this module before ``prefect`` so its environment defaults apply.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

# Defaults only: a user's own settings win. Analytics off: it also races the ephemeral SQLite database.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "pipeline")  # library logs go to the flow run's log
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never fetch weights from a hub at run time

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NONE as NO_CACHE  # noqa: E402

__all__ = ["NO_CACHE", "flow", "get_run_logger", "run_stage", "stage_task", "task"]


def stage_task(fn: Callable | None = None, **kwargs: Any):
    """``@task`` with caching off (see the module docstring); keyword arguments go to ``prefect.task``."""
    kwargs.setdefault("cache_policy", NO_CACHE)
    return task(fn, **kwargs) if fn is not None else task(**kwargs)


def run_stage(stage_flow: Callable[..., Any], **kwargs: Any) -> Any:
    """Run ``stage_flow(**kwargs)`` as a stage's ``main()``: configures logging and exits non-zero on failure
    with the error message on stderr (DVC then marks the stage failed and keeps the previous outputs)."""
    # Prefect routes the `pipeline` loggers (PREFECT_LOGGING_EXTRA_LOGGERS) but leaves the root at WARNING, which
    # would hide the library's INFO lines (per-epoch numbers, resumes, drops): give them their own level.
    logging.getLogger("pipeline").setLevel(logging.INFO)
    try:
        return stage_flow(**kwargs)
    except Exception as err:  # report the message, not only Prefect's traceback
        print(f"stage failed: {type(err).__name__}: {err}", file=sys.stderr)
        raise SystemExit(1) from err
