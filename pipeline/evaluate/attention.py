"""Where the LOSO fold models look on their held-out clips, and whether that is where the face moved.

For every active arm, LOSO fold and seed, the fold's model (``<finetune_dir>/<arm>/fold<k>/model_seed<s>.pt``)
maps every clip of its held-out subject (:mod:`pipeline.models.heatmap`: Grad-CAM of the predicted class, or MIACNet's
action attention) on the aligned crop the model was fed. With the demo's ground truth (``ground_truth_au_masks/``
under ``micro.root``), each map is scored against the clip's true AU region (:mod:`pipeline.evaluate.localisation`); a
real
dataset has none, and then only the maps are drawn. :func:`examples_figure` draws a few held-out clips per class
with each arm's map, for the report.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn

from pipeline.arms import active_arms, arm_label
from pipeline.config import AU_MASK_DIR, Params
from pipeline.data.loso import loso_fold
from pipeline.data.micro import MicroTensors
from pipeline.data.tensors import images_to_tensor
from pipeline.evaluate.localisation import (
    grid_pointing,
    localisation_scores,
    mask_path,
    read_region,
    summarise_localisation,
)
from pipeline.models.heatmap import model_heatmaps, overlay
from pipeline.models.registry import ArmModel, arm_model, create_model, model_inputs

__all__ = ["FoldMaps", "attention_metrics", "example_rows", "examples_figure", "fold_maps", "has_ground_truth",
           "load_fold_model", "method_for", "read_regions", "score_clips"]


@dataclass
class FoldMaps:
    """One fold model's heat maps on its held-out clips.

    Attributes:
        arm, label: the arm and its result label (``ma2mi``, ``scratch``, the baseline's model name).
        fold, seed: which model.
        rows: ``(n,)`` row positions of the held-out clips in the samples table.
        heatmaps: ``(n, S, S) float32`` in [0, 1] on the aligned crops.
        probabilities: ``(n, K) float32``.
        method: the heat map's method (``gradcam`` or ``attention``).
        native: ``(n, h, w) float32 >= 0``, the same maps on the model's own grid (before the resize).
    """

    arm: str
    label: str
    fold: int
    seed: int
    rows: np.ndarray
    heatmaps: np.ndarray
    probabilities: np.ndarray
    method: str
    native: np.ndarray


def has_ground_truth(micro_root: Path) -> bool:
    """True when the dataset ships the demo renderer's AU masks (``<root>/ground_truth_au_masks/``)."""
    return (micro_root / AU_MASK_DIR).is_dir()


def method_for(model: nn.Module, method: str) -> str:
    """``method``, except Grad-CAM for a model without an action attention (only MIACNet has one)."""
    return method if method != "attention" or hasattr(model, "forward_with_attention") else "gradcam"


def load_fold_model(finetune_dir: Path, *, arm: str, spec: ArmModel, fold: int, seed: int,
                    n_classes: int) -> nn.Module:
    """The model a ``finetune_<arm>@<fold>`` stage saved for ``seed``, in eval mode on the CPU.

    ``spec`` is the arm's classifier (:func:`pipeline.models.registry.arm_model`), ``finetune_dir`` is
    ``paths.finetune_dir``.

    Raises:
        FileNotFoundError: no such checkpoint (the message names it and the stage that writes it).
    """
    path = finetune_dir / arm / f"fold{fold}" / f"model_seed{seed}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run `dvc repro finetune_{arm}@{fold}`")
    model = create_model(spec.name, n_classes, spec.params)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"])
    return model.eval()


def fold_maps(params: Params, samples: pd.DataFrame, n_classes: int, method: str, device: torch.device,
              batch_size: int = 32) -> Iterator[FoldMaps]:
    """Heat maps of every active arm's fold models (every seed) on their held-out clips.

    Args:
        params: all params (paths, arms, folds, seeds, models; crops at ``micro.image_size_px``).
        samples: the samples table.
        n_classes: K.
        method: ``gradcam`` or ``attention`` (:func:`method_for`).
        device: where the models run.
        batch_size: clips per forward pass.

    Yields:
        One :class:`FoldMaps` per arm, fold and seed.

    Raises:
        FileNotFoundError: a fold model is missing.
    """
    crop = params.micro.image_size_px
    for arm in active_arms(params.finetune):
        spec = arm_model(arm, finetune=params.finetune, model=params.model)
        data = MicroTensors(samples, spec.image_size_px)
        for fold in params.finetune.folds:
            split = loso_fold(samples["subject"], fold)
            for seed in params.finetune.recipe.seeds:
                model = load_fold_model(params.paths.finetune_dir, arm=arm, spec=spec, fold=fold, seed=seed,
                                        n_classes=n_classes).to(device)
                how = method_for(model, method)
                maps, probs, native = [], [], []
                for batch in data.batches(split.test_idx, batch_size, None,
                                          flow_size_px=getattr(model, "flow_size_px", None)):
                    inputs = [x.to(device) for x in model_inputs(model, batch)]
                    heat, p, grid = model_heatmaps(model, inputs, crop, how, native=True)
                    maps.append(heat)
                    probs.append(p)
                    native.append(grid)
                yield FoldMaps(arm, arm_label(params.finetune, arm), fold, seed, split.test_idx,
                               np.concatenate(maps), np.concatenate(probs), how, np.concatenate(native))


