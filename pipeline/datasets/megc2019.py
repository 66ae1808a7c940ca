"""MEGC2019 composite adapter: the 3-class ground truth joined to each source's own annotations.

Layout (each source in its own layout, read by its own adapter with ``root = <root>/<source>`` and its standard
annotation file)::

    <root>/combined_3class_gt.csv     (the composite ground truth: the standard annotation)
    <root>/casme2/                    (CASME II: see pipeline.datasets.casme2; micro.casme2_frames applies)
    <root>/samm/                      (SAMM: see pipeline.datasets.samm; samm/SAMM/006/… or samm/006/…)
    <root>/smic/                      (SMIC-HS: see pipeline.datasets.smic; micro.smic_labels / smic_apex apply)

``combined_3class_gt.csv`` (the file published for MEGC2019, e.g. MouathAb/AnalyseMiE-CNN_LSTM_SE): no header,
CRLF line ends, columns ``dataset, subject, filename, label`` with label 0 negative, 1 positive, 2 surprise;
442 rows: SMIC 164 (16 subjects), CASME II 145 (24), SAMM 133 (28). Names are normalised before the join: SAMM
subjects are un-padded in the CSV (``6`` for ``006``), SMIC clips are ``s01_ne_01`` for the folder ``s1_ne_01``
(subject ``s01`` for ``s1``), CASME II subjects are ``sub01`` as the adapter writes them.

The CSV defines the sample set: each CSV row becomes a sample carrying the source's frames, action units and
emotion, with ``label_name`` = the CSV's class (used by the protocol instead of mapping the emotion); a CSV row
with no match in its source (missing, or dropped by the source's adapter, whose reason is quoted) is dropped with
the reason; source rows absent from the CSV are not samples. ``sheet_row`` is the CSV line (1 = first line). A
CSV class that disagrees with the source's own emotion (the HS-E sheet's ``s18_sur_03`` is ``negative``, the
CSV says surprise) keeps the CSV class and is logged.

Repeats: two CSV rows naming the same (dataset, subject, clip) after normalisation would be the same (subject,
clip, onset) sample twice, so they fail, naming the CSV and both rows, as a repeated row fails in every adapter
(:mod:`pipeline.datasets.common`); the published CSV has none. A source's sheet with a repeated (subject, clip,
onset) fails in that source's adapter. A CSV row whose clip has several source rows (different onsets: several
micro-expressions in one clip) cannot be matched and is dropped with the reason.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from pipeline.config import MicroParams
from pipeline.datasets import casme2, samm, smic
from pipeline.datasets.common import DROPPED_COLUMNS, Annotations, check_unique
from pipeline.datasets.protocols import map_emotion
from pipeline.datasets.rows import first_reason
from pipeline.datasets.smic import canonical_clip, canonical_subject
from pipeline.sheets import AnnotationError, read_table

__all__ = ["CLASSES", "COLUMNS", "SOURCES", "STANDARD_ANNOTATION", "read", "read_composite"]

log = logging.getLogger(__name__)

STANDARD_ANNOTATION = "combined_3class_gt.csv"
PROTOCOL = "megc2019-3class"
COLUMNS = ["dataset", "subject", "filename", "label"]
CLASSES = {"0": "negative", "1": "positive", "2": "surprise"}
SOURCES = {"casme2": casme2, "samm": samm, "smic": smic}  # CSV dataset -> adapter module


def _number_or_same(text: str, pattern: str, template: str) -> str:
    match = re.fullmatch(pattern, text)
    return template.format(int(match[1])) if match else text


KEYS: dict[str, Callable[[str, str], tuple[str, str]]] = {  # (subject, clip) as the source's adapter writes them
    "casme2": lambda subject, clip: (_number_or_same(subject, r"(?:sub)?(\d+)", "sub{:02d}"), clip),
    "samm": lambda subject, clip: (_number_or_same(subject, r"(\d+)", "{:03d}"), clip),
    "smic": lambda subject, clip: (canonical_subject(subject), canonical_clip(clip)),
}


def read_composite(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read the composite CSV into ``(rows, dropped)``.

    Returns:
        ``rows``: ``sheet_row`` (CSV line), ``source`` (``casme2``/``samm``/``smic``), ``subject`` and ``clip``
        normalised to the source adapter's spelling, ``label_name`` (``negative``/``positive``/``surprise``);
        ``dropped`` (:data:`~pipeline.datasets.common.DROPPED_COLUMNS`): rows with an unknown dataset, an
        empty subject or filename, or a label other than 0/1/2; ``subject`` and ``clip`` normalised as in
        ``rows``.

    Raises:
        AnnotationError: missing or unreadable file, or two rows not dropped with the same (dataset, subject,
            clip) after normalisation (the message names the file and both rows).
    """
    table = read_table(path, COLUMNS, header=None, names=COLUMNS)
    table["sheet_row"] -= 1  # no header: the first line is row 1
    where = path.name + " row " + table["sheet_row"].astype(str)
    keys = [KEYS[d](s, f) if d in KEYS else (s, f) for d, s, f in zip(table["dataset"], table["subject"],
                                                                       table["filename"], strict=True)]
    rows = pd.DataFrame({"sheet_row": table["sheet_row"], "source": table["dataset"],
                         "subject": [k[0] for k in keys], "clip": [k[1] for k in keys],
                         "label_name": table["label"].map(CLASSES)})
    reason = first_reason([
        (~table["dataset"].isin(list(KEYS)),
         where + ": dataset " + table["dataset"].map(repr) + f" is not one of {sorted(KEYS)}"),
        (table["subject"] == "", where + ": empty subject"),
        (table["filename"] == "", where + ": empty filename"),
        (rows["label_name"].isna(), where + ": label " + table["label"].map(repr) + " is not 0, 1 or 2"),
    ])
    keep = reason == ""
    check_unique(rows[keep], path.name, ["source", "subject", "clip"], "(dataset, subject, clip)")
    dropped = pd.DataFrame({"source_dataset": table["dataset"], "sheet_row": table["sheet_row"],
                            "subject": rows["subject"], "clip": rows["clip"], "reason": reason})[~keep]
    return rows[keep].reset_index(drop=True), dropped[DROPPED_COLUMNS].reset_index(drop=True)


