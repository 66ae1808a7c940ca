"""Micro-expression samples → aligned onset/apex face crops.

A micro-expression moves the face by 0.5–2 px, less than a detector's jitter, so each clip gets ONE crop
transform, computed on its onset frame, and the same transform is applied to its apex frame (DESIGN §3).
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pipeline.config import MicroParams
from pipeline.datasets import load_dataset
from pipeline.io import encode_png
from pipeline.video import HaarFaceDetector, crop_matrix, warp_face

__all__ = ["align_clip", "ingest_micro", "read_image", "summarise", "summary_markdown"]

log = logging.getLogger(__name__)


def read_image(path: Path) -> np.ndarray:
    """Read a frame file as ``(H, W, 3) uint8 RGB``.

    Raises:
        FileNotFoundError: the file does not exist or cannot be decoded (the message names it).
    """
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"{path}: frame file missing or not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def align_clip(onset: np.ndarray, apex: np.ndarray, params: MicroParams,
               detector: HaarFaceDetector | None) -> tuple[np.ndarray, np.ndarray]:
    """Crop onset and apex with one transform computed on the onset frame.

    Args:
        onset: ``(H, W, 3) uint8 RGB`` onset frame of the clip.
        apex: ``(H, W, 3) uint8 RGB`` apex frame of the same clip (same size as ``onset``).
        params: the ``micro`` section (``box_scale``, ``image_size_px``).
        detector: Haar detector, or None for pre-cropped faces (the centred square of the frame is used).

    Returns:
        ``(onset_crop, apex_crop)``, each ``(image_size_px, image_size_px, 3) uint8 RGB``.

    Raises:
        ValueError: frames of different sizes, or no face found on the onset frame.
    """
    if onset.shape != apex.shape:
        raise ValueError(f"onset {onset.shape} and apex {apex.shape} frames differ in size")
    height, width = onset.shape[:2]
    if detector is None:
        side = float(min(height, width))
        box, scale = ((width - side) / 2, (height - side) / 2, side, side), 1.0
    else:
        box, scale = detector.detect(onset), params.box_scale
        if box is None:
            raise ValueError("no face found on the onset frame")
    matrix = crop_matrix(box, scale, params.image_size_px)
    return warp_face(onset, matrix, params.image_size_px), warp_face(apex, matrix, params.image_size_px)


def ingest_micro(params: MicroParams, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Read the dataset's annotations through its adapter and align every sample's onset and apex.

    Returns:
        ``(samples, dropped, classes)``: ``samples`` has the adapter's columns plus ``onset_image``,
        ``apex_image`` (PNG bytes of ``(image_size_px, image_size_px, 3) uint8 RGB``) and ``image_size_px``;
        ``dropped`` has ``source_dataset, sheet_row, subject, clip, reason`` for every annotation row that is not
        a sample (bad cell, apex policy, label outside the protocol, frame file missing, no face); ``classes``
        the class names in label order.

    Raises:
        AnnotationError: the annotation sheet is missing or malformed.
        ValueError: no sample is left.
    """
    samples, dropped, classes, notes = load_dataset(params)
    for note in notes:
        log.warning("%s", note)
    detector = HaarFaceDetector() if params.detector == "haar" else None
    onsets, apexes, ok, failures = [], [], [], []
    for row in tqdm(samples.itertuples(index=False), total=len(samples), desc="align clips",
                    disable=None if progress else True):
        try:
            onset, apex = align_clip(read_image(Path(row.onset_path)), read_image(Path(row.apex_path)), params,
                                     detector)
        except (FileNotFoundError, ValueError) as err:
            failures.append({"source_dataset": row.source_dataset, "sheet_row": row.sheet_row,
                             "subject": row.subject, "clip": row.clip, "reason": f"{row.sample_id}: {err}"})
            ok.append(False)
            continue
        onsets.append(encode_png(onset))
        apexes.append(encode_png(apex))
        ok.append(True)
    samples = samples[np.array(ok, dtype=bool)].reset_index(drop=True)
    samples["onset_image"], samples["apex_image"] = onsets, apexes
    samples["image_size_px"] = params.image_size_px
    dropped = pd.concat([dropped, pd.DataFrame(failures, columns=dropped.columns)], ignore_index=True)
    for reason in dropped["reason"]:
        log.info("dropped: %s", reason)
    if samples.empty:
        raise ValueError(f"{params.root}: no usable sample ({len(dropped)} annotation rows dropped)")
    return samples, dropped, classes


def summarise(samples: pd.DataFrame, dropped: pd.DataFrame, classes: list[str], protocol: str) -> dict:
    """Human-readable counts: per class (every class listed), per subject, per source; every dropped row."""
    per_class = samples["label_name"].value_counts()
    return {
        "protocol": protocol,
        "classes": classes,
        "samples": len(samples),
        "subjects": int(samples["subject"].nunique()),
        "per_class": {name: int(per_class.get(name, 0)) for name in classes},
        "per_subject": samples["subject"].value_counts().sort_index().to_dict(),
        "per_source": samples["source_dataset"].value_counts().to_dict(),
        "dropped": len(dropped),
        "dropped_rows": dropped.to_dict("records"),
    }


def summary_markdown(samples: pd.DataFrame, dropped: pd.DataFrame, summary: dict) -> str:
    """The summary as a Markdown report: totals, counts per class, per subject, per source, and every drop."""
    counts = pd.crosstab(samples["subject"], samples["label_name"], margins=True, margins_name="total")
    by_source = samples.groupby("source_dataset").agg(samples=("sample_id", "size"), subjects=("subject", "nunique"))
    reasons = dropped[["source_dataset", "sheet_row", "subject", "clip", "reason"]]
    return "\n\n".join([
        f"# Micro-expression samples ({summary['protocol']})",
        f"{summary['samples']} samples from {summary['subjects']} subjects; {summary['dropped']} annotation rows "
        f"dropped. Classes in label order: {', '.join(summary['classes'])}.",
        "## Per source\n\n" + by_source.to_markdown(),
        "## Per subject and class\n\n" + counts.to_markdown(),
        "## Dropped annotation rows\n\n" + (reasons.to_markdown(index=False) if len(reasons) else "None."),
    ]) + "\n"
