"""Micro-expression dataset adapters (``micro.dataset`` in params.yaml) and the code they share.

Each adapter module has ``read(params: MicroParams) -> list[Annotations]`` (one entry per source dataset: a
composite such as MEGC2019 returns several) and knows only its sheet and on-disk layout;
:func:`load_dataset` applies what is common (apex policy, label protocol, namespaced subject ids, unique keys).
The demo is written in the CASME II layout and goes through the CASME II adapter. :data:`ADAPTERS` is the one
list of dataset names: ``micro.dataset`` must be one of its keys.
"""

from __future__ import annotations

from types import ModuleType

import pandas as pd

from pipeline.config import ConfigError, MicroParams
from pipeline.datasets import casme2, casme3, megc2019, mmew, samm, smic
from pipeline.datasets.common import finalize
from pipeline.datasets.protocols import class_names
from pipeline.sheets import AnnotationError

__all__ = ["ADAPTERS", "AnnotationError", "adapter", "load_dataset"]

ADAPTERS: dict[str, ModuleType] = {  # micro.dataset -> adapter module
    "demo": casme2,  # the demo is written in the CASME II layout
    "casme2": casme2,
    "samm": samm,
    "smic": smic,
    "casme3": casme3,
    "mmew": mmew,
    "megc2019": megc2019,
}


def adapter(dataset: str) -> ModuleType:
    """The adapter module of ``micro.dataset`` = ``dataset``.

    Raises:
        ConfigError: no adapter of that name (the message lists the known ones).
    """
    if dataset not in ADAPTERS:
        raise ConfigError(f"micro.dataset: {dataset!r} is not a dataset with an adapter; known: "
                          f"{', '.join(sorted(ADAPTERS))}")
    return ADAPTERS[dataset]


def load_dataset(params: MicroParams) -> tuple[pd.DataFrame, pd.DataFrame, list[str], list[str]]:
    """Read ``params.root`` through the adapter of ``params.dataset``.

    Args:
        params: the ``micro`` section.

    Returns:
        ``(samples, dropped, classes, notes)``: samples with ``label`` = index into ``classes``; every
        annotation row is either a sample or a dropped row with its reason; ``notes``: apex fixes that kept a row.

    Raises:
        AnnotationError: missing or malformed annotations, or two samples with the same (subject, clip, onset).
        ConfigError: a dataset with no adapter.
    """
    parts, dropped, notes = [], [], []
    for source_annotations in adapter(params.dataset).read(params):
        samples, drops, fixes = finalize(source_annotations, params.dataset, params.protocol, params.apex_outside)
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
