"""The samples table that ``ingest_micro`` writes and fine-tuning and evaluation read (``paths.micro_dir``).

Files: ``samples.parquet`` (one row per sample: ids, subject, frames, ``label``, ``label_name``, the onset/apex
crops as PNG bytes), ``dropped.parquet`` (``source_dataset, sheet_row, subject, clip, reason`` of every annotation
row that is not a sample) and ``summary.json`` (counts, the dropped rows, the apex fixes, and ``classes``: the
class names in label order); subjects are ``<source>/<subject>`` (``casme2/sub01``) in all of them. Readers need
only this module, not the ingestion code or any dataset adapter.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

__all__ = ["DROPPED_FILE", "SAMPLES_FILE", "SUMMARY_FILE", "read_classes", "read_samples"]

SAMPLES_FILE = "samples.parquet"
DROPPED_FILE = "dropped.parquet"
SUMMARY_FILE = "summary.json"


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run `dvc repro ingest_micro`")
    return path


def read_classes(micro_dir: Path) -> list[str]:
    """Class names in label order (label ``i`` is ``classes[i]``), as ``ingest_micro`` wrote them.

    Raises:
        FileNotFoundError: no ``summary.json`` in ``micro_dir`` (run the ingest_micro stage).
    """
    return list(json.loads(_existing(micro_dir / SUMMARY_FILE).read_text())["classes"])


def read_samples(micro_dir: Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The samples table (all columns, or ``columns``), in the order ``ingest_micro`` wrote it.

    Raises:
        FileNotFoundError: no ``samples.parquet`` in ``micro_dir`` (run the ingest_micro stage).
    """
    return pd.read_parquet(_existing(micro_dir / SAMPLES_FILE), columns=None if columns is None else list(columns))
