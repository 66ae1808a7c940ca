"""MA2MI pre-training: reconstruct future frames of macro-expression face videos (DESIGN §4).

Each step samples a source frame ``x_t`` and a future frame ``x_{t+k}`` of the same video, ``k`` drawn in
seconds from ``horizon_s``; the model sees ``x_t`` (position branch) and the difference ``x_{t+k} - x_t``
through a bottleneck (action branch) and predicts ``x_{t+k}``. The yardstick is the copy baseline
(``x_{t+k} ≈ x_t``) on frame pairs of held-out videos: ``recon_loss / copy_loss`` must be below 1.

Under ``torchrun`` (a process group of ``W`` ranks, see :mod:`pipeline.distributed`) the same function trains
with DDP: ``pairs_per_epoch`` and ``batch_size`` are global, so each rank draws ``pairs_per_epoch / W`` pairs
from its own random streams and steps on ``batch_size / W`` of them, and DDP averages the gradients: one
optimizer step sees ``batch_size`` pairs, as in one process. The metrics are averaged over all ranks.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipeline.config import ModelParams, PretrainParams
from pipeline.data import FuturePairSampler, images_to_tensor, iterate_batches, normalise
from pipeline.distributed import (RankInfo, all_gather_objects, all_reduce_means, broadcast_buffers, rank_info,
                                  rank_seed, wrap_ddp)
from pipeline.engine import Batch, evaluate, resume_training_state, save_training_state, to_device, train_one_epoch
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


class _Losses(nn.Module):
    """``MA2MI.losses`` as a module's ``forward``: DDP synchronises gradients only for calls through its own
    ``forward``, so the training step calls this module (wrapped by DDP under torchrun), never the method."""

    def __init__(self, model: MA2MI) -> None:
        super().__init__()
        self.model = model

    def forward(self, source: torch.Tensor, future: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.losses(source, future)


def _step(losses: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    out = losses(batch["source"], batch["future"])
    return out["recon_loss"], {"recon_loss": out["recon_loss"].item(), "copy_loss": out["copy_loss"].item()}


def _rank_state(generator: torch.Generator, rng: np.random.Generator, device: torch.device) -> dict:
    """This rank's random streams: batch generator, pair sampler, and the global ones (Python, NumPy, torch)."""
    return {"generator": generator.get_state(), "pair_rng": rng.bit_generator.state, "python": random.getstate(),
            "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _restore_rank_state(state: dict, generator: torch.Generator, rng: np.random.Generator,
                        device: torch.device) -> None:
    generator.set_state(state["generator"])
    rng.bit_generator.state = state["pair_rng"]
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def pretrain(index: pd.DataFrame, images: torch.Tensor, model_params: ModelParams, params: PretrainParams,
             device: torch.device, on_epoch: Callable[[int, dict[str, float]], None] | None = None,
             progress: bool = True, state_path: Path | None = None,
             fingerprint: str = "") -> tuple[MA2MI, dict[str, float]]:
    """Train MA2MI on the non-held-out videos for ``params.epochs`` epochs (the last epoch is kept: no
    selection on held-out data) and measure it on a fixed set of held-out pairs after each epoch.

    In a process group of ``W`` ranks (``torchrun``; every rank calls this with the same arguments) the model
    trains under DDP: each rank draws ``pairs_per_epoch / W`` pairs per epoch with its own random streams
    (seeded by :func:`pipeline.distributed.rank_seed`; rank 0's are the single-process ones) in batches of
    ``batch_size / W``; the held-out pairs are the same on every rank and split among them; after each epoch
    every rank takes rank 0's BatchNorm statistics, so all hold rank 0's model.

    Args:
        index: ``video, time_s`` per frame, aligned with ``images: (N, 3, H, W) uint8``.
        device: this rank's device (``cuda:<LOCAL_RANK>`` under torchrun on GPUs).
        on_epoch: called as ``on_epoch(epoch, metrics)`` after each epoch (e.g. DVCLive logging); after a
            resume, first for every epoch already finished. Under DDP, pass it on rank 0 only.
        state_path, fingerprint: as in :func:`pipeline.finetune.finetune_fold`: the full training state (and the
            pair sampler's RNG) is saved after every epoch, and a matching state is resumed exactly. Under DDP
            rank 0 writes it (with every rank's random streams) and every rank resumes from it: the weights,
            optimizer, scheduler and history are rank 0's (identical on all ranks), the random streams each
            rank's own.

    Returns:
        ``(model, metrics)``; ``metrics`` holds the last epoch's ``train_*`` and ``heldout_*`` values (means over
        all ranks' pairs) and ``heldout_recon_over_copy`` = ``heldout_recon_loss / heldout_copy_loss``. Under
        DDP every rank returns the same model and metrics.
    """
    world = rank_info()
    share, batch_size = params.pairs_per_epoch // world.world_size, params.batch_size // world.world_size
    heldout = split_heldout(index, params.heldout_videos)
    train_rows, heldout_rows = np.flatnonzero(~heldout), np.flatnonzero(heldout)
    train_sampler = FuturePairSampler(index.iloc[train_rows], params.horizon_s)
    heldout_sampler = FuturePairSampler(index.iloc[heldout_rows], params.horizon_s)
    rng = np.random.default_rng(params.seed)
    heldout_src, heldout_fut = heldout_sampler.sample(params.heldout_pairs, rng)  # the same on every rank
    heldout_src, heldout_fut = heldout_rows[heldout_src], heldout_rows[heldout_fut]
    if world.rank > 0:  # rank 0 goes on with the seed's stream, as a single process does
        rng = np.random.default_rng(rank_seed(params.seed, world.rank))
    shard = slice(world.rank, None, world.world_size)  # this rank's held-out pairs
    heldout_src, heldout_fut = heldout_src[shard], heldout_fut[shard]

    model = to_device(MA2MI(model_params), device)  # channels-last on CUDA
    losses = _Losses(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=params.epochs)
    generator = torch.Generator().manual_seed(rank_seed(params.seed, world.rank))
    first_epoch, history, extra = 0, [], {}
    if state_path is not None:
        first_epoch, history, extra = resume_training_state(state_path, fingerprint, model, optimizer, scheduler,
                                                            generator)
    if "ranks" in extra:
        _restore_rank_state(extra["ranks"][world.rank], generator, rng, device)
    elif "pair_rng" in extra:
        rng.bit_generator.state = extra["pair_rng"]
    trained = wrap_ddp(losses, device)
    for epoch, metrics in enumerate(history):
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    metrics: dict[str, float] = history[-1] if history else {}
    for epoch in range(first_epoch, params.epochs):
        src, fut = train_sampler.sample(share, rng)
        batches = _pair_batches(images, train_rows[src], train_rows[fut], batch_size, generator)
        train = train_one_epoch(trained, batches, _step, optimizer, device, f"pretrain {epoch + 1}/{params.epochs}",
                                progress)
        scheduler.step()
        broadcast_buffers(model)  # each rank updated BatchNorm statistics from its own batches
        held = evaluate(losses, _pair_batches(images, heldout_src, heldout_fut, batch_size, None), _step, device)
        train, held = all_reduce_means(train, share, device), all_reduce_means(held, len(heldout_src), device)
        metrics = {**{f"train_{k}": v for k, v in train.items() if k != "loss"},
                   **{f"heldout_{k}": v for k, v in held.items() if k != "loss"}}
        metrics["heldout_recon_over_copy"] = metrics["heldout_recon_loss"] / metrics["heldout_copy_loss"]
        history.append(metrics)
        if state_path is not None:
            _save_state(state_path, fingerprint, epoch, model, optimizer, scheduler, generator, rng, history,
                        world, device)
        log.info("pretrain epoch %d/%d: %s", epoch + 1, params.epochs,
                 ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    return model, metrics


def _save_state(path: Path, fingerprint: str, epoch: int, model: MA2MI, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler, generator: torch.Generator,
                rng: np.random.Generator, history: list[dict[str, float]], world: RankInfo,
                device: torch.device) -> None:
    """Rank 0 saves the training state; under DDP with every rank's random streams (a collective: every rank
    calls it)."""
    extra: dict = {"pair_rng": rng.bit_generator.state}
    if world.world_size > 1:
        extra["ranks"] = all_gather_objects(_rank_state(generator, rng, device))
    if world.is_main:
        save_training_state(path, fingerprint, epoch, model, optimizer, scheduler, generator, history, extra=extra)
