"""The training engine shared by pre-training and fine-tuning: device, seeds, one epoch, evaluation, checkpoints.

A *step function* ``step(model, batch) -> (loss, metrics)`` adapts the engine to a task: ``loss`` is a scalar
tensor to minimise, ``metrics`` a dict of floats averaged over the epoch (weighted by batch size).
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.io import atomic_path, sha256_file

__all__ = [
    "evaluate",
    "resolve_device",
    "resume_training_state",
    "save_checkpoint",
    "save_training_state",
    "seed_everything",
    "set_deterministic",
    "to_device",
    "train_one_epoch",
    "training_fingerprint",
]

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
StepFn = Callable[[nn.Module, Batch], tuple[torch.Tensor, dict[str, float]]]


def resolve_device(name: str) -> torch.device:
    """``'auto'`` → CUDA when present, else CPU; ``'cuda'`` without a GPU raises RuntimeError."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA device is available")
    if name == "cpu":
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _autocast(device: torch.device):
    # bf16 autocast on GPU; CPU runs in float32 (bf16 on CPU is slower here and changes numerics)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def to_device(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device``; on CUDA also in channels-last memory format (faster convolutions with bf16).
    Channels-last stays off on CPU: on torch 2.15's CPU build it corrupted the backward pass of 1x1 stride-2
    convolutions for odd batch sizes."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


def _to_device(batch: Batch, device: torch.device) -> Batch:
    moved = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if device.type == "cuda":  # images in channels-last, like the model (see to_device)
        moved = {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for k, v in moved.items()}
    return moved


class _WeightedMeans:
    """Running batch-size-weighted means of a step's loss and metrics."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.count = 0

    def add(self, batch: Batch, loss: torch.Tensor, metrics: dict[str, float]) -> None:
        size = len(next(iter(batch.values())))
        self.count += size
        for key, value in {"loss": loss.item(), **metrics}.items():
            self.sums[key] += value * size

    def means(self) -> dict[str, float]:
        return {key: value / max(self.count, 1) for key, value in self.sums.items()}


def train_one_epoch(model: nn.Module, batches: Iterable[Batch], step: StepFn, optimizer: torch.optim.Optimizer,
                    device: torch.device, desc: str = "train", progress: bool = True) -> dict[str, float]:
    """One pass over ``batches``: forward under autocast, backward, optimizer step.

    Returns:
        The batch-size-weighted means of ``loss`` and of every metric the step function returned.

    Raises:
        FloatingPointError: the loss became NaN or infinite (names the batch).
    """
    model.train()
    running = _WeightedMeans()
    for i, batch in enumerate(tqdm(batches, desc=desc, leave=False, disable=None if progress else True)):
        batch = _to_device(batch, device)
        with _autocast(device):
            loss, metrics = step(model, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: loss is {loss.item()} at batch {i}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running.add(batch, loss, metrics)
    return running.means()


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Batch], step: StepFn, device: torch.device) -> dict[str, float]:
    """Batch-size-weighted means of the step function's loss and metrics, in eval mode, without gradients."""
    model.eval()
    running = _WeightedMeans()
    for batch in batches:
        batch = _to_device(batch, device)
        with _autocast(device):
            loss, metrics = step(model, batch)
        running.add(batch, loss, metrics)
    return running.means()


def save_checkpoint(path: str | Path, **state: Any) -> None:
    """``torch.save(state)`` to ``path`` atomically (temporary file, then rename).

    Saved through a file handle: given a path, torch names the archive's inner folder after the (random)
    temporary file, so identical weights would give different bytes and a different DVC hash every run.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(state, handle)


def set_deterministic(enabled: bool) -> None:
    """Ask torch for deterministic kernels (``torch.use_deterministic_algorithms``; cuDNN autotuning off).
    Some CUDA ops then need ``CUBLAS_WORKSPACE_CONFIG=:4096:8``, which is set when absent."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.benchmark = not enabled


def training_fingerprint(sections: dict[str, Any], inputs: list[Path]) -> str:
    """Identifies the run a training state belongs to: the JSON of ``sections`` (params and run choices) and the
    sha256 of every input file, so a state saved under other params or other data is never resumed."""
    return json.dumps({**sections, "inputs": [sha256_file(path) for path in inputs]}, sort_keys=True)


def save_training_state(path: Path, fingerprint: str, epoch: int, model: nn.Module,
                        optimizer: torch.optim.Optimizer, scheduler: Any, generator: torch.Generator,
                        history: list[dict[str, float]], extra: dict | None = None) -> None:
    """Everything a killed run needs to continue exactly: weights, optimizer, scheduler, the finished ``epoch``
    (0-based), every RNG (Python, NumPy, torch CPU and CUDA, the batch ``generator``), the per-epoch
    ``history`` and the caller's ``extra`` state (e.g. a ``numpy.random.Generator``'s state); written
    atomically. ``fingerprint`` identifies the configuration it belongs to."""
    save_checkpoint(
        path, fingerprint=fingerprint, epoch=epoch, model=model.state_dict(), optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(), generator=generator.get_state(), history=history, extra=extra or {},
        rng={"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
    )


def resume_training_state(path: Path, fingerprint: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                          scheduler: Any, generator: torch.Generator) -> tuple[int, list[dict[str, float]], dict]:
    """Restore a :func:`save_training_state` file if it exists and matches ``fingerprint``.

    Returns:
        ``(first_epoch, history, extra)``: the epoch to run next (0 when there is nothing to resume), the
        finished epochs' metrics and the caller's extra state ({} when nothing is resumed). A state of another
        configuration is ignored (and logged), never mixed in.
    """
    if not path.is_file():
        return 0, [], {}
    state = torch.load(path, map_location="cpu", weights_only=False)  # our own file: RNG states are pickled
    if state["fingerprint"] != fingerprint:
        log.warning("%s belongs to another configuration; starting from epoch 1", path)
        return 0, [], {}
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"]:
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    log.info("resuming from %s after epoch %d", path, state["epoch"] + 1)
    return state["epoch"] + 1, list(state["history"]), dict(state["extra"])
