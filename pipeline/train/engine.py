"""The training engine of pre-training and fine-tuning: one loop (:func:`fit`), one training-state format.

A *step function* ``step(model, batch) -> (loss, metrics)`` adapts the engine to a task: ``loss`` is a scalar
tensor to minimise, ``metrics`` a dict of floats averaged over the epoch (weighted by batch size).

:func:`fit` runs the epochs and saves the full training state after an epoch (every epoch, or the first epoch
ending ``save_every_s`` after the last save, and always the last), so a killed run resumes exactly where that
state stopped: weights, optimizer, scheduler, the finished epoch, the per-epoch history and every random
stream of every rank (Python, NumPy, torch CPU and CUDA, plus the caller's named generators: batch order, pair
sampling). In a process group of several ranks (``torchrun``, :mod:`pipeline.train.distributed`) rank 0 writes the
state with every rank's streams, and each rank resumes its own. :class:`EpochCurves` logs the per-epoch metrics
(``fit``'s ``on_epoch``) in DVCLive's files, in the run's own folder only.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.io import atomic_path, sha256_file
from pipeline.train.distributed import all_gather_objects, rank_info

__all__ = [
    "Batch",
    "EpochCurves",
    "RandomStream",
    "StepFn",
    "adamw",
    "evaluate",
    "fit",
    "save_checkpoint",
    "seed_everything",
    "set_deterministic",
    "to_device",
    "train_one_epoch",
    "training_fingerprint",
]

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
StepFn = Callable[[nn.Module, Batch], tuple[torch.Tensor, dict[str, float]]]
RandomStream = torch.Generator | np.random.Generator


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
    convolutions for odd batch sizes. On 2.14.1 (measured 2026-11-25) it would make a MIACNet training step 18%
    faster on one thread, but timm's ResNet-18 got gradients off by up to 62% of the largest one, and the backward
    pass of a MIACNet with 8-16 channels at 32 or 64 px crashed the process (segmentation fault).
    """
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

    Args:
        model: what ``step`` calls (e.g. a DDP wrapper).
        batches: dicts of tensors, moved to ``device`` here.
        step: the step function.
        optimizer: steps once per batch.
        device: where the model lives.
        desc: names the progress bar and the batch in errors.
        progress: show a tqdm bar (when the output is a terminal).

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

    Some CUDA ops then need ``CUBLAS_WORKSPACE_CONFIG=:4096:8``, which is set when absent.
    """
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.benchmark = not enabled


def adamw(param_groups: Iterable, **kwargs: Any) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` with the fused implementation (one kernel for every parameter).

    The default for-each-parameter loop took 6 of a demo fine-tuning stage's 66 s under cProfile on 2 CPU cores
    (the model has ~200 small tensors); fused AdamW (CPU and CUDA since torch 2.4) is the same algorithm in one
    kernel, equal up to float rounding.
    ``kwargs`` go to ``torch.optim.AdamW`` (``lr``, ``weight_decay``).
    """
    return torch.optim.AdamW(param_groups, fused=True, **kwargs)


def training_fingerprint(sections: dict[str, Any], inputs: list[Path]) -> str:
    """Identify the run a training state belongs to.

    Args:
        sections: params and run choices (JSON-serialisable).
        inputs: files whose bytes shape the run (hashed with sha256).

    Returns:
        A JSON string: a state saved under other params or other data is never resumed.
    """
    return json.dumps({**sections, "inputs": [sha256_file(path) for path in inputs]}, sort_keys=True)


def _capture_streams(streams: Mapping[str, RandomStream], device: torch.device) -> dict:
    """This process's random streams: Python, NumPy, torch CPU (and this rank's CUDA device), the named ones."""
    named = {name: s.get_state() if isinstance(s, torch.Generator) else s.bit_generator.state
             for name, s in streams.items()}
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None, "streams": named}


def _restore_streams(state: dict, streams: Mapping[str, RandomStream], device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    for name, stream in streams.items():
        if isinstance(stream, torch.Generator):
            stream.set_state(state["streams"][name])
        else:
            stream.bit_generator.state = state["streams"][name]


def _save_state(path: Path, fingerprint: str, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: Any, history: list[dict[str, float]], streams: Mapping[str, RandomStream],
                device: torch.device) -> None:
    """Rank 0 writes the training state with every rank's random streams (a collective: every rank calls it)."""
    ranks = all_gather_objects(_capture_streams(streams, device))
    if rank_info().is_main:
        save_checkpoint(path, fingerprint=fingerprint, epoch=epoch, model=model.state_dict(),
                        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), history=history,
                        ranks=ranks)


