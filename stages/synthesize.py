"""DVC stage ``synthesize``: the seeded, AU-driven demo (DESIGN §8).

Writes macro-expression ``.mp4`` videos and a micro-expression dataset in the CASME II on-disk layout.
Run: ``python -m stages.synthesize``.
"""

from __future__ import annotations

from pipeline.config import load_params
from pipeline.io import atomic_dir
from pipeline.orchestration import flow, get_run_logger, run_stage
from pipeline.synth import render_demo


@flow(name="synthesize")
def synthesize_flow(params_path: str = "params.yaml") -> dict[str, int]:
    """Render the demo into ``paths.demo_micro_dir`` and the root of ``macro.sources.demo``."""
    params = load_params(params_path)
    macro_root = params.macro.sources["demo"].root
    with atomic_dir(params.paths.demo_micro_dir) as micro, atomic_dir(macro_root) as macro:
        clips = render_demo(params.synthesize, micro, macro)
    counts = clips["class"].value_counts().to_dict() if "class" in clips else {}
    get_run_logger().info("rendered %d micro clips %s", len(clips), counts)
    return {"micro_clips": len(clips)}


def main() -> None:
    run_stage(synthesize_flow)


if __name__ == "__main__":
    main()
