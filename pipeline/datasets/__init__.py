"""Micro-expression dataset adapters (``micro.dataset`` in params.yaml) and the code they share.

Each adapter module has ``read(params: MicroParams) -> list[Annotations]`` (one entry per source dataset: a
composite such as MEGC2019 returns several) and knows only its sheet and on-disk layout;
:func:`load_dataset` applies what is common (apex policy, label protocol, namespaced subject ids, unique keys:
see :mod:`pipeline.datasets.common` for the policies) and :func:`check_frames` the missing-frames check.
The demo is written in the CASME II layout and goes through the CASME II adapter. :data:`ADAPTERS` is the one
list of dataset names: ``micro.dataset`` must be one of its keys.
"""

from __future__ import annotations

from types import ModuleType
from typing import NamedTuple

import pandas as pd

from pipeline.config import ConfigError, MicroParams
from pipeline.datasets import casme2, casme3, megc2019, mmew, samm, smic
from pipeline.datasets.common import (
    DROPPED_COLUMNS,
    FIX_COLUMNS,
    MAX_MISSING_SHARE,
    DatasetLayoutError,
    check_frames,
    finalize,
)
from pipeline.datasets.protocols import class_names
from pipeline.sheets import AnnotationError

__all__ = ["ADAPTERS", "DROPPED_COLUMNS", "FIX_COLUMNS", "MAX_MISSING_SHARE", "AnnotationError", "DatasetLayoutError",
           "Loaded", "adapter", "check_frames", "load_dataset"]

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


class Loaded(NamedTuple):
    """What :func:`load_dataset` read.

    Attributes:
        samples: :data:`~pipeline.datasets.common.SAMPLE_COLUMNS`, ``label`` = index into ``classes``.
        dropped: :data:`~pipeline.datasets.common.DROPPED_COLUMNS`: every annotation row that is not a sample.
        classes: class names in label order.
        fixes: :data:`~pipeline.datasets.common.FIX_COLUMNS`: apex fixes that kept a row
            (``micro.apex_outside = middle``).
        layouts: source dataset -> where its frame files are expected, for
            :func:`~pipeline.datasets.common.check_frames`.
    """

    samples: pd.DataFrame
    dropped: pd.DataFrame
    classes: list[str]
    fixes: pd.DataFrame
    layouts: dict[str, str]


def load_dataset(params: MicroParams) -> Loaded:
    """Read ``params.root`` through the adapter of ``params.dataset``.

    Args:
        params: the ``micro`` section.

    Returns:
        A :class:`Loaded`: every annotation row is either a sample or a dropped row with its reason; subjects
        are ``<source>/<subject>`` everywhere. Frame files are not opened (see
        :func:`~pipeline.datasets.common.check_frames`).

    Raises:
        AnnotationError: missing or malformed annotations, or two rows with the same (subject, clip, onset) (the
            message names the file and both rows).
        ConfigError: a dataset with no adapter.
    """
    parts, dropped, fixes, layouts = [], [], [], {}
    for source_annotations in adapter(params.dataset).read(params):
        samples, drops, fixed = finalize(source_annotations, params.dataset, params.protocol, params.apex_outside)
        parts.append(samples)
        dropped.append(drops)
        fixes.append(fixed)
        layouts[source_annotations.source] = source_annotations.layout
    samples = pd.concat(parts, ignore_index=True)
    repeated = samples["sample_id"][samples["sample_id"].duplicated()]
    if len(repeated):  # each source's keys are unique (finalize) and sample ids start with the source: a bug
        raise AnnotationError(f"{params.root}: repeated sample ids across sources: {sorted(set(repeated))}")
    classes = class_names(params.protocol, samples["label_name"])
    samples.insert(samples.columns.get_loc("label_name"), "label", [classes.index(n) for n in samples["label_name"]])
    return Loaded(samples, pd.concat(dropped, ignore_index=True), classes, pd.concat(fixes, ignore_index=True),
                  layouts)
