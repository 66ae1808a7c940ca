"""Alignment error of the face detectors on the demo, against the renderer's true landmarks (issue 12).

    python -m benchmarks.alignment_error [--subjects 8] [--clips-per-class 4] [--size 112] [--macro-every 10]

Renders the demo (the params.yaml ``synthesize`` section, with the subjects and clips asked for) into a
temporary folder and, for every micro clip's onset frame and every ``--macro-every``-th NEUTRAL macro frame
(no expression under way: the ground truth is the neutral face's landmarks under head motion), computes the
crop / alignment transform of each detector (``none``, ``haar``, ``mtcnn``; :func:`pipeline.face.align.clip_matrix`)
and maps the five TRUE landmarks (eyes, nose tip, mouth corners) through it.

The error of a point is its distance, in px of the ``--size`` crop, from its canonical position. Each detector's
canonical positions are fitted: ONE similarity transform for all frames (least squares) maps its aligned true
points onto the canonical template, the most favourable placement. ``haar`` and ``none`` have no template of
their own, and MTCNN's points are not defined as the renderer's (its "nose" sits ~2 px above the rendered nose
tip), so a constant offset is not counted against any detector; the residual measures how consistently a
detector places the same facial points, frame after frame and subject after subject, which is what a model of
sub-pixel motion needs. Printed: per detector and footage, frames with a
face, median and 95th percentile of the point errors, and the detector's cost per frame (median, this CPU).

The last rows run macro ingestion itself on every frame of each macro video (``macro.detector`` haar or mtcnn:
key frames ``detect_every_s`` apart, the track confirmed, interpolated and smoothed; ``pipeline.ingest.macro``)
and score each stored frame's transform the same way, with the wall time per decoded frame (decoding included).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pipeline.config import load_params
from pipeline.face.align import apply_matrix, canonical_template, clip_matrix, make_detector, similarity_matrix
from pipeline.synth import render_demo
from pipeline.synth.demo import LANDMARK_COLUMNS

log = logging.getLogger("alignment_error")
DETECTORS = ("none", "haar", "mtcnn")


def _micro_frames(micro_dir: Path, truth: pd.DataFrame) -> list[tuple[np.ndarray, np.ndarray]]:
    frames = []
    for row in truth.itertuples():
        path = micro_dir / "Cropped" / row.subject / row.clip / f"reg_img{row.onset_frame}.jpg"
        image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        points = np.array([getattr(row, c) for c in LANDMARK_COLUMNS], float).reshape(5, 2)
        frames.append((image, points))
    return frames


def _macro_frames(macro_dir: Path, every: int) -> list[tuple[np.ndarray, np.ndarray]]:
    import decord

    table = pd.read_parquet(macro_dir / "landmarks.parquet")
    frames = []
    for video, part in table.groupby("video", sort=True):
        neutral = part[part["expression"] == 0].iloc[::every]
        reader = decord.VideoReader(str(macro_dir / f"{video}.mp4"))
        images = reader.get_batch(neutral["frame_index"].tolist()).asnumpy()
        for image, (_, row) in zip(images, neutral.iterrows(), strict=True):
            frames.append((image, row[LANDMARK_COLUMNS].to_numpy(float).reshape(5, 2)))
    return frames


def measure(frames: list[tuple[np.ndarray, np.ndarray]], detector_name: str, size: int, box_scale: float,
            margin: float) -> dict:
    """Point errors (px at ``size``) and cost per frame of one detector on ``frames`` (image, true points)."""
    detector = make_detector(detector_name)
    aligned, costs = [], []
    for image, points in frames:
        start = time.perf_counter()
        try:
            matrix = clip_matrix(image, detector, size, box_scale, margin)
        except ValueError:  # no face
            continue
        finally:
            costs.append(time.perf_counter() - start)
        aligned.append(apply_matrix(matrix, points))
    if not aligned:
        return {"detector": detector_name, "faces": f"0/{len(frames)}"}
    aligned = np.stack(aligned)  # (n, 5, 2)
    template = canonical_template(size, margin)
    fit = similarity_matrix(aligned.reshape(-1, 2), np.tile(template, (len(aligned), 1)))  # the best placement
    aligned = apply_matrix(fit, aligned.reshape(-1, 2)).reshape(aligned.shape)
    errors = np.linalg.norm(aligned - template[None], axis=-1).ravel()
    return {"detector": detector_name, "faces": f"{len(aligned)}/{len(frames)}",
            "median_px": round(float(np.median(errors)), 2), "p95_px": round(float(np.percentile(errors, 95)), 2),
            "ms_per_frame": round(1e3 * float(np.median(costs)), 1)}


def measure_macro_track(macro_dir: Path, detector_name: str, size: int) -> dict:
    """Point errors of every frame the macro ingestion stores with ``macro.detector: detector_name``."""
    from pipeline.ingest.macro import track_video

    params = load_params("params.yaml").macro.model_copy(update={"detector": detector_name, "image_size_px": size})
    truth = pd.read_parquet(macro_dir / "landmarks.parquet")
    aligned, n_frames, seconds = [], 0, 0.0
    for video, part in truth.groupby("video", sort=True):
        points = part.set_index("frame_index")[LANDMARK_COLUMNS]
        path = macro_dir / f"{video}.mp4"
        start = time.perf_counter()
        for batch in track_video(path, params, make_detector(detector_name, "macro.detector")):
            n_frames += len(batch.frame_index)
            for frame_index, matrix in zip(batch.frame_index[~np.isnan(batch.boxes[:, 0])], batch.matrices,
                                           strict=True):
                aligned.append(apply_matrix(matrix, points.loc[frame_index].to_numpy(float).reshape(5, 2)))
        seconds += time.perf_counter() - start
    aligned = np.stack(aligned)
    template = canonical_template(size, params.align_margin)
    fit = similarity_matrix(aligned.reshape(-1, 2), np.tile(template, (len(aligned), 1)))
    errors = np.linalg.norm(apply_matrix(fit, aligned.reshape(-1, 2)).reshape(aligned.shape) - template[None],
                            axis=-1).ravel()
    return {"detector": detector_name, "faces": f"{len(aligned)}/{n_frames}",
            "median_px": round(float(np.median(errors)), 2), "p95_px": round(float(np.percentile(errors, 95)), 2),
            "ms_per_frame": round(1e3 * seconds / max(n_frames, 1), 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--clips-per-class", type=int, default=4)
    parser.add_argument("--macro-identities", type=int, default=4)
    parser.add_argument("--size", type=int, default=112, help="side of the aligned crop, px")
    parser.add_argument("--macro-every", type=int, default=10, help="every n-th neutral macro frame")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    params = load_params("params.yaml")
    synth = params.synthesize.model_copy(update={"n_subjects": args.subjects, "clips_per_class": args.clips_per_class,
                                                 "macro_identities": args.macro_identities})
    with tempfile.TemporaryDirectory() as tmp:
        micro_dir, macro_dir = Path(tmp) / "micro", Path(tmp) / "macro"
        truth = render_demo(synth, micro_dir, macro_dir, progress=False)
        footage = {"micro onset frames (pre-cropped face)": _micro_frames(micro_dir, truth),
                   "macro neutral frames (face in a 2x canvas)": _macro_frames(macro_dir, args.macro_every)}
        rows = []
        for name, frames in footage.items():
            for detector in DETECTORS:
                if detector == "none" and "macro" in name:
                    continue  # the centred square of a macro canvas is not a face crop
                rows.append({"footage": name, **measure(frames, detector, args.size, params.micro.box_scale,
                                                        params.micro.align_margin)})
        for detector in ("haar", "mtcnn"):
            rows.append({"footage": "macro videos, every frame, tracked by ingest_macro",
                         **measure_macro_track(macro_dir, detector, args.size)})
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
