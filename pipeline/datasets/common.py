"""What every micro-expression adapter shares: the apex policy, the label protocol, subject ids, unique keys, frames.

An adapter (one module per dataset, registered in :mod:`pipeline.datasets`) only knows its sheet and its on-disk
layout. It returns an :class:`Annotations`: one row per annotation row with the columns of
:data:`ANNOTATION_COLUMNS` (frames already parsed to int), the rows it could not parse (with the reason), a
function giving the path of frame ``n`` of a clip and a description of where frame files are expected.
:func:`finalize` turns that into samples; :func:`check_frames` splits samples by whether their frame files exist
and fails on a layout that does not match the tree. Checking and parsing a sheet's rows is
:func:`pipeline.datasets.rows.split_rows`.

Policies shared by every adapter:

- **Repeated rows fail.** Two annotation rows with the same (subject, clip, onset), after each adapter's
  normalisation of subject and clip names, raise :class:`~pipeline.sheets.AnnotationError` naming the file and
  both rows (:func:`check_unique`). None of the real sheets (CASME II 2014 and 2019, SAMM v2, SMIC-HS-E and its
  ``_orig``, CAS(ME)^3 part A, MMEW, the MEGC2019 ``combined_3class_gt.csv``) holds such a repeat, so failing costs
  no real data; a repeat is a data error the user must see and resolve (the two rows may disagree on apex or
  label, and a sample counted twice weighs twice in training and in its LOSO fold), where dropping one of them
  would pick a row silently.
- **Missing frame files**: a sample whose onset or apex file does not exist is dropped with the path, but when
  more than :data:`MAX_MISSING_SHARE` of one source's samples miss a frame file the frames are not where the
  adapter looks (a wrong ``micro.root``, layout or ``micro.casme2_frames``): :func:`check_frames` raises
  :class:`DatasetLayoutError` naming the expected layout and a path it tried.
- **Subject ids are namespaced** ``<source>/<subject>`` (``casme2/sub01``) in samples, dropped rows and apex fixes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.datasets.protocols import class_names, map_emotion
from pipeline.sheets import AnnotationError

__all__ = [
    "ANNOTATION_COLUMNS",
    "DROPPED_COLUMNS",
    "FIX_COLUMNS",
    "MAX_MISSING_SHARE",
    "SAMPLE_COLUMNS",
    "Annotations",
    "DatasetLayoutError",
    "check_frames",
    "check_unique",
    "finalize",
    "namespaced",
]

ANNOTATION_COLUMNS = ["sheet_row", "subject", "clip", "onset_frame", "apex_frame", "offset_frame", "action_units",
                      "emotion"]
DROPPED_COLUMNS = ["source_dataset", "sheet_row", "subject", "clip", "reason"]
FIX_COLUMNS = ["source_dataset", "sheet_row", "subject", "clip", "apex_before", "apex_after", "reason"]
SAMPLE_COLUMNS = ["sample_id", "sheet_row", "dataset", "source_dataset", "subject", "clip", "onset_frame",
                  "apex_frame", "offset_frame", "label", "label_name", "action_units", "emotion", "onset_path",
                  "apex_path"]

# More than this share of one source's samples without a frame file means the tree is not in the layout the
# adapter reads (wrong micro.root, SAMM folder, CASME II Cropped vs raw...): ingestion fails instead of dropping
# them. A right tree misses a handful of files at most (the real trees: none; CAS(ME)^3's video written 'J': one
# row), a wrong one misses all or, with some folders misplaced, most; a half-copied dataset is better restricted
# to the subjects present through micro.annotation than silently halved.
MAX_MISSING_SHARE = 0.5

_DUPLICATE_HINT = ("each sample must be annotated once: delete the repeated row (for an official sheet, edit a copy "
                   "and point micro.annotation at it)")


class DatasetLayoutError(ValueError):
    """The frame files are not where the adapter looks; the message names the expected layout and a path tried."""


@dataclass
class Annotations:
    """What an adapter read.

    Attributes:
        source: the dataset the rows come from (``'casme2'``, ``'samm'``, …): namespaces subject ids.
        rows: :data:`ANNOTATION_COLUMNS`; ``subject`` as the dataset writes it (``'01'``, ``'006'``, ``'s3'``),
            frames as int (``apex_frame`` None where the cell is not a frame number: the apex policy decides),
            ``emotion`` as written (stripped), ``sheet_row`` 1-based as a spreadsheet shows it.
        dropped: :data:`DROPPED_COLUMNS` for rows the adapter could not parse (``subject`` as written: namespaced
            by :func:`finalize`).
        frame_path: ``frame_path(subject, clip, frame) -> Path`` of one frame file.
        where: the annotation file's name, for messages.
        apex_column: the annotation's apex column, for messages.
        layout: where frame files are expected (a path pattern under the actual root, and any hint about a
            setting, e.g. ``micro.casme2_frames``), for the message of :func:`check_frames`.
    """

    source: str
    rows: pd.DataFrame
    dropped: pd.DataFrame
    frame_path: Callable[[str, str, int], Path]
    where: str
    apex_column: str = "apex"
    layout: str = ""


def namespaced(sources: pd.Series, subjects: pd.Series) -> pd.Series:
    """``<source>/<subject>`` per row (``'casme2/sub01'``); an empty subject (a row dropped for it) stays ``''``."""
    subjects = subjects.astype(str)
    return (sources.astype(str) + "/" + subjects).where(subjects != "", "")


def check_unique(rows: pd.DataFrame, where: str, columns: Sequence[str] = ("subject", "clip", "onset_frame"),
                 what: str = "(subject, clip, onset)") -> None:
    """Fail on two rows of ``rows`` with the same key (see the module docstring for why repeats fail).

    Args:
        rows: annotation rows with ``sheet_row`` and ``columns``.
        where: the annotation file (or folder), for the message.
        columns: the key columns.
        what: the key's name in the message.

    Raises:
        AnnotationError: e.g. ``"CASME2-coding-20140508.xlsx rows 12 and 40: the same (subject, clip, onset)
            sub01/EP02_01f/46"``, one clause per repeated key (the first 10, then how many more).
    """
    key = pd.Series(["/".join(map(str, values)) for values in zip(*(rows[c] for c in columns), strict=True)],
                    index=rows.index, dtype=object)
    repeated = key.duplicated(keep=False)
    if not repeated.any():
        return
    groups = rows.loc[repeated, "sheet_row"].groupby(key[repeated], sort=False).apply(list)
    clauses = [f"{where} rows {_and(numbers)}: the same {what} {k}" for k, numbers in groups.items()]
    more = f"; and {len(clauses) - 10} more repeated keys" if len(clauses) > 10 else ""
    raise AnnotationError("; ".join(clauses[:10]) + more + f" ({_DUPLICATE_HINT})")


def _and(numbers: list) -> str:
    """``[12, 40]`` -> ``'12 and 40'``; ``[1, 2, 3]`` -> ``'1, 2 and 3'``."""
    text = [str(n) for n in numbers]
    return ", ".join(text[:-1]) + " and " + text[-1]


def _apex_policy(rows: pd.DataFrame, policy: str, apex_column: str) -> tuple[pd.DataFrame, list[dict]]:
    """Apply the ``apex_outside`` policy to rows whose apex lies outside [onset, offset] or is missing.

    ``policy`` ``'middle'``: use the middle frame ``(onset + offset) // 2``; ``'drop'``: drop the row. A missing
    apex is None: the cell was not a frame number, like CASME II's ``'/'``.

    Returns:
        ``(rows, events)``: the rows kept (``apex_frame`` int64); one event per such row: ``index`` (in
        ``rows``), ``apex_before`` (int, or None when the cell was not a frame number), ``apex_after`` (the middle
        frame, or None when dropped) and ``what`` (the text of the problem and what was done).
    """
    apex = pd.to_numeric(rows["apex_frame"], errors="coerce")
    outside = apex.isna() | ~apex.between(rows["onset_frame"], rows["offset_frame"])
    rows = rows.copy()
    events = []
    for i in rows.index[outside]:
        row = rows.loc[i]
        before = None if pd.isna(apex[i]) else int(apex[i])
        what = (f"apex {before} outside [onset {row.onset_frame}, offset {row.offset_frame}]"
                if before is not None else f"column {apex_column} is not a frame number")
        if policy == "middle":
            apex[i] = (row.onset_frame + row.offset_frame) // 2
            events.append({"index": i, "apex_before": before, "apex_after": int(apex[i]),
                           "what": f"{what}: apex set to the middle frame {int(apex[i])}"})
        else:
            events.append({"index": i, "apex_before": before, "apex_after": None,
                           "what": f"{what}: dropped (micro.apex_outside = drop)"})
    rows["apex_frame"] = apex
    if policy == "drop":
        rows = rows.drop(index=[e["index"] for e in events])
    return rows.astype({"apex_frame": "int64"}), events


def finalize(annotations: Annotations, dataset: str, protocol: str,
             apex_outside: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Check keys, apply the apex policy and the label protocol, namespace subjects and build sample ids.

    Args:
        annotations: what one source's adapter read.
        dataset: the configured dataset (``'megc2019'`` for a composite, else the source itself or ``'demo'``).
        protocol: the label protocol (``native`` or a key of :data:`pipeline.datasets.protocols.PROTOCOLS`).
        apex_outside: ``'middle'`` (an apex outside [onset, offset] or missing becomes the middle frame, listed
            in ``fixes``) or ``'drop'`` (such rows are dropped).

    Returns:
        ``(samples, dropped, fixes)``: ``samples`` has :data:`SAMPLE_COLUMNS` but ``label`` (assigned once the
        classes of every source are known); ``dropped`` has :data:`DROPPED_COLUMNS` (the adapter's drops, apex
        drops, labels outside the protocol); ``fixes`` has :data:`FIX_COLUMNS`: one row per apex moved to the
        middle frame (``apex_before`` None where the cell was not a frame number). Subjects are
        ``<source>/<subject>`` in all three.

    Raises:
        AnnotationError: two rows with the same (subject, clip, onset) (:func:`check_unique`).
    """
    where, source = annotations.where, annotations.source
    check_unique(annotations.rows, where)
    rows, events = _apex_policy(annotations.rows, apex_outside, annotations.apex_column)
    dropped = [annotations.dropped]
    hit = annotations.rows.loc[[e["index"] for e in events]]
    reasons = [f"{where} row {r}: {e['what']}" for r, e in zip(hit["sheet_row"], events, strict=True)]
    if apex_outside == "drop":
        dropped.append(_dropped(source, hit, reasons))
        events, reasons, hit = [], [], hit.iloc[:0]
    fixes = pd.DataFrame({
        "source_dataset": source, "sheet_row": hit["sheet_row"].to_numpy(),
        "subject": [f"{source}/{s}" for s in hit["subject"]], "clip": hit["clip"].to_numpy(),
        "apex_before": pd.Series([e["apex_before"] for e in events], dtype=object),
        "apex_after": pd.Series([e["apex_after"] for e in events], dtype=object), "reason": reasons,
    }, columns=FIX_COLUMNS)
    if "label_name" in rows:  # a composite's own ground truth (e.g. MEGC2019), already in protocol classes
        fixed = class_names(protocol)
        mapped = rows["label_name"].where(rows["label_name"].isin(fixed)) if fixed else rows["label_name"]
    else:
        mapped = rows["emotion"].map(lambda e: map_emotion(protocol, source, e))
    outside = mapped.isna()
    dropped.append(_dropped(source, rows[outside], [
        f"{where} row {r.sheet_row}: emotion {r.emotion!r} is outside protocol {protocol}"
        for r in rows[outside].itertuples()]))
    rows = rows[~outside].assign(label_name=mapped[~outside])
    samples = rows.assign(
        dataset=dataset, source_dataset=source,
        subject=[f"{source}/{s}" for s in rows["subject"]],
        onset_path=[str(annotations.frame_path(r.subject, r.clip, r.onset_frame)) for r in rows.itertuples()],
        apex_path=[str(annotations.frame_path(r.subject, r.clip, r.apex_frame)) for r in rows.itertuples()],
    )
    samples["sample_id"] = samples["subject"] + "/" + samples["clip"] + "/" + samples["onset_frame"].astype(str)
    dropped = pd.concat(dropped, ignore_index=True)[DROPPED_COLUMNS]
    dropped["subject"] = namespaced(dropped["source_dataset"], dropped["subject"])
    return samples[[c for c in SAMPLE_COLUMNS if c != "label"]].reset_index(drop=True), dropped, fixes


