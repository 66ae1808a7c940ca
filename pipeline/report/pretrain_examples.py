"""What MA2MI pre-training learnt, shown on held-out macro frame pairs (for the report).

A few (source, future) pairs of the held-out videos (``pretrain.heldout_videos``), drawn like the pre-training's
own held-out pairs (:class:`pipeline.data.macro.FuturePairSampler`, horizon in seconds), and for each: the source, the
true future, MA2MI's predicted future, the error maps ``|future − prediction|`` beside the copy baseline's
``|future − source|`` (the yardstick of DESIGN §4), with both L1 errors.

The prediction needs the decoder: ``encoder.pt`` holds it under ``decoder`` (from the revision that added it);
an older checkpoint holds only the branches, and then only the pairs and the copy baseline are drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from pipeline.config import ModelParams, PretrainParams
from pipeline.data.macro import FuturePairSampler
from pipeline.data.tensors import images_to_tensor, normalise
from pipeline.models.ma2mi import MA2MI

__all__ = ["heldout_pairs", "load_ma2mi", "pairs_figure", "predict_futures"]

_MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)  # undo pipeline.data.tensors.normalise
_STD = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)


def heldout_pairs(shards: Sequence[Path], params: PretrainParams, n_pairs: int,
                  size_px: int) -> tuple[torch.Tensor, torch.Tensor, pd.DataFrame]:
    """``n_pairs`` (source, future) frame pairs of the held-out videos, seeded by ``pretrain.seed``.

    Only the held-out videos' rows are read from the shards (a Parquet filter), not the corpus.

    Returns:
        ``(sources, futures, pairs)``: ``(n, 3, S, S) uint8`` each, and ``video, source_s, future_s`` per pair.

    Raises:
        FileNotFoundError: no frame of a held-out video in ``shards`` (:func:`pipeline.data.macro.macro_shards`).
    """
    videos = list(params.heldout_videos)
    parts = [pd.read_parquet(shard, columns=["video", "time_s", "image"], filters=[("video", "in", videos)])
             for shard in shards]
    table = pd.concat([p for p in parts if len(p)] or [pd.DataFrame(columns=["video", "time_s", "image"])],
                      ignore_index=True)
    if table.empty:
        raise FileNotFoundError(f"no frame of the held-out videos {videos} in the {len(shards)} macro shards")
    sampler = FuturePairSampler(table[["video", "time_s"]], params.horizon_s)
    source, future = sampler.sample(n_pairs, np.random.default_rng(params.seed))
    pairs = pd.DataFrame({"video": table["video"].to_numpy()[source], "source_s": table["time_s"].to_numpy()[source],
                          "future_s": table["time_s"].to_numpy()[future]})
    images = table["image"].tolist()
    return (images_to_tensor([images[i] for i in source], size_px),
            images_to_tensor([images[i] for i in future], size_px), pairs)


def load_ma2mi(checkpoint: Path, model_params: ModelParams) -> MA2MI | None:
    """MA2MI with the pre-trained branches and decoder of ``encoder.pt``, or None if it holds no decoder.

    Raises:
        FileNotFoundError: no such checkpoint.
    """
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: missing; run `dvc repro pretrain`")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if "decoder" not in state:
        return None
    model = MA2MI(model_params)
    model.load_encoder_state_dict(state["encoder"])
    model.decoder.load_state_dict(state["decoder"])
    return model.eval()


@torch.no_grad()
def predict_futures(model: MA2MI, sources: torch.Tensor, futures: torch.Tensor) -> torch.Tensor:
    """MA2MI's predicted futures ``(n, 3, S, S) uint8`` of ``(n, 3, S, S) uint8`` pairs."""
    predicted = model(normalise(sources), normalise(futures))  # (n, 3, S, S) ImageNet-normalised
    return ((predicted * _STD + _MEAN) * 255).round().clamp(0, 255).to(torch.uint8)


def pairs_figure(sources: torch.Tensor, futures: torch.Tensor, predicted: torch.Tensor | None,
                 pairs: pd.DataFrame) -> Figure:
    """One pair per row: source, true future, prediction, |future − prediction|, |future − source| (copy).

    Error maps are the mean over RGB of the absolute difference in grey levels, on one colour scale per row
    (the copy baseline's maximum), so the two are comparable; titles give the mean L1 in grey levels.
    """
    columns = 5 if predicted is not None else 3
    fig = Figure(figsize=(1.9 * columns, 2.0 * len(pairs) + 0.5))
    axes = fig.subplots(len(pairs), columns, squeeze=False)
    for i, pair in enumerate(pairs.itertuples(index=False)):
        source, future = sources[i].permute(1, 2, 0).numpy(), futures[i].permute(1, 2, 0).numpy()
        copy_error = np.abs(future.astype(np.float32) - source.astype(np.float32)).mean(axis=2)
        scale = max(float(copy_error.max()), 1.0)
        panels = [(source, f"{pair.video}\nsource t = {pair.source_s:.2f} s", None),
                  (future, f"true future\nt = {pair.future_s:.2f} s", None)]
        if predicted is not None:
            guess = predicted[i].permute(1, 2, 0).numpy()
            error = np.abs(future.astype(np.float32) - guess.astype(np.float32)).mean(axis=2)
            panels += [(guess, "MA2MI's prediction", None),
                       (error, f"|future − prediction|\nL1 {error.mean():.2f}", scale)]
        panels.append((copy_error, f"|future − source| (copy)\nL1 {copy_error.mean():.2f}", scale))
        for ax, (image, title, vmax) in zip(axes[i], panels, strict=True):
            ax.imshow(image, cmap="magma" if vmax else None, vmin=0 if vmax else None, vmax=vmax)
            ax.set_title(title, fontsize=7)
            ax.set_axis_off()
    note = "" if predicted is not None else " (encoder.pt holds no decoder: no prediction)"
    fig.suptitle(f"MA2MI pre-training on held-out macro videos{note}; error maps in grey levels, same scale per row",
                 fontsize=8)
    fig.tight_layout()
    return fig
