"""Cost per frame of the face detectors: OpenCV Haar (pipeline.face.video) vs MTCNN (pipeline.face.align), as a
markdown table.

Usage:
    python -m benchmarks.detector_cost [--video-dir ../shared/datasets/videos] [--videos a.mp4 b.mp4]
        [--frames 16] [--repeats 5] [--threads 2] [--device cpu]

Decodes ``--frames`` frames spread over each video (native size, decord) and times, on the same frames:

- ``HaarFaceDetector.detect``, one frame at a time, with OpenCV's default thread count and with 1 thread;
- ``MtcnnDetector.detect`` with batch 1 (one call per frame) and batch 16 (calls of 16 frames), with the
  detector's default 1 torch thread, and batch 16 with ``--threads`` torch threads; all with the default
  ``max_side_px`` = 640 shrink;
- batch 16 without the shrink (the whole native frame), only where a frame is larger than 640 px.

Each cell is pass time / frames in ms, as the median (and the minimum) over ``--repeats`` timed passes after one
warm-up pass; the configurations' passes are interleaved (repeat 1 of each, then repeat 2 of each, ...) so that
load from other processes falls on all of them alike. ``faces`` counts the frames with a face. The machine's CPU
count and 1-minute load average before the run are printed above the table (a shared CPU makes timings noisy).
Progress goes to the log (stderr); the table to stdout.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pipeline.face.align import MtcnnDetector
from pipeline.face.video import HaarFaceDetector

log = logging.getLogger("detector_cost")

DEFAULT_VIDEO_DIR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "videos"
DEFAULT_VIDEOS = ["single_face.mp4", "WolfgangLanger_Pexels.mp4", "carphone_pristine.mp4", "no_face.mp4"]


@dataclass(frozen=True)
class Config:
    """One timed detector configuration: ``run(frames)`` returns one result (None = no face) per frame."""

    detector: str
    threads: str
    run: Callable[[np.ndarray], list]
    applies: Callable[[np.ndarray], bool] = lambda frames: True


def frames_of(path: Path, n: int) -> np.ndarray:
    """``n`` frames spread evenly over the video, ``(n, H, W, 3) uint8 RGB`` at native size."""
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    indices = np.linspace(0, len(reader) - 1, n).round().astype(int)
    return reader.get_batch(indices.tolist()).asnumpy()


def haar_run(haar: HaarFaceDetector, cv2_threads: int | None) -> Callable[[np.ndarray], list]:
    """Haar on each frame, with ``cv2.setNumThreads(cv2_threads)`` for the pass (None: OpenCV's default)."""

    def run(frames: np.ndarray) -> list:
        default = cv2.getNumThreads()
        if cv2_threads is not None:
            cv2.setNumThreads(cv2_threads)
        try:
            return [haar.detect(frame) for frame in frames]
        finally:
            cv2.setNumThreads(default)

    return run


def configs(args: argparse.Namespace) -> list[Config]:
    haar = HaarFaceDetector()
    mtcnn = MtcnnDetector(device=args.device, batch_size=16)  # default: 1 torch thread
    mtcnn_threads = MtcnnDetector(device=args.device, batch_size=16, num_threads=args.threads)
    mtcnn_full = MtcnnDetector(device=args.device, batch_size=16, max_side_px=None)
    return [
        Config("haar", f"cv2 default ({cv2.getNumThreads()})", haar_run(haar, None)),
        Config("haar", "cv2 1", haar_run(haar, 1)),
        Config("mtcnn batch 1", "torch 1", lambda frames: [mtcnn.detect(f[None])[0] for f in frames]),
        Config("mtcnn batch 16", "torch 1", mtcnn.detect),
        Config("mtcnn batch 16", f"torch {args.threads}", mtcnn_threads.detect),
        Config("mtcnn batch 16, no shrink", "torch 1", mtcnn_full.detect,
               lambda frames: max(frames.shape[1:3]) > mtcnn.max_side_px),
    ]


def measure(path: Path, n_frames: int, repeats: int, setups: list[Config]) -> list[dict]:
    """One table row per configuration that applies to the video's frames."""
    frames = frames_of(path, n_frames)
    log.info("%s: %d frames of %dx%d", path.name, len(frames), frames.shape[2], frames.shape[1])
    setups = [c for c in setups if c.applies(frames)]
    found = [c.run(frames) for c in setups]  # warm-up pass, and the face counts
    times: list[list[float]] = [[] for _ in setups]
    for _ in range(repeats):
        for config, spent in zip(setups, times, strict=True):
            start = time.perf_counter()
            config.run(frames)
            spent.append((time.perf_counter() - start) / len(frames) * 1000.0)
    return [
        {"video": path.name, "frame (W x H)": f"{frames.shape[2]} x {frames.shape[1]}", "detector": config.detector,
         "threads": config.threads, "ms/frame median (min)": f"{statistics.median(spent):.1f} ({min(spent):.1f})",
         "faces": f"{sum(item is not None for item in result)}/{len(frames)}"}
        for config, spent, result in zip(setups, times, found, strict=True)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video-dir", type=Path, default=DEFAULT_VIDEO_DIR)
    parser.add_argument("--videos", nargs="+", default=DEFAULT_VIDEOS)
    parser.add_argument("--frames", type=int, default=16, help="frames per video (spread over it)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes; the median and min are reported")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the multi-threaded MTCNN row")
    parser.add_argument("--device", default="cpu", help="torch device of MTCNN (cpu, cuda)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    load = os.getloadavg()[0]
    setups = configs(args)
    rows = [row for name in args.videos for row in measure(args.video_dir / name, args.frames, args.repeats, setups)]
    print(f"CPUs: {os.cpu_count()}, MTCNN device: {args.device}, 1-min load average before the run: {load:.2f}, "
          f"{args.frames} frames per video, ms per frame: median (min) of {args.repeats} interleaved passes")
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