def _dropped(source: str, rows: pd.DataFrame, reasons: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"source_dataset": source, "sheet_row": rows["sheet_row"].to_numpy(),
                         "subject": rows["subject"].to_numpy(), "clip": rows["clip"].to_numpy(), "reason": reasons},
                        columns=DROPPED_COLUMNS)


def check_frames(samples: pd.DataFrame, layouts: dict[str, str],
                 max_share: float = MAX_MISSING_SHARE) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``samples`` by whether their onset and apex frame files exist.

    Args:
        samples: :data:`SAMPLE_COLUMNS` (``onset_path``, ``apex_path``, ``source_dataset``, ``sample_id``).
        layouts: source dataset -> where its frames are expected (:attr:`Annotations.layout`), for the message.
        max_share: the share of one source's samples that may miss a frame file (default
            :data:`MAX_MISSING_SHARE`); more fails.

    Returns:
        ``(kept, dropped)``: the samples whose two files exist (index reset), and :data:`DROPPED_COLUMNS` for the
        others, the reason naming the missing file.

    Raises:
        DatasetLayoutError: more than ``max_share`` of one source's samples miss a frame file, e.g. ``"samm: 133
            of 133 samples have no frame file …; expected <root>/SAMM/<subject>/…; tried
            /x/SAMM/006/006_1_2/006_05562.jpg"``.
    """
    onset_ok = samples["onset_path"].map(lambda p: Path(p).is_file()).astype(bool)
    apex_ok = samples["apex_path"].map(lambda p: Path(p).is_file()).astype(bool)
    missing = ~(onset_ok & apex_ok)
    path = samples["onset_path"].where(~onset_ok, samples["apex_path"])
    for source, flags in missing.groupby(samples["source_dataset"], sort=False):
        if flags.sum() > max_share * len(flags):
            raise DatasetLayoutError(
                f"{source}: {int(flags.sum())} of {len(flags)} samples have no frame file (more than "
                f"{max_share:.0%}: the frames are not where the {source} adapter looks; check micro.root and the "
                f"layout); expected {layouts.get(source) or 'the layout of ' + source}; tried "
                f"{path[flags[flags].index[0]]}")
    gone = samples[missing]
    dropped = pd.DataFrame({"source_dataset": gone["source_dataset"], "sheet_row": gone["sheet_row"],
                            "subject": gone["subject"], "clip": gone["clip"],
                            "reason": gone["sample_id"] + ": " + path[missing] + ": frame file missing"},
                           columns=DROPPED_COLUMNS)
    return samples[~missing].reset_index(drop=True), dropped.reset_index(drop=True)