def score_clips(maps: FoldMaps, samples: pd.DataFrame, regions: dict[int, np.ndarray] | None) -> pd.DataFrame:
    """One row per held-out clip of a fold model: ids, true and predicted class, and (with ``regions``) the scores.

    Args:
        maps: a fold model's heat maps.
        samples: the samples table.
        regions: row position -> ``(S, S) bool`` ground-truth region in the crop, or None (no ground truth).

    Returns:
        ``arm`` (the label), ``seed``, ``fold``, ``method``, ``sample_id``, ``subject``, ``clip``, ``label_name``,
        ``predicted``; with regions also ``mass_in_region``, ``pointing_hit``, ``region_share``, ``flat``, and on
        the model's own grid ``grid`` (``'4x4'``), ``grid_pointing_hit``, ``grid_region_share``
        (:func:`pipeline.evaluate.localisation.grid_pointing`).
    """
    table = samples.iloc[maps.rows][["sample_id", "subject", "clip", "label", "label_name"]].reset_index(drop=True)
    table.insert(0, "arm", maps.label)
    table.insert(1, "seed", maps.seed)
    table.insert(2, "fold", maps.fold)
    table.insert(3, "method", maps.method)
    table["predicted"] = maps.probabilities.argmax(1)
    if regions is not None:
        scores = [{**localisation_scores(heat, regions[row]), **grid_pointing(grid, regions[row])}
                  for heat, grid, row in zip(maps.heatmaps, maps.native, maps.rows, strict=True)]
        table = pd.concat([table, pd.DataFrame(scores)], axis=1)
    return table


def read_regions(samples: pd.DataFrame, micro_root: Path, size_px: int) -> dict[int, np.ndarray]:
    """Row position -> ground-truth region in the crop, for every sample (masks warped by ``crop_matrix``).

    Raises:
        FileNotFoundError: a sample's mask is missing (named).
    """
    return {row: read_region(mask_path(micro_root, subject, clip), matrix, size_px)
            for row, (subject, clip, matrix) in enumerate(zip(samples["subject"], samples["clip"],
                                                               samples["crop_matrix"], strict=True))}


def attention_metrics(per_clip: pd.DataFrame, method: str, micro_root: Path) -> dict:
    """The ``attention`` stage's ``metrics.json``: localisation scores, or why there are none.

    Args:
        per_clip: :func:`score_clips` of every fold model (with scores when there is ground truth).
        method: ``attention.method``.
        micro_root: the dataset root (named when it has no ground truth).

    Returns:
        ``{'ground_truth': True, 'method', <arm>: {...}, 'chance': {...}, 'ma2mi_minus_scratch': {...}}``
        (:func:`pipeline.evaluate.localisation.summarise_localisation`), or ``{'ground_truth': False, 'method',
        'note'}``.
    """
    if "mass_in_region" not in per_clip:
        return {"ground_truth": False, "method": method,
                "note": f"{micro_root} has no {AU_MASK_DIR}/ (only the demo renderer writes one): no localisation "
                        "score"}
    return {"ground_truth": True, "method": method, **summarise_localisation(per_clip)}


def example_rows(samples: pd.DataFrame, classes: list[str], per_class: int) -> list[int]:
    """Row positions of the first ``per_class`` clips of each class (by sample id), class by class."""
    rows = []
    for label in range(len(classes)):
        part = samples[samples["label"] == label].sort_values("sample_id")
        rows.extend(samples.index.get_indexer(part.index[:per_class]).tolist())
    return rows


def _outline(image: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``image`` with the region's outline drawn in white (1 px)."""
    contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return cv2.drawContours(image.copy(), contours, -1, (255, 255, 255), 1)


def examples_figure(samples: pd.DataFrame, classes: list[str], rows: list[int],
                    maps: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]],
                    regions: dict[int, np.ndarray] | None, size_px: int, method: str) -> Figure:
    """A grid: one held-out clip per row; onset, |apex − onset|, then each arm's heat map over the onset.

    Args:
        samples: the samples table.
        classes: class names in label order.
        rows: the clips (:func:`example_rows`).
        maps: arm label -> row -> ``(heatmap (S, S), probabilities (K,))`` from the fold model that held it out.
        regions: row -> ground-truth region (outlined in white), or None.
        size_px: the crop side S.
        method: named in the title.

    Returns:
        A matplotlib figure (object API, no pyplot state).
    """
    onset = images_to_tensor(samples["onset_image"].iloc[rows].tolist(), size_px).permute(0, 2, 3, 1).numpy()
    apex = images_to_tensor(samples["apex_image"].iloc[rows].tolist(), size_px).permute(0, 2, 3, 1).numpy()
    labels = list(maps)
    columns = 2 + len(labels)
    fig = Figure(figsize=(1.9 * columns, 2.0 * max(1, len(rows)) + 0.6))
    axes = fig.subplots(max(1, len(rows)), columns, squeeze=False)
    for i, row in enumerate(rows):
        sample = samples.iloc[row]
        diff = np.abs(apex[i].astype(np.float32) - onset[i].astype(np.float32)).mean(axis=2)
        panels = [(onset[i] if regions is None else _outline(onset[i], regions[row]),
                   f"{sample['subject']}\n{sample['clip']}: {sample['label_name']}"),
                  (diff / max(float(diff.max()), 1e-6), "|apex − onset|\n(to its max)")]
        for label in labels:
            heat, probs = maps[label][row]
            image = overlay(onset[i], heat)
            panels.append((image if regions is None else _outline(image, regions[row]),
                           f"{label}: {classes[int(np.argmax(probs))]}\n(p = {float(np.max(probs)):.2f})"))
        for ax, (image, title) in zip(axes[i], panels, strict=True):
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1 if image.ndim == 2 else None)
            ax.set_title(title, fontsize=7)
            ax.set_axis_off()
    truth = "; white outline: the true AU region" if regions is not None else ""
    fig.suptitle(f"Held-out clips, heat maps ({method}) of the fold model that held each out (first seed){truth}",
                 fontsize=8)
    fig.tight_layout()
    return fig
