"""Micro-expression samples → aligned onset/apex face crops.

A micro-expression moves the face by 0.5–2 px, less than a detector's jitter, so each clip gets ONE crop
transform, computed on its onset frame, and the same transform is applied to its apex frame (DESIGN §3).

Frames are checked before use: a source whose frame files are mostly missing fails (the layout does not match,
:func:`pipeline.datasets.check_frames`); a single missing, truncated or corrupt frame file drops its row with a
reason naming the file (:func:`pipeline.face.video.read_image`), never a half-grey crop.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pipeline.config import MicroParams
from pipeline.datasets import check_frames, load_dataset
from pipeline.face.align import align_clip, make_detector
from pipeline.face.optical_flow import flow_features
from pipeline.face.video import read_image
from pipeline.io import encode_array, encode_png

__all__ = ["Ingested", "ingest_micro", "samples_summary_markdown", "summarise"]

log = logging.getLogger(__name__)


class Ingested(NamedTuple):
    """What :func:`ingest_micro` returns.

    Attributes:
        samples: the adapter's sample columns plus ``onset_image``, ``apex_image`` (PNG bytes of
            ``(image_size_px, image_size_px, 3) uint8 RGB``), ``crop_matrix`` (the clip's ``(2, 3)`` transform
            from frame px to crop px, row-major, 6 floats), ``flow`` (with ``micro.optical_flow: tvl1``:
            :func:`pipeline.io.encode_array` bytes of ``(3, S, S) float16``, u and v in px of the crop and the
            optical strain, :func:`pipeline.face.optical_flow.flow_features` at the crop size) and ``image_size_px``.
        dropped: ``source_dataset, sheet_row, subject, clip, reason``: every annotation row that is not a sample.
        classes: class names in label order.
        fixes: ``source_dataset, sheet_row, subject, clip, apex_before, apex_after, reason``: the apex fixes
            (``micro.apex_outside = middle``) of rows that were kept.
    """

    samples: pd.DataFrame
    dropped: pd.DataFrame
    classes: list[str]
    fixes: pd.DataFrame


def ingest_micro(params: MicroParams, progress: bool = True) -> Ingested:
    """Read the dataset's annotations through its adapter and align every sample's onset and apex.

    Returns:
        An :class:`Ingested`. A row is dropped with its reason for a bad cell, the apex policy, a label outside
        the protocol, a missing, truncated or corrupt frame file (named), or no face on the onset frame.

    Raises:
        AnnotationError: the annotation sheet is missing or malformed, or repeats a (subject, clip, onset).
        DatasetLayoutError: more than :data:`pipeline.datasets.MAX_MISSING_SHARE` of one source's samples have no
            frame file (the message names the layout expected and a path tried).
        ValueError: no sample is left.
    """
    samples, dropped, classes, fixes, layouts = load_dataset(params)
    for reason in fixes["reason"]:
        log.warning("%s", reason)
    samples, missing = check_frames(samples, layouts)
    detector = make_detector(params.detector)
    onsets, apexes, flows, matrices, ok, failures = [], [], [], [], [], []
    for row in tqdm(samples.itertuples(index=False), total=len(samples), desc="align clips",
                    disable=None if progress else True):
        try:
            onset, apex, matrix = align_clip(read_image(Path(row.onset_path)), read_image(Path(row.apex_path)),
                                             params, detector)
        except (FileNotFoundError, ValueError) as err:
            failures.append({"source_dataset": row.source_dataset, "sheet_row": row.sheet_row,
                             "subject": row.subject, "clip": row.clip, "reason": f"{row.sample_id}: {err}"})
            ok.append(False)
            continue
        onsets.append(encode_png(onset))
        apexes.append(encode_png(apex))
        matrices.append(matrix.ravel().tolist())
        if params.optical_flow == "tvl1":  # (3, S, S) float16: u, v in px of the crop, optical strain
            flows.append(encode_array(flow_features(onset, apex, params.image_size_px).astype(np.float16)))
        ok.append(True)
    samples = samples[np.array(ok, dtype=bool)].reset_index(drop=True)
    samples["onset_image"], samples["apex_image"] = onsets, apexes
    samples["crop_matrix"] = matrices
    if params.optical_flow == "tvl1":
        samples["flow"] = flows
    samples["image_size_px"] = params.image_size_px
    dropped = pd.concat([frame for frame in (dropped, missing, pd.DataFrame(failures, columns=dropped.columns))
                         if len(frame)] or [dropped], ignore_index=True)
    for reason in dropped["reason"]:
        log.info("dropped: %s", reason)
    if len(dropped):
        log.warning("%d annotation rows dropped (%s); each with its reason in dropped.parquet and summary.md",
                    len(dropped), ", ".join(f"{k} {v}" for k, v in dropped["source_dataset"].value_counts().items()))
    if samples.empty:
        raise ValueError(f"{params.root}: no usable sample ({len(dropped)} annotation rows dropped)")
    return Ingested(samples, dropped, classes, fixes)


def summarise(samples: pd.DataFrame, dropped: pd.DataFrame, classes: list[str], protocol: str,
              fixes: pd.DataFrame) -> dict:
    """Human-readable counts: per class (every class listed), per subject, per source; every drop and apex fix.

    Returns:
        A JSON-ready dict; ``dropped_rows`` and ``apex_fix_rows`` hold one record per row of ``dropped`` and
        ``fixes`` (``apex_before`` None where the apex cell was not a frame number).
    """
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
        "apex_fixes": len(fixes),
        "apex_fix_rows": fixes.astype(object).where(fixes.notna(), None).to_dict("records"),
    }


def samples_summary_markdown(samples: pd.DataFrame, dropped: pd.DataFrame, summary: dict, fixes: pd.DataFrame) -> str:
    """The summary as a Markdown report: totals, counts per class, subject and source, every drop and apex fix."""
    counts = pd.crosstab(samples["subject"], samples["label_name"], margins=True, margins_name="total")
    by_source = samples.groupby("source_dataset").agg(samples=("sample_id", "size"), subjects=("subject", "nunique"))
    reasons = dropped[["source_dataset", "sheet_row", "subject", "clip", "reason"]]
    fixed = fixes.assign(apex_before=[v if v is not None else "not a number" for v in fixes["apex_before"]])
    return "\n\n".join([
        f"# Micro-expression samples ({summary['protocol']})",
        f"{summary['samples']} samples from {summary['subjects']} subjects; {summary['dropped']} annotation rows "
        f"dropped; {len(fixes)} apexes moved to the middle frame. Classes in label order: "
        f"{', '.join(summary['classes'])}.",
        "## Per source\n\n" + by_source.to_markdown(),
        "## Per subject and class\n\n" + counts.to_markdown(),
        "## Dropped annotation rows\n\n" + (reasons.to_markdown(index=False) if len(reasons) else "None."),
        "## Apex fixes (micro.apex_outside = middle)\n\n" + (fixed.to_markdown(index=False) if len(fixed)
                                                               else "None."),
    ]) + "\n"
