"""Micro-expression dataset adapters (``micro.dataset`` in params.yaml) and the code they share.

Each adapter module has ``read(params: MicroParams) -> list[Annotations]`` (one entry per source dataset: a
composite such as MEGC2019 returns several) and knows only its sheet and on-disk layout;
:func:`load_dataset` applies what is common (apex policy, label protocol, namespaced subject ids, unique keys).
The demo is written in the CASME II layout and goes through the CASME II adapter.
"""

from __future__ import annotations

import importlib

import pandas as pd

from pipeline.config import MicroParams
from pipeline.datasets.common import AnnotationError, finalize
from pipeline.datasets.protocols import class_names

__all__ = ["ADAPTERS", "AnnotationError", "load_dataset"]

ADAPTERS: dict[str, str] = {  # micro.dataset -> adapter module
    "demo": "pipeline.datasets.casme2",
    "casme2": "pipeline.datasets.casme2",
    "samm": "pipeline.datasets.samm",
    "smic": "pipeline.datasets.smic",
    "casme3": "pipeline.datasets.casme3",
    "mmew": "pipeline.datasets.mmew",
    "megc2019": "pipeline.datasets.megc2019",
}


def load_dataset(params: MicroParams) -> tuple[pd.DataFrame, pd.DataFrame, list[str], list[str]]:
    """Read ``params.root`` through the adapter of ``params.dataset``.

    Returns:
        ``(samples, dropped, classes, notes)``: samples with ``label`` = index into ``classes``; every
        annotation row is either a sample or a dropped row with its reason; ``notes``: apex fixes that kept a row.

    Raises:
        AnnotationError: missing or malformed annotations, or two samples with the same (subject, clip, onset).
        ValueError: a dataset with no adapter.
    """
    if params.dataset not in ADAPTERS:
        raise ValueError(f"no adapter for micro.dataset {params.dataset!r}; known: {sorted(ADAPTERS)}")
    adapter = importlib.import_module(ADAPTERS[params.dataset])
    parts, dropped, notes = [], [], []
    for annotations in adapter.read(params):
        samples, drops, fixes = finalize(annotations, params.dataset, params.protocol, params.apex_outside)
        parts.append(samples)
        dropped.append(drops)
        notes += fixes
    samples = pd.concat(parts, ignore_index=True)
    repeated = samples["sample_id"][samples["sample_id"].duplicated()]
    if len(repeated):
        raise AnnotationError(f"{params.root}: repeated (subject, clip, onset) keys: {sorted(set(repeated))}")
    classes = class_names(params.protocol, samples["label_name"])
    samples.insert(samples.columns.get_loc("label_name"), "label", [classes.index(n) for n in samples["label_name"]])
    return samples, pd.concat(dropped, ignore_index=True), classes, notes
