"""DVC stage ``synthesize``: the seeded, AU-driven demo (DESIGN §8).

Writes macro-expression ``.mp4`` videos and a micro-expression dataset in the CASME II on-disk layout. Each micro
subject and each macro identity renders as a Prefect task run on Dask worker processes
(:func:`pipeline.orchestration.stage.dask_task_runner`: the cluster at ``DASK_SCHEDULER_ADDRESS``, which ``make demo``
starts, else one single-threaded worker per core); the files do not depend on how many run at once.
Run: ``python -m stages.synthesize``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from pipeline.config import load_params
from pipeline.io import atomic_dir
from pipeline.orchestration.stage import dask_task_runner, enter_workdir, flow, get_run_logger, run_stage, stage_task
from pipeline.synth import render_demo
from pipeline.synth.demo import RenderItem


@stage_task(name="synthesize-identity")
def render_item(fn: Callable[..., Any], args: tuple, workdir: str) -> Any:
    """One render item of :func:`pipeline.synth.render_demo` (a micro subject or a macro identity)."""
    enter_workdir(workdir)  # a worker of an existing cluster: the paths are relative to the project's folder
    return fn(*args)


@flow(name="synthesize")
def synthesize_flow(params_path: str = "params.yaml") -> dict[str, int]:
    """Render the demo into ``paths.demo_micro_dir`` and the root of ``macro.sources.demo``."""
    params = load_params(params_path)
    macro_root = params.macro.sources["demo"].root
    with atomic_dir(params.paths.demo_micro_dir) as micro, atomic_dir(macro_root) as macro:
        def on_dask(items: list[RenderItem]) -> Iterator[Any]:
            with dask_task_runner(0, None, len(items)) as runner:
                futures = [runner.submit(render_item.with_options(task_run_name=f"{fn.__name__} {args[1]}"),
                                         {"fn": fn, "args": args, "workdir": os.getcwd()}) for fn, args in items]
                yield from (future.result() for future in futures)

        clips = render_demo(params.synthesize, micro, macro, map_items=on_dask)
    counts = clips["class"].value_counts().to_dict() if "class" in clips else {}
    get_run_logger().info("rendered %d micro clips %s", len(clips), counts)
    return {"micro_clips": len(clips)}


def main() -> None:
    run_stage(synthesize_flow)


if __name__ == "__main__":
    main()
