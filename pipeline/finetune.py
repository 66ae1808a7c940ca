"""Fine-tuning a classifier (MIACNet, or a baseline) on one LOSO fold (DESIGN §5, §6).

The model trains for a fixed number of epochs on every subject but the held-out one, then predicts the held-out
subject once. Nothing is measured on the test subject during training, so no epoch can be selected on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import FinetuneParams, ModelParams
from pipeline.data import images_to_tensor, iterate_batches, normalise, pair_augmentation
from pipeline.engine import (
    Batch,
    resume_training_state,
    save_training_state,
    seed_everything,
    to_device,
    train_one_epoch,
)
from pipeline.loso import LosoFold
from pipeline.models import create_model

__all__ = ["MicroTensors", "finetune_fold", "lr_scheduler", "predict"]

log = logging.getLogger(__name__)


class MicroTensors:
    """A samples table's onset/apex crops as ``(N, 3, S, S) uint8`` tensors and its labels as ``(N,) int64``."""

    def __init__(self, samples: pd.DataFrame, size_px: int):
        self.onset = images_to_tensor(samples["onset_image"].tolist(), size_px)
        self.apex = images_to_tensor(samples["apex_image"].tolist(), size_px)
        self.label = torch.tensor(samples["label"].to_numpy(), dtype=torch.int64)  # a copy: pandas arrays are read-only

    def batches(self, rows: np.ndarray, batch_size: int, generator: torch.Generator | None,
                augment: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Iterator[Batch]:
        """Batches ``{'onset', 'apex'}: (B, 3, S, S) float32`` ImageNet-normalised and ``'label': (B,)``;
        ``augment`` maps a ``(6, S, S) uint8`` stacked pair to an augmented one (same warp for both)."""
        rows = torch.as_tensor(rows)
        for batch in iterate_batches(len(rows), batch_size, generator):
            pick = rows[batch]
            onset, apex = self.onset[pick], self.apex[pick]
            if augment is not None:
                pairs = torch.stack([augment(torch.cat(pair)) for pair in zip(onset, apex)])  # (B, 6, S, S)
                onset, apex = pairs[:, :3], pairs[:, 3:]
            yield {"onset": normalise(onset), "apex": normalise(apex), "label": self.label[pick]}


def _param_groups(model: nn.Module, params: FinetuneParams, pretrained: bool) -> list[dict]:
    """AdamW groups: with pre-trained branches, the branches (lr scaled by ``encoder_lr_scale``) and the fresh
    head (``model.head_parameters()``); otherwise one group."""
    if not pretrained:
        return [{"params": list(model.parameters()), "lr": params.lr}]
    head = model.head_parameters()
    ids = {id(p) for p in head}
    encoder = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": encoder, "lr": params.lr * params.encoder_lr_scale}, {"params": head, "lr": params.lr}]


def lr_scheduler(optimizer: torch.optim.Optimizer, params: FinetuneParams) -> torch.optim.lr_scheduler.LRScheduler:
    """The recipe's per-epoch schedule (stepped once per epoch).

    ``cosine``: cosine annealing from the initial lr to 0 over ``epochs``. ``exponential``: ``lr * lr_gamma **
    min(epoch, decay_epochs)``, MMNet's reference recipe (``ExponentialLR(gamma=0.987)`` stepped only during the
    first 50 of 74 epochs; Li et al., IJCAI 2022, github.com/muse1998/MMNet).
    """
    if params.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=params.epochs)
    gamma, decay_epochs = params.lr_gamma, params.decay_epochs
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: gamma ** min(epoch, decay_epochs))


def finetune_fold(data: MicroTensors, fold: LosoFold, num_classes: int, model_name: str, model_params: ModelParams,
                  params: FinetuneParams, seed: int, device: torch.device, encoder_state: dict | None,
                  on_epoch: Callable[[int, dict[str, float]], None] | None = None, progress: bool = True,
                  state_path: Path | None = None, fingerprint: str = "") -> nn.Module:
    """Train the classifier ``model_name`` on ``fold.train_idx`` for exactly ``params.epochs`` epochs.

    Args:
        data: the samples' crops at the model's input size (``model_params.image_size_px``).
        model_name: a :func:`pipeline.models.create_model` name (``miacnet``, ``mmnet``, ``resnet18-diff``).
        seed: seeds every RNG (model initialisation, batch order, augmentation) before the model is built.
        encoder_state: pre-trained branch weights (MA2MI ``encoder_state_dict``, ``miacnet`` only), or None to
            start from scratch.
        on_epoch: called as ``on_epoch(epoch, {'loss', 'accuracy'})`` with TRAINING metrics after each epoch
            (after a resume, first for every epoch already finished, so logged curves are whole).
        state_path: where the full training state is saved after every epoch; when it exists with the same
            ``fingerprint`` (a hash of everything that shapes the run), training resumes after its last epoch
            and ends exactly as an uninterrupted run would (a finished run's state gives its final weights back
            without training). None: no saving, no resuming.

    Returns:
        The trained model (eval mode).
    """
    seed_everything(seed)
    model = create_model(model_name, num_classes, model_params)
    if encoder_state is not None:
        model.load_encoder_state_dict(encoder_state)
    model = to_device(model, device)
    optimizer = torch.optim.AdamW(_param_groups(model, params, encoder_state is not None),
                                  weight_decay=params.weight_decay)
    scheduler = lr_scheduler(optimizer, params)
    augment = pair_augmentation(params.flip, params.rotate_deg, params.translate_px, model_params.image_size_px)
    generator = torch.Generator().manual_seed(seed)

    def step(net: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        logits = net(batch["onset"], batch["apex"])
        loss = F.cross_entropy(logits, batch["label"], label_smoothing=params.label_smoothing)
        return loss, {"accuracy": (logits.argmax(1) == batch["label"]).float().mean().item()}

    first_epoch, history = 0, []
    if state_path is not None:
        first_epoch, history, _ = resume_training_state(state_path, fingerprint, model, optimizer, scheduler,
                                                        generator)
    for epoch, train in enumerate(history):
        if on_epoch is not None:
            on_epoch(epoch, train)
    for epoch in range(first_epoch, params.epochs):
        batches = data.batches(fold.train_idx, params.batch_size, generator, augment)
        train = train_one_epoch(model, batches, step, optimizer, device,
                                f"fold {fold.index} seed {seed} epoch {epoch + 1}/{params.epochs}", progress)
        scheduler.step()
        history.append(train)
        if state_path is not None:
            save_training_state(state_path, fingerprint, epoch, model, optimizer, scheduler, generator, history)
        log.info("fold %d (%s) %s seed %d epoch %d/%d: train loss %.4f, train accuracy %.3f", fold.index,
                 fold.test_subject, model_name, seed, epoch + 1, params.epochs, train["loss"], train["accuracy"])
        if on_epoch is not None:
            on_epoch(epoch, train)
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, data: MicroTensors, rows: np.ndarray, device: torch.device,
            batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """``(predicted (n,) int64, probabilities (n, K) float32)`` for the samples at ``rows``."""
    model.eval()
    probabilities = [
        torch.softmax(model(b["onset"].to(device), b["apex"].to(device)).float(), dim=1).cpu()
        for b in data.batches(rows, batch_size, None)
    ]
    probs = torch.cat(probabilities).numpy()
    return probs.argmax(1), probs
