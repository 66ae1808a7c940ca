"""Does MIACNet's position branch carry what it is said to? Held-out predictions with that branch ablated.

MIACNet decouples facial *position* (a branch on the onset frame) from facial *action* (a branch on the motion,
apex − onset or optical flow), and adds their projections before the classifier (DESIGN §4). If the decoupling
works as claimed, the class comes from the action branch and the position branch only says where the face parts
are. Each LOSO fold model then predicts its held-out clips three ways (issue 21, item 3):

- ``intact``: as trained;
- ``shuffled``: the position branch sees the onset frame of a clip of ANOTHER subject (another face, another
  alignment), the action branch the clip's own motion;
- ``removed``: the position branch's output is zero (its projection then adds only its bias).

No weight changes and nothing is refitted: a score that drops under ``shuffled`` means that the fold model reads
the class (or a shortcut) from the face's appearance rather than from its motion; one that holds says the
position branch is not what decides.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipeline.arms import ARMS, active_arms, arm_label
from pipeline.config import Params
from pipeline.data.loso import loso_fold
from pipeline.data.micro import MicroTensors
from pipeline.evaluate.attention import load_fold_model
from pipeline.evaluate.metrics import SCORES, classification_metrics, seed_summary
from pipeline.models.registry import arm_model, input_names, model_inputs

__all__ = ["POSITION_ABLATIONS", "donor_rows", "position_ablation", "position_ablation_predictions",
           "position_ablation_summary"]

POSITION_ABLATIONS = ("intact", "shuffled", "removed")


def donor_rows(subjects: pd.Series, rows: np.ndarray, seed: int) -> np.ndarray:
    """For each of ``rows``, a row of another subject, drawn uniformly with a generator seeded by ``seed``.

    Args:
        subjects: the samples table's ``subject`` column.
        rows: the clips to predict (row positions).
        seed: the draw's seed (the fold model's seed: the same donors for every arm).

    Returns:
        ``(len(rows),)`` int64 row positions, none of them of the same subject as the row it serves.

    Raises:
        ValueError: the table has only one subject.
    """
    values = subjects.to_numpy()
    if len(set(values)) < 2:
        raise ValueError("a position donor must be of another subject: the table has one subject")
    rng = np.random.default_rng([seed, 21])
    donors = np.empty(len(rows), dtype=np.int64)
    for i, row in enumerate(rows):
        others = np.flatnonzero(values != values[row])
        donors[i] = others[rng.integers(len(others))]
    return donors


@contextlib.contextmanager
def _position_output(model: nn.Module, replacement: torch.Tensor | None) -> Iterator[None]:
    """Within the block, ``model.position_branch`` returns ``replacement`` (zeros of its shape when None)."""
    def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(output) if replacement is None else replacement

    handle = model.position_branch.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def position_ablation_predictions(model: nn.Module, data: MicroTensors, rows: np.ndarray, donors: np.ndarray,
                                  mode: str, device: torch.device, batch_size: int = 64) -> np.ndarray:
    """``(len(rows),)`` int64 predicted classes of a MIACNet fold model with its position branch ablated.

    Args:
        model: a MIACNet (it has a ``position_branch``), in eval mode on ``device``.
        data: the crops at the model's input size.
        rows: the held-out clips.
        donors: for ``shuffled``, the clip whose onset the position branch sees, one per row
            (:func:`donor_rows`); ignored otherwise.
        mode: one of :data:`POSITION_ABLATIONS`.
        device: where the model runs.
        batch_size: clips per forward pass.

    Raises:
        ValueError: an unknown ``mode``, or a model without a position branch.
    """
    if mode not in POSITION_ABLATIONS:
        raise ValueError(f"position ablation {mode!r}: expected one of {POSITION_ABLATIONS}")
    if not hasattr(model, "position_branch"):
        raise ValueError(f"{type(model).__name__} has no position branch (only MIACNet has one)")
    model.eval()
    with_flow = "flow" in input_names(model)
    batches = data.batches(rows, batch_size, None, with_flow=with_flow)
    donor_batches = data.batches(donors, batch_size, None, with_flow=False)
    predicted = []
    for batch, donor in zip(batches, donor_batches, strict=True):
        inputs = [x.to(device) for x in model_inputs(model, batch)]
        if mode == "intact":
            logits = model(*inputs)
        else:
            replacement = model.position_branch(donor["onset"].to(device)) if mode == "shuffled" else None
            with _position_output(model, replacement):
                logits = model(*inputs)
        predicted.append(logits.argmax(1).cpu())
    return torch.cat(predicted).numpy()


def position_ablation(params: Params, samples: pd.DataFrame, n_classes: int, device: torch.device) -> pd.DataFrame:
    """Every MIACNet arm's fold models (every fold and seed) on their held-out clips, under each ablation.

    The donors of a fold model are drawn with its seed (:func:`donor_rows`), so both MIACNet arms see the same.

    Returns:
        One row per arm label, seed and mode: ``arm, seed, mode`` and the pooled LOSO ``accuracy, uf1, uar, n``.

    Raises:
        FileNotFoundError: a fold model is missing.
    """
    labels = list(range(n_classes))
    rows = []
    for arm in active_arms(params.finetune):
        if ARMS[arm].baseline:
            continue
        spec = arm_model(arm, finetune=params.finetune, model=params.model)
        data = MicroTensors(samples, spec.image_size_px)
        for seed in params.finetune.recipe.seeds:
            truth, predicted = [], {mode: [] for mode in POSITION_ABLATIONS}
            for fold in params.finetune.folds:
                split = loso_fold(samples["subject"], fold)
                model = load_fold_model(params.paths.finetune_dir, arm=arm, spec=spec, fold=fold, seed=seed,
                                        n_classes=n_classes).to(device)
                donors = donor_rows(samples["subject"], split.test_idx, seed)
                truth.append(samples["label"].to_numpy()[split.test_idx])
                for mode in POSITION_ABLATIONS:
                    predicted[mode].append(position_ablation_predictions(model, data, split.test_idx, donors, mode,
                                                                         device))
            for mode in POSITION_ABLATIONS:
                rows.append({"arm": arm_label(params.finetune, arm), "seed": seed, "mode": mode,
                             **classification_metrics(np.concatenate(truth), np.concatenate(predicted[mode]),
                                                      labels)})
    return pd.DataFrame(rows)


def position_ablation_summary(per_seed: pd.DataFrame) -> dict:
    """``{arm: {mode: seed_summary, '<mode>_minus_intact': paired by seed with 95% intervals}}``."""
    summary: dict = {}
    for arm, part in per_seed.groupby("arm", sort=False):
        wide = part.pivot(index="seed", columns="mode", values=list(SCORES))
        entry = {mode: seed_summary(part[part["mode"] == mode]) for mode in POSITION_ABLATIONS}
        for mode in POSITION_ABLATIONS[1:]:
            entry[f"{mode}_minus_intact"] = seed_summary(
                pd.DataFrame({s: wide[s][mode] - wide[s]["intact"] for s in SCORES}), interval=True)
        summary[arm] = entry
    return summary