def _resume_state(path: Path, fingerprint: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                  scheduler: Any, streams: Mapping[str, RandomStream],
                  device: torch.device) -> tuple[int, list[dict[str, float]]]:
    """Restore a :func:`_save_state` file if it exists and matches; ``(first epoch to run, history)``.

    The file is read with ``torch.load(weights_only=False)``, which unpickles arbitrary objects and so can run code:
    the random streams' states are pickled Python objects. Only ever point this at a training state that this
    project wrote on this machine (``paths.checkpoint_dir``, ``final.cache_dir``: not tracked), never at a file
    from elsewhere. Every checkpoint that may be shared (final models, fold models, ``encoder.pt``) is loaded with
    ``weights_only=True`` instead.
    """
    if not path.is_file():
        return 0, []
    state = torch.load(path, map_location="cpu", weights_only=False)  # our own local file: RNG states are pickled
    world = rank_info()
    if state["fingerprint"] != fingerprint:
        log.warning("%s belongs to another configuration; starting from epoch 1", path)
        return 0, []
    if len(state["ranks"]) != world.world_size:
        raise RuntimeError(f"{path} was saved by {len(state['ranks'])} processes, this run has {world.world_size}")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _restore_streams(state["ranks"][world.rank], streams, device)
    log.info("resuming from %s after epoch %d", path, state["epoch"] + 1)
    return state["epoch"] + 1, list(state["history"])


