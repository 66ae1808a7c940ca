"""MA2MI pre-training: reconstruct future frames of macro-expression face videos (DESIGN §4).

Each step samples a source frame ``x_t`` and a future frame ``x_{t+k}`` of the same video, ``k`` drawn in
seconds from ``horizon_s``; the model sees ``x_t`` (position branch) and the difference ``x_{t+k} - x_t``
through a bottleneck (action branch) and predicts ``x_{t+k}``. The yardstick is the copy baseline
(``x_{t+k} ≈ x_t``) on frame pairs of held-out videos: ``recon_loss / copy_loss`` must be below 1.

Under ``torchrun`` (a process group of ``W`` ranks, see :mod:`pipeline.train.distributed`) the same function trains
with DDP: ``pairs_per_epoch`` and ``batch_size`` are global, so each rank draws ``pairs_per_epoch / W`` pairs
from its own random streams and steps on ``batch_size / W`` of them, and DDP averages the gradients: one
optimizer step sees ``batch_size`` pairs, as in one process. The metrics are averaged over all ranks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Sampler

from pipeline.config import ModelParams, Params, PretrainParams
from pipeline.data.macro import EpochPairs, FuturePairSampler, MacroFrames, macro_shards, pair_loader
from pipeline.data.tensors import normalise
from pipeline.io import write_json
from pipeline.models.ma2mi import MA2MI
from pipeline.train.distributed import all_reduce_means, broadcast_buffers, rank_info, rank_seed, wrap_ddp
from pipeline.train.engine import (
    Batch,
    EpochCurves,
    adamw,
    evaluate,
    fit,
    save_checkpoint,
    seed_everything,
    to_device,
    training_fingerprint,
)

__all__ = ["pretrain", "split_heldout", "train_and_save", "training_state_path"]

log = logging.getLogger(__name__)


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


def _pair_batches(loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
                  generator: torch.Generator | None) -> Iterator[Batch]:
    """Batches ``{'source', 'future'}``: ``(B, 3, H, W) float32`` ImageNet-normalised.

    From the loader's ``(B, 3, H, W) uint8`` pairs; with a generator each pair is mirrored with probability 1/2
    (both frames alike).
    """
    for source, future in loader:
        if generator is not None:
            flip = torch.rand(len(source), generator=generator) < 0.5
            source, future = source.clone(), future.clone()
            source[flip], future[flip] = source[flip].flip(-1), future[flip].flip(-1)
        yield {"source": normalise(source), "future": normalise(future)}


class _FixedPairs(Sampler):
    """Always the same pairs, in order (the held-out pairs)."""

    def __init__(self, pairs: list[tuple[int, int]]) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.pairs)


class _Losses(nn.Module):
    """``MA2MI.losses`` as a module's ``forward``.

    DDP synchronises gradients only for calls through its own ``forward``, so the training step calls this module
    (wrapped by DDP under torchrun), never the method.
    """

    def __init__(self, model: MA2MI) -> None:
        super().__init__()
        self.model = model

    def forward(self, source: torch.Tensor, future: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.losses(source, future)


def _step(losses: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    out = losses(batch["source"], batch["future"])
    return out["recon_loss"], {"recon_loss": out["recon_loss"].item(), "copy_loss": out["copy_loss"].item()}


def pretrain(frames: MacroFrames, model_params: ModelParams, params: PretrainParams,
             device: torch.device, on_epoch: Callable[[int, dict[str, float]], None] | None = None,
             progress: bool = True, state_path: Path | None = None,
             fingerprint: str = "") -> tuple[MA2MI, dict[str, float]]:
    """Train MA2MI on the non-held-out videos and measure it on a fixed set of held-out pairs after each epoch.

    Training runs for ``params.epochs`` epochs and the last epoch is kept (no selection on held-out data).

    In a process group of ``W`` ranks (``torchrun``; every rank calls this with the same arguments) the model
    trains under DDP: each rank draws ``pairs_per_epoch / W`` pairs per epoch with its own random streams
    (seeded by :func:`pipeline.train.distributed.rank_seed`; rank 0's are the single-process ones) in batches of
    ``batch_size / W``; the held-out pairs are the same on every rank and split among them; after each epoch
    every rank takes rank 0's BatchNorm statistics, so all hold rank 0's model.

    Args:
        frames: the ingested macro frames (:class:`pipeline.data.macro.MacroFrames`), read as pairs need them,
            through ``params.loader.workers`` DataLoader workers (pinned memory on CUDA).
        model_params: the ``model`` section (MA2MI's branches are built as MIACNet's).
        params: the ``pretrain`` section (seed, horizon, held-out videos, epochs, pairs, batch size, optimiser).
        device: this rank's device (``cuda:<LOCAL_RANK>`` under torchrun on GPUs).
        on_epoch: called as ``on_epoch(epoch, metrics)`` after each epoch (e.g. DVCLive logging); after a
            resume, first for every epoch already finished. Under DDP, pass it on rank 0 only.
        progress: show progress bars.
        state_path: as in :func:`pipeline.train.finetune.finetune_fold`: the full training state (and the pair
            sampler's RNG) is saved here after every epoch, and a matching state is resumed exactly. Under DDP
            rank 0 writes it (with every rank's random streams) and every rank resumes from it: the weights,
            optimizer, scheduler and history are rank 0's (identical on all ranks), the random streams each
            rank's own. None: no saving.
        fingerprint: identifies the configuration; a saved state is resumed only when it matches (see
            :func:`pipeline.train.engine.training_fingerprint`).

    Returns:
        ``(model, metrics)``; ``metrics`` holds the last epoch's ``train_*`` and ``heldout_*`` values (means over
        all ranks' pairs) and ``heldout_recon_over_copy`` = ``heldout_recon_loss / heldout_copy_loss``. Under
        DDP every rank returns the same model and metrics.
    """
    world = rank_info()
    share, batch_size = params.pairs_per_epoch // world.world_size, params.batch_size // world.world_size
    index = frames.index
    heldout = split_heldout(index, params.heldout_videos)
    train_rows, heldout_rows = np.flatnonzero(~heldout), np.flatnonzero(heldout)
    heldout_sampler = FuturePairSampler(index.iloc[heldout_rows], params.horizon_s)
    rng = np.random.default_rng(params.seed)
    heldout_src, heldout_fut = heldout_sampler.sample(params.heldout_pairs, rng)  # the same on every rank
    heldout_src, heldout_fut = heldout_rows[heldout_src], heldout_rows[heldout_fut]
    if world.rank > 0:  # rank 0 goes on with the seed's stream, as a single process does
        rng = np.random.default_rng(rank_seed(params.seed, world.rank))
    shard = slice(world.rank, None, world.world_size)  # this rank's held-out pairs
    heldout_pairs = list(zip(heldout_src[shard].tolist(), heldout_fut[shard].tolist(), strict=True))
    train_pairs = EpochPairs(index.iloc[train_rows], train_rows, params.horizon_s, world.rank, world.world_size)
    pin = device.type == "cuda"
    train_loader = pair_loader(frames, train_pairs, batch_size, params.loader.workers, pin)
    heldout_loader = pair_loader(frames, _FixedPairs(heldout_pairs), batch_size, params.loader.workers, pin)

    model = to_device(MA2MI(model_params), device)  # channels-last on CUDA
    losses = _Losses(model)
    optimizer = adamw(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=params.epochs)
    generator = torch.Generator().manual_seed(rank_seed(params.seed, world.rank))

    def train_batches(epoch: int) -> Iterator[Batch]:
        train_pairs.draw(share, rng)
        train_pairs.shuffle(generator)
        return _pair_batches(train_loader, generator)

    def end_epoch(epoch: int, train: dict[str, float]) -> dict[str, float]:
        broadcast_buffers(model)  # each rank updated BatchNorm statistics from its own batches
        held = evaluate(losses, _pair_batches(heldout_loader, None), _step, device)
        train, held = all_reduce_means(train, share, device), all_reduce_means(held, len(heldout_pairs), device)
        metrics = {**{f"train_{k}": v for k, v in train.items() if k != "loss"},
                   **{f"heldout_{k}": v for k, v in held.items() if k != "loss"}}
        metrics["heldout_recon_over_copy"] = metrics["heldout_recon_loss"] / metrics["heldout_copy_loss"]
        return metrics

    history = fit(model, optimizer, scheduler, params.epochs, train_batches, _step, device,
                  trained=wrap_ddp(losses, device), end_epoch=end_epoch,
                  streams={"batches": generator, "pairs": rng}, state_path=state_path, fingerprint=fingerprint,
                  on_epoch=on_epoch, desc="pretrain", progress=progress)
    return model, history[-1]


def training_state_path(params: Params) -> Path:
    """Where the resumable training state lives while the stage runs (removed by the stage on success)."""
    return params.paths.checkpoint_dir / "pretrain.pt"


def train_and_save(params: Params, out: Path, device: torch.device,
                   logger: logging.Logger | logging.LoggerAdapter) -> dict[str, float]:
    """Pre-train MA2MI on the shards of ``macro.sources`` under ``paths.macro_dir``; rank 0 writes into ``out``.

    The whole job of the ``pretrain`` stage, in one process or in every rank of ``torchrun``. Outputs (rank 0;
    the same files whatever the number of ranks): ``encoder.pt`` (``encoder``: the branch weights, ``decoder``:
    the decoder's, for the report's reconstruction examples, ``model_params``, ``metrics``), ``metrics.json``
    (the metrics rounded to 6 decimals) and ``dvclive/`` (one step per epoch;
    :class:`pipeline.train.engine.EpochCurves`,
    so nothing is written outside ``out``).

    Args:
        params: all params (``model``, ``pretrain``, ``macro.sources``: whose shards are read, the paths).
        out: the output folder.
        device: this rank's device.
        logger: where the start-up line goes (the flow's logger, or the rank's).

    Returns:
        The last epoch's metrics (see :func:`pretrain`), the same on every rank.

    Raises:
        FileNotFoundError, ValueError: as :func:`pipeline.data.macro.macro_shards` and :func:`pretrain`.
    """
    world = rank_info()
    seed_everything(rank_seed(params.pretrain.seed, world.rank))
    shards = macro_shards(params.paths.macro_dir, params.macro.sources)  # only macro.sources, no leftover
    frames = MacroFrames(shards, params.model.image_size_px, params.pretrain.loader.cache_mb)
    logger.info("%d frames from %d videos in %d shards on %s (rank %d of %d)", len(frames),
                frames.index["video"].nunique(), len(frames.shards), device, world.rank, world.world_size)
    fingerprint = training_fingerprint({"model": params.model.model_dump(mode="json"),
                                        "pretrain": params.pretrain.model_dump(mode="json", exclude={"loader"})},
                                       shards)
    run = {"state_path": training_state_path(params), "fingerprint": fingerprint}
    if not world.is_main:
        return pretrain(frames, params.model, params.pretrain, device, None, **run)[1]
    model, metrics = pretrain(frames, params.model, params.pretrain, device, EpochCurves(out / "dvclive"), **run)
    save_checkpoint(out / "encoder.pt", encoder=model.encoder_state_dict(), decoder=model.decoder.state_dict(),
                    model_params=params.model.model_dump(mode="json"), metrics=metrics)
    write_json({k: round(v, 6) for k, v in metrics.items()}, out / "metrics.json")
    return metrics
