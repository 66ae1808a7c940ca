"""One training run of a ``finetune_<arm>@<fold>`` stage, where its Prefect task runs (a Dask worker process).

The stage process only plans the runs (seeds × label budgets) and gathers their predictions; each run loads the
fold's inputs from disk itself: ``samples.parquet`` (decoded once per worker process and fold, then reused by the
worker's next runs of the same fold while the files are unchanged) and, for a pre-trained arm, ``encoder.pt``. So
the stage process never imports torch or the models (about 4 s of every fold stage's 10 s of start-up on a 2-core
CPU), and no tensor travels through the scheduler. Each run trains on ONE thread: its result does not depend on
how many runs share the machine (:func:`pipeline.orchestration.stage.dask_task_runner`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from pipeline.arms import ARMS
from pipeline.config import PathsParams, RecipeParams
from pipeline.data.loso import LosoFold, loso_fold, validation_fold
from pipeline.data.micro import MicroTensors
from pipeline.data.micro_table import SAMPLES_FILE, read_classes, read_samples
from pipeline.models.registry import ArmModel
from pipeline.train.distributed import resolve_device
from pipeline.train.engine import set_deterministic, training_fingerprint
from pipeline.train.finetune import finetune_seed

__all__ = ["FoldInputs", "fold_inputs", "train_run"]


@dataclass(frozen=True)
class FoldInputs:
    """What every run of one arm on one fold shares."""

    samples: pd.DataFrame
    classes: list[str]
    split: LosoFold
    data: MicroTensors  # the crops at the arm's input size
    encoder: dict | None  # MA2MI's branches for a pre-trained arm
    fingerprint: str  # the runs' training-state identity (params, arm, fold and the inputs' bytes)


_cache: dict[tuple, FoldInputs] = {}  # this process's last fold: one entry


def fold_inputs(*, paths: PathsParams, arm: str, model: ArmModel, recipe: RecipeParams, fold: int,
                validation: bool = False) -> FoldInputs:
    """The inputs of ``arm`` (training ``model``) on LOSO fold ``fold``, read from ``paths``.

    With ``validation``, the split is the fold's validation split (:func:`pipeline.data.loso.validation_fold`:
    trained without the test subject and one more, predicting that one), for selection studies (docs/study.md).

    ``samples.parquet`` from ``paths.micro_dir``, and ``encoder.pt`` from ``paths.pretrain_dir`` for a pre-trained
    arm.

    Reused while the same arguments and input files (size and modification time) are asked for again.

    Raises:
        FileNotFoundError: an input is missing (the stage's upstream has not run).
    """
    files = [paths.micro_dir / SAMPLES_FILE]
    if ARMS[arm].pretrained:
        files.append(paths.pretrain_dir / "encoder.pt")
    stats = tuple((str(path), os.stat(path).st_size, os.stat(path).st_mtime_ns) for path in files)
    key = (paths.model_dump_json(), arm, model.name, model.params.model_dump_json(), recipe.model_dump_json(), fold,
           validation, stats)
    if key not in _cache:
        _cache.clear()
        samples = read_samples(paths.micro_dir)
        encoder = (torch.load(files[1], map_location="cpu", weights_only=True)["encoder"] if ARMS[arm].pretrained
                   else None)
        # one fingerprint for every seed: each seed's state file (seed<s>.pt) names its seed
        sections = {"model": model.params.model_dump(mode="json"), "model_name": model.name, "arm": arm, "fold": fold,
                    "recipe": recipe.model_dump(mode="json", exclude={"seeds"})}
        split = loso_fold(samples["subject"], fold)
        if validation:
            sections["split"] = "validation"
            split = validation_fold(split, samples["subject"])
        fingerprint = training_fingerprint(sections, files)
        _cache[key] = FoldInputs(samples, read_classes(paths.micro_dir), split,
                                 MicroTensors(samples, model.image_size_px), encoder, fingerprint)
    return _cache[key]


def train_run(*, paths: PathsParams, arm: str, model: ArmModel, recipe: RecipeParams, fold: int, seed: int,
              budget: int | None, out: Path, state_path: Path, validation: bool = False) -> pd.DataFrame:
    """Train ``arm`` on fold ``fold`` with ``seed``, on one thread: :func:`pipeline.train.finetune.finetune_seed`.

    Args:
        paths: the ``paths`` section (``micro_dir``, and ``pretrain_dir`` for a pre-trained arm).
        arm: a key of :data:`pipeline.arms.ARMS`.
        model: the arm's classifier, decided once by the stage (:func:`pipeline.models.registry.arm_model`).
        recipe: ``finetune.recipe``.
        fold: the LOSO fold's index.
        seed: the run's seed.
        budget: training clips per class and subject (None: all).
        out: the stage's output folder (the run writes its curve and model there).
        state_path: the run's resumable training state.
        validation: train and predict the fold's validation split instead (see :func:`fold_inputs`).

    Returns:
        The held-out subject's predictions (:func:`pipeline.train.finetune.finetune_seed`).
    """
    device = resolve_device(recipe.device)  # on CPU it gives torch every core: first, then
    torch.set_num_threads(1)  # one thread (two runs of two threads each on two cores ran 10x slower, measured)
    set_deterministic(recipe.deterministic)
    inputs = fold_inputs(paths=paths, arm=arm, model=model, recipe=recipe, fold=fold, validation=validation)
    return finetune_seed(samples=inputs.samples, data=inputs.data, classes=inputs.classes, fold=inputs.split, arm=arm,
                         model=model, recipe=recipe, seed=seed, device=device, encoder_state=inputs.encoder, out=out,
                         state_path=state_path, fingerprint=inputs.fingerprint, budget=budget)