def _save_due(last_epoch: bool, last_save: float, save_every_s: float) -> bool:
    """Whether the state is saved after this epoch (rank 0 decides: the save is a collective)."""
    due = last_epoch or save_every_s <= 0 or time.monotonic() - last_save >= save_every_s
    return all_gather_objects(due)[0]


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, epochs: int,
        train_batches: Callable[[int], Iterable[Batch]], step: StepFn, device: torch.device, *,
        trained: nn.Module | None = None,
        end_epoch: Callable[[int, dict[str, float]], dict[str, float]] | None = None,
        streams: Mapping[str, RandomStream] | None = None, state_path: Path | None = None,
        fingerprint: str = "", save_every_s: float = 0.0,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None,
        desc: str = "train", progress: bool = True) -> list[dict[str, float]]:
    """Train for ``epochs`` epochs (the last is kept: no epoch is selected), resuming a matching saved state.

    Each epoch: ``train_batches(epoch)`` gives the batches (drawn at the epoch's start, e.g. shuffled with a
    stream of ``streams``), :func:`train_one_epoch` steps through them, the scheduler steps once, and
    ``end_epoch(epoch, train_means)`` turns the training means into the epoch's metrics (e.g. adds held-out
    metrics, averages over ranks; default: the training means as they are). Then the state is saved, the
    metrics logged and ``on_epoch(epoch, metrics)`` called.

    Args:
        model: the module whose weights are trained and saved.
        optimizer: over ``model``'s parameters.
        scheduler: a torch LR scheduler, stepped once per epoch.
        epochs: how many epochs in all (a resumed run trains only the missing ones).
        train_batches: ``epoch (0-based) -> batches``.
        step: the step function.
        device: where ``model`` lives.
        trained: what ``step`` calls in training (e.g. ``model`` wrapped by DDP); default ``model``.
        end_epoch: see above; collective operations are allowed (every rank calls it).
        streams: the caller's random generators (``torch.Generator`` or ``numpy.random.Generator``), by name;
            saved and restored with the global ones (Python, NumPy, torch CPU and CUDA).
        state_path: where the training state is written (rank 0); when it exists with the same
            ``fingerprint``, training resumes after its last saved epoch and ends exactly as an uninterrupted
            run would (a finished run gives its final weights back without training). None: no saving.
        fingerprint: identifies the configuration (see :func:`training_fingerprint`).
        save_every_s: 0 saves the state after every epoch; more saves it after the first epoch that ends at
            least this many seconds after the previous save (or the start), and after the last epoch, so a
            killed run loses at most about this much training. Short epochs then do not pay a save each (~50 ms
            per save: 19% of a demo fine-tuning stage under cProfile when it saved every epoch). Rank 0's clock
            decides for every rank.
        on_epoch: called with ``(epoch, metrics)`` after each epoch; after a resume, first for every epoch
            already finished, so logged curves are whole. Under DDP, pass it on rank 0 only.
        desc: names the run in progress bars and log lines.
        progress: show progress bars.

    Returns:
        The per-epoch metrics, ``epochs`` entries.

    Raises:
        FloatingPointError: a NaN or infinite loss (names the epoch and batch).
        RuntimeError: a state saved by another number of processes.
    """
    streams = dict(streams or {})
    first_epoch, history = 0, []
    if state_path is not None:
        first_epoch, history = _resume_state(state_path, fingerprint, model, optimizer, scheduler, streams, device)
    for epoch, metrics in enumerate(history):
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    last_save = time.monotonic()
    for epoch in range(first_epoch, epochs):
        batches = train_batches(epoch)
        metrics = train_one_epoch(trained if trained is not None else model, batches, step, optimizer, device,
                                  f"{desc} epoch {epoch + 1}/{epochs}", progress)
        scheduler.step()
        if end_epoch is not None:
            metrics = end_epoch(epoch, metrics)
        history.append(metrics)
        if state_path is not None and _save_due(epoch == epochs - 1, last_save, save_every_s):
            _save_state(state_path, fingerprint, epoch, model, optimizer, scheduler, history, streams, device)
            last_save = time.monotonic()
        log.info("%s epoch %d/%d: %s", desc, epoch + 1, epochs, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    return history


class EpochCurves:
    """Per-epoch metric curves in DVCLive's files, written into one folder and nowhere else.

    Call it as :func:`fit`'s ``on_epoch``. The files are, byte for byte, those of
    ``dvclive.Live(dir=directory, dvcyaml=None)`` with one ``log_metric(prefix + key, value)`` per metric and one
    ``next_step()`` per epoch (written with DVCLive's own serialisers): ``plots/metrics/<prefix><key>.tsv`` (a
    ``step<TAB><key>`` header, one row per epoch, step = the 0-based epoch) and ``metrics.json`` (the last epoch's
    values, nested at ``/``, and its ``step``). The folder is emptied first: a rerun writes whole curves again.

    Unlike ``Live`` it opens no DVC repository, posts nothing to DVC Studio and writes none of DVCLive's workspace
    signal files for the VS Code extension (``<DVC_ROOT>/.dvc/tmp/exps/run/DVCLIVE_STEP_COMPLETED``, written
    after every step and removed check-then-remove in ``Live.end()``: under ``dvc repro`` two runs of one fold
    stage ending at once crashed one with ``FileNotFoundError``). So training runs side by side in one workspace,
    each with its own ``directory``, share no file.

    Args:
        directory: the run's own curve folder (e.g. ``dvclive/seed<s>``); removed and created again.
        prefix: put before each metric's name (``'train/'``: ``plots/metrics/train/loss.tsv``).

    Raises:
        TypeError: (on a call) a metric value that DVCLive cannot log (not an int, float or str).
    """

    def __init__(self, directory: str | Path, prefix: str = "") -> None:
        from dvclive.plots import Metric  # DVCLive imports DVC (~1 s): only where curves are written
        from dvclive.serialize import dump_json

        self._metric, self._dump_json = Metric, dump_json
        self.directory, self.prefix = Path(directory), prefix
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True)
        self.summary: dict[str, Any] = {}

    def __call__(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Append epoch ``epoch``'s ``metrics`` (name -> value) to their curves and rewrite ``metrics.json``."""
        for key, value in metrics.items():
            name = self.prefix + key
            if not self._metric.could_log(value):
                raise TypeError(f"{self.directory}: metric {name!r} of epoch {epoch} is a {type(value).__name__}, "
                                "not an int, float or str")
            if isinstance(value, float) and not math.isfinite(value):
                value = str(value)  # as Live.log_metric: 'nan', 'inf'
            metric = self._metric(name, str(self.directory / "plots"))
            metric.step = epoch
            metric.dump(value)
            node = self.summary
            *parents, leaf = name.split("/")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        self.summary["step"] = epoch
        self._dump_json(self.summary, str(self.directory / "metrics.json"))