def _join(wanted: pd.DataFrame, source: Annotations, csv_name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Join the CSV rows of one source to that source's annotation rows on (subject, clip).

    Returns ``(rows, dropped)``: ``rows`` with the source's columns, ``sheet_row`` = CSV line and ``label_name``;
    ``dropped``: CSV rows with no (or more than one) matching source row, with the reason.
    """
    found = source.rows.drop(columns="sheet_row")
    counts = found.groupby(["subject", "clip"]).size().rename("matches")
    merged = wanted.merge(counts, on=["subject", "clip"], how="left")
    merged = merged.merge(found[~found.duplicated(["subject", "clip"], keep=False)], on=["subject", "clip"],
                          how="left")
    source_drops = source.dropped.drop_duplicates(["subject", "clip"]).set_index(["subject", "clip"])["reason"]
    reasons = []
    for row in merged.itertuples():
        where = f"{csv_name} row {row.sheet_row}: {row.source} subject {row.subject!r} clip {row.clip!r}"
        if row.matches > 1:
            reasons.append(f"{where} matches {int(row.matches)} rows of {source.where}")
        elif pd.isna(row.matches):
            quoted = source_drops.get((row.subject, row.clip))
            reasons.append(f"{where} was dropped by the {row.source} adapter: {quoted}" if quoted is not None
                           else f"{where} is not in {source.where}")
        else:
            reasons.append("")
    matched = merged.assign(reason=reasons)["reason"] == ""
    dropped = merged[~matched].assign(source_dataset=source.source, reason=[r for r in reasons if r])
    rows = merged[matched].drop(columns=["matches", "source"])
    return rows.astype({"onset_frame": "int64", "offset_frame": "int64"}), dropped[DROPPED_COLUMNS]


def _log_disagreements(rows: pd.DataFrame, source: str, csv_name: str) -> None:
    own = rows["emotion"].map(lambda e: map_emotion(PROTOCOL, source, e))
    differ = rows[own.ne(rows["label_name"])]
    for row in differ.itertuples():
        log.warning("%s row %d: %s/%s is %s in the CSV, its %s emotion %r maps to %s; the CSV class is kept",
                    csv_name, row.sheet_row, source, row.clip, row.label_name, source, row.emotion,
                    own[row.Index])


def read(params: MicroParams) -> list[Annotations]:
    """The composite's samples, one :class:`~pipeline.datasets.common.Annotations` per source present in the CSV.

    ``rows`` carry ``label_name``, the CSV's class; the CSV's rows that are not samples are in ``dropped``
    (those with an unknown dataset go with the first source).

    Raises:
        ValueError: ``params.protocol`` is not ``megc2019-3class`` (the CSV holds those classes only).
        AnnotationError: the CSV, or a source's annotation under ``root/<source>``, is missing or malformed
            (repeated rows included); or the CSV names none of casme2, samm, smic.
    """
    if params.protocol != PROTOCOL:
        raise ValueError(f"micro.dataset megc2019 is labelled in {PROTOCOL} classes only; micro.protocol is "
                         f"{params.protocol!r}")
    path = params.annotation if params.annotation is not None else params.root / STANDARD_ANNOTATION
    wanted, bad = read_composite(path)
    parts = []
    for name in sorted(set(wanted["source"])):
        adapter = SOURCES[name]
        sub = params.model_copy(update={"dataset": name, "root": params.root / name, "annotation": None})
        (source,) = adapter.read(sub)
        rows, dropped = _join(wanted[wanted["source"] == name], source, path.name)
        _log_disagreements(rows, name, path.name)
        parts.append(Annotations(source=name, rows=rows, dropped=dropped, frame_path=source.frame_path,
                                 where=path.name, apex_column=f"{source.apex_column} of {source.where}",
                                 layout=source.layout))
    if not parts:
        raise AnnotationError(f"{path}: no row of {sorted(SOURCES)} ({len(bad)} rows dropped)")
    parts[0].dropped = pd.concat([parts[0].dropped, bad[~bad["source_dataset"].isin(list(SOURCES))]],
                                 ignore_index=True)
    for part in parts:
        part.dropped = pd.concat([part.dropped, bad[bad["source_dataset"] == part.source]], ignore_index=True)
    return parts
