"""What every micro-expression adapter shares: reading a sheet, the apex policy, the label protocol, subject ids.

An adapter (one module per dataset, registered in :mod:`pipeline.datasets`) only knows its sheet and its on-disk
layout. It returns an :class:`Annotations`: one row per annotation row with the columns of
:data:`ANNOTATION_COLUMNS` (frames already parsed to int), the rows it could not parse (with the reason), and a
function giving the path of frame ``n`` of a clip. :func:`finalize` turns that into samples. Checking and parsing
a sheet's rows is :func:`pipeline.datasets.rows.split_rows`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.datasets.protocols import class_names, map_emotion

__all__ = [
    "ANNOTATION_COLUMNS",
    "DROPPED_COLUMNS",
    "SAMPLE_COLUMNS",
    "Annotations",
    "finalize",
]

ANNOTATION_COLUMNS = ["sheet_row", "subject", "clip", "onset_frame", "apex_frame", "offset_frame", "action_units",
                      "emotion"]
DROPPED_COLUMNS = ["source_dataset", "sheet_row", "subject", "clip", "reason"]
SAMPLE_COLUMNS = ["sample_id", "sheet_row", "dataset", "source_dataset", "subject", "clip", "onset_frame",
                  "apex_frame", "offset_frame", "label", "label_name", "action_units", "emotion", "onset_path",
                  "apex_path"]


@dataclass
class Annotations:
    """What an adapter read.

    Attributes:
        source: the dataset the rows come from (``'casme2'``, ``'samm'``, …): namespaces subject ids.
        rows: :data:`ANNOTATION_COLUMNS`; ``subject`` as the dataset writes it (``'01'``, ``'006'``, ``'s3'``),
            frames as int (``apex_frame`` None where the cell is not a frame number: the apex policy decides),
            ``emotion`` as written (stripped), ``sheet_row`` 1-based as a spreadsheet shows it.
        dropped: :data:`DROPPED_COLUMNS` for rows the adapter could not parse.
        frame_path: ``frame_path(subject, clip, frame) -> Path`` of one frame file.
        where: the annotation file's name, for messages.
        apex_column: the annotation's apex column, for messages.
    """

    source: str
    rows: pd.DataFrame
    dropped: pd.DataFrame
    frame_path: Callable[[str, str, int], Path]
    where: str
    apex_column: str = "apex"


def _apex_policy(rows: pd.DataFrame, policy: str, apex_column: str) -> tuple[pd.DataFrame, list[dict]]:
    """Apply the ``apex_outside`` policy to rows whose apex lies outside [onset, offset] or is missing.

    ``policy`` ``'middle'``: use the middle frame ``(onset + offset) // 2``; ``'drop'``: drop the row. A missing
    apex is None: the cell was not a frame number, like CASME II's ``'/'``. Either way each such row is reported.
    """
    apex = pd.to_numeric(rows["apex_frame"], errors="coerce")
    outside = apex.isna() | ~apex.between(rows["onset_frame"], rows["offset_frame"])
    rows = rows.copy()
    notes = []
    for i in rows.index[outside]:
        row = rows.loc[i]
        what = (f"apex {int(apex[i])} outside [onset {row.onset_frame}, offset {row.offset_frame}]"
                if pd.notna(apex[i]) else f"column {apex_column} is not a frame number")
        if policy == "middle":
            apex[i] = (row.onset_frame + row.offset_frame) // 2
            notes.append({"row": i, "reason": f"{what}: apex set to the middle frame {int(apex[i])}"})
        else:
            notes.append({"row": i, "reason": f"{what}: dropped (micro.apex_outside = drop)"})
    rows["apex_frame"] = apex
    if policy == "drop":
        rows = rows.drop(index=[n["row"] for n in notes])
    return rows.astype({"apex_frame": "int64"}), notes


def finalize(annotations: Annotations, dataset: str, protocol: str,
             apex_outside: str) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Apply the apex policy and the label protocol, namespace subjects and build sample ids.

    Args:
        annotations: what one source's adapter read.
        dataset: the configured dataset (``'megc2019'`` for a composite, else the source itself or ``'demo'``).
        protocol: the label protocol (``native`` or a key of :data:`pipeline.datasets.protocols.PROTOCOLS`).
        apex_outside: ``'middle'`` (an apex outside [onset, offset] or missing becomes the middle frame, noted)
            or ``'drop'`` (such rows are dropped).

    Returns:
        ``(samples, dropped, notes)``: ``samples`` has :data:`SAMPLE_COLUMNS` but ``label`` (assigned once the
        classes of every source are known); ``dropped`` has :data:`DROPPED_COLUMNS` (the adapter's drops, apex
        drops, labels outside the protocol); ``notes`` the apex fixes that kept a row.
    """
    where = annotations.where
    rows, apex_notes = _apex_policy(annotations.rows, apex_outside, annotations.apex_column)
    dropped = [annotations.dropped]
    fixes = [f"{where} row {annotations.rows.loc[n['row'], 'sheet_row']}: {n['reason']}" for n in apex_notes]
    if apex_outside == "drop":
        dropped.append(_dropped(annotations.source, annotations.rows.loc[[n["row"] for n in apex_notes]], fixes))
        fixes = []
    if "label_name" in rows:  # a composite's own ground truth (e.g. MEGC2019), already in protocol classes
        fixed = class_names(protocol)
        mapped = rows["label_name"].where(rows["label_name"].isin(fixed)) if fixed else rows["label_name"]
    else:
        mapped = rows["emotion"].map(lambda e: map_emotion(protocol, annotations.source, e))
    outside = mapped.isna()
    dropped.append(_dropped(annotations.source, rows[outside], [
        f"{where} row {r.sheet_row}: emotion {r.emotion!r} is outside protocol {protocol}"
        for r in rows[outside].itertuples()]))
    rows = rows[~outside].assign(label_name=mapped[~outside])
    samples = rows.assign(
        dataset=dataset, source_dataset=annotations.source,
        subject=[f"{annotations.source}/{s}" for s in rows["subject"]],
        onset_path=[str(annotations.frame_path(r.subject, r.clip, r.onset_frame)) for r in rows.itertuples()],
        apex_path=[str(annotations.frame_path(r.subject, r.clip, r.apex_frame)) for r in rows.itertuples()],
    )
    samples["sample_id"] = samples["subject"] + "/" + samples["clip"] + "/" + samples["onset_frame"].astype(str)
    return (samples[[c for c in SAMPLE_COLUMNS if c != "label"]].reset_index(drop=True),
            pd.concat(dropped, ignore_index=True)[DROPPED_COLUMNS], fixes)


def _dropped(source: str, rows: pd.DataFrame, reasons: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"source_dataset": source, "sheet_row": rows["sheet_row"].to_numpy(),
                         "subject": rows["subject"].to_numpy(), "clip": rows["clip"].to_numpy(), "reason": reasons},
                        columns=DROPPED_COLUMNS)
