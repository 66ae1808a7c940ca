"""MA2MI pre-training: reconstruct future frames of macro-expression face videos (DESIGN §4).

Each step samples a source frame ``x_t`` and a future frame ``x_{t+k}`` of the same video, ``k`` drawn in
seconds from ``horizon_s``; the model sees ``x_t`` (position branch) and the difference ``x_{t+k} - x_t``
through a bottleneck (action branch) and predicts ``x_{t+k}``. The yardstick is the copy baseline
(``x_{t+k} ≈ x_t``) on frame pairs of held-out videos: ``recon_loss / copy_loss`` must be below 1.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.config import ModelParams, PretrainParams
from pipeline.data import FuturePairSampler, images_to_tensor, iterate_batches, normalise
from pipeline.engine import Batch, evaluate, resume_training_state, save_training_state, train_one_epoch
from pipeline.models.ma2mi import MA2MI

__all__ = ["load_macro_frames", "pretrain", "split_heldout"]

log = logging.getLogger(__name__)


def load_macro_frames(macro_dir: Path, size_px: int) -> tuple[pd.DataFrame, torch.Tensor]:
    """Read every ``<source>/frames-*.parquet`` shard that the ``ingest_macro@<source>`` stages wrote.

    Returns:
        ``(index, images)``: ``index`` has ``video, frame_index, time_s`` (one row per stored frame);
        ``images`` is ``(N, 3, size_px, size_px) uint8`` in the same order.

    Raises:
        FileNotFoundError: no shard in ``macro_dir``.
    """
    shards = sorted(macro_dir.glob("*/frames-*.parquet"))  # one folder per macro source
    if not shards:
        raise FileNotFoundError(f"{macro_dir}: no <source>/frames-*.parquet shard; run the ingest_macro stages")
    table = pd.concat([pd.read_parquet(shard) for shard in shards], ignore_index=True)
    images = images_to_tensor(table["image"].tolist(), size_px)
    return table.drop(columns=["image"]), images


def split_heldout(index: pd.DataFrame, heldout_videos: list[str]) -> np.ndarray:
    """Boolean ``(N,)`` mask of frames from held-out videos.

    Raises:
        ValueError: a held-out video is not among the ingested ones, or nothing is left to train on.
    """
    present = set(index["video"])
    missing = [v for v in heldout_videos if v not in present]
    if missing:
        raise ValueError(f"pretrain.heldout_videos {missing} are not among the ingested videos {sorted(present)}")
    heldout = index["video"].isin(heldout_videos).to_numpy()
    if heldout.all():
        raise ValueError("every ingested video is held out; nothing is left to pre-train on")
    return heldout


def _pair_batches(images: torch.Tensor, sources: np.ndarray, futures: np.ndarray, batch_size: int,
                  generator: torch.Generator | None) -> Iterator[Batch]:
    """Batches ``{'source', 'future'}``: ``(B, 3, H, W) float32`` ImageNet-normalised; with a generator, pairs
    are shuffled and each pair is mirrored with probability 1/2 (both frames alike)."""
    for batch in iterate_batches(len(sources), batch_size, generator):
        rows = batch.numpy()
        source, future = images[sources[rows]], images[futures[rows]]  # (B, 3, H, W) uint8 copies
        if generator is not None:
            flip = torch.rand(len(batch), generator=generator) < 0.5
            source[flip], future[flip] = source[flip].flip(-1), future[flip].flip(-1)
        yield {"source": normalise(source), "future": normalise(future)}


def _step(model: MA2MI, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    losses = model.losses(batch["source"], batch["future"])
    return losses["recon_loss"], {"recon_loss": losses["recon_loss"].item(), "copy_loss": losses["copy_loss"].item()}


def pretrain(index: pd.DataFrame, images: torch.Tensor, model_params: ModelParams, params: PretrainParams,
             device: torch.device, on_epoch: Callable[[int, dict[str, float]], None] | None = None,
             progress: bool = True, state_path: Path | None = None,
             fingerprint: str = "") -> tuple[MA2MI, dict[str, float]]:
    """Train MA2MI on the non-held-out videos for ``params.epochs`` epochs (the last epoch is kept: no
    selection on held-out data) and measure it on a fixed set of held-out pairs after each epoch.

    Args:
        index: ``video, time_s`` per frame, aligned with ``images: (N, 3, H, W) uint8``.
        on_epoch: called as ``on_epoch(epoch, metrics)`` after each epoch (e.g. DVCLive logging); after a
            resume, first for every epoch already finished.
        state_path, fingerprint: as in :func:`pipeline.finetune.finetune_fold`: the full training state (and the
            pair sampler's RNG) is saved after every epoch, and a matching state is resumed exactly.

    Returns:
        ``(model, metrics)``; ``metrics`` holds the last epoch's ``train_*`` and ``heldout_*`` values and
        ``heldout_recon_over_copy`` = ``heldout_recon_loss / heldout_copy_loss``.
    """
    heldout = split_heldout(index, params.heldout_videos)
    train_rows, heldout_rows = np.flatnonzero(~heldout), np.flatnonzero(heldout)
    train_sampler = FuturePairSampler(index.iloc[train_rows], params.horizon_s)
    heldout_sampler = FuturePairSampler(index.iloc[heldout_rows], params.horizon_s)
    rng = np.random.default_rng(params.seed)
    heldout_src, heldout_fut = heldout_sampler.sample(params.heldout_pairs, rng)
    heldout_src, heldout_fut = heldout_rows[heldout_src], heldout_rows[heldout_fut]

    model = MA2MI(model_params).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=params.epochs)
    generator = torch.Generator().manual_seed(params.seed)
    first_epoch, history, extra = 0, [], {}
    if state_path is not None:
        first_epoch, history, extra = resume_training_state(state_path, fingerprint, model, optimizer, scheduler,
                                                            generator)
    if "pair_rng" in extra:
        rng.bit_generator.state = extra["pair_rng"]
    for epoch, metrics in enumerate(history):
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    metrics: dict[str, float] = history[-1] if history else {}
    for epoch in range(first_epoch, params.epochs):
        src, fut = train_sampler.sample(params.pairs_per_epoch, rng)
        batches = _pair_batches(images, train_rows[src], train_rows[fut], params.batch_size, generator)
        train = train_one_epoch(model, batches, _step, optimizer, device, f"pretrain {epoch + 1}/{params.epochs}",
                                progress)
        scheduler.step()
        held = evaluate(model, _pair_batches(images, heldout_src, heldout_fut, params.batch_size, None), _step,
                        device)
        metrics = {**{f"train_{k}": v for k, v in train.items() if k != "loss"},
                   **{f"heldout_{k}": v for k, v in held.items() if k != "loss"}}
        metrics["heldout_recon_over_copy"] = metrics["heldout_recon_loss"] / metrics["heldout_copy_loss"]
        history.append(metrics)
        if state_path is not None:
            save_training_state(state_path, fingerprint, epoch, model, optimizer, scheduler, generator, history,
                                extra={"pair_rng": rng.bit_generator.state})
        log.info("pretrain epoch %d/%d: %s", epoch + 1, params.epochs,
                 ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    return model, metrics
