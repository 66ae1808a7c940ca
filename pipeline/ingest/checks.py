"""Checks of ``params.yaml`` that need more than its schema: names from the registries, paths that must exist.

:func:`check_micro` runs as the ``check_micro`` stage, upstream of ``ingest_micro``, so that a wrong
``micro.root`` is reported by name, with what to set, before DVC needs the path: DVC stops with a bare "No such
file or directory" when a dependency is missing, after removing the stage's previous outputs.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import ConfigError, Params
from pipeline.data.loso import fold_and_budget_problems
from pipeline.datasets import ADAPTERS, AnnotationError, DatasetLayoutError, load_dataset
from pipeline.datasets.protocols import check_protocol
from pipeline.face.align import DETECTORS

__all__ = ["check_micro"]


def _folds_and_budgets(params: Params) -> list[str]:
    """The fold indices and label budgets against the annotation sheet's subjects and clips (frames not opened)."""
    try:
        samples = load_dataset(params.micro).samples
    except (AnnotationError, DatasetLayoutError):  # ingest_micro reports these, naming file and row
        return []
    finetune = params.finetune
    folds = {"finetune.folds": finetune.folds, "finetune.baseline.folds": finetune.baseline.folds}
    return fold_and_budget_problems(samples["subject"], samples["label"], folds, finetune.label_budgets)


def check_micro(params: Params) -> dict:
    """Check the ``micro`` section against the registries and the file system, and the folds against the data.

    For a dataset of the user's, its annotation sheet is read (the frames are not opened) to check
    ``finetune.folds``, ``finetune.baseline.folds`` and ``finetune.label_budgets`` against its subjects and clips
    (:func:`pipeline.data.loso.fold_and_budget_problems`) before hours of ingestion and pre-training; the demo's are
    checked when params load. Clips that ingestion later skips can only lower the counts: the fold stage checks
    again on the ingested table.

    Args:
        params: all params (``micro``, ``finetune``'s folds and label budgets; ``paths.demo_micro_dir`` for the
            demo).

    Returns:
        What was checked: ``dataset``, ``root`` and ``annotation`` (paths as params.yaml gives them) and ``protocol``.

    Raises:
        ConfigError: every problem found, each naming the key and what to set: an unknown dataset, protocol or
            detector; a ``root`` that is not a folder (for the demo it is ``synthesize``'s output and may not exist
            yet); an ``annotation`` or ``smic_apex`` file that does not exist; a fold index or label budget the
            annotated data cannot have.
    """
    micro = params.micro
    problems = []
    if micro.dataset not in ADAPTERS:
        problems.append(f"micro.dataset: {micro.dataset!r} is not a dataset with an adapter; known: "
                        f"{', '.join(sorted(ADAPTERS))}")
    try:
        check_protocol(micro.protocol)
    except ConfigError as err:
        problems.append(str(err))
    if micro.detector not in DETECTORS:
        problems.append(f"micro.detector: {micro.detector!r} is not a face detector; known: {', '.join(DETECTORS)}")
    if micro.dataset != "demo" and not Path(micro.root).is_dir():
        problems.append(f"micro.root: {micro.root} is not a folder; set micro.root in params.yaml to the "
                        f"{micro.dataset} dataset's folder as distributed (docs/data.md, 'Your own data', shows "
                        "the tree it must contain)")
    for key in ("annotation", "smic_apex"):
        path = getattr(micro, key)
        if path is not None and not Path(path).is_file():
            problems.append(f"micro.{key}: {path} does not exist; set it to the file, or to null for the dataset's "
                            "standard one" if key == "annotation" else f"micro.{key}: {path} does not exist")
    if not problems and micro.dataset != "demo":  # the demo's are checked when params load (pipeline.config)
        problems += _folds_and_budgets(params)
    if problems:
        raise ConfigError("params.yaml: " + "; ".join(problems))
    # the paths as params.yaml gives them, not resolved: the record (a DVC dependency of ingest_micro) must be the
    # same in every checkout of the project, or a clone elsewhere (a scale-out worker) would see ingest_micro stale
    return {"dataset": micro.dataset, "root": str(micro.root), "protocol": micro.protocol,
            "annotation": None if micro.annotation is None else str(micro.annotation)}
