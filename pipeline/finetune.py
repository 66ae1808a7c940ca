"""Fine-tuning MIACNet on one LOSO fold (DESIGN §5, §6).

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
from pipeline.engine import Batch, resume_training_state, save_training_state, train_one_epoch
from pipeline.loso import LosoFold
from pipeline.models import create_model

__all__ = ["MicroTensors", "finetune_fold", "predict"]

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
    """Two AdamW groups: the branches (lr scaled by ``encoder_lr_scale`` when pre-trained) and the head."""
    head = model.head_parameters()
    ids = {id(p) for p in head}
    encoder = [p for p in model.parameters() if id(p) not in ids]
    scale = params.encoder_lr_scale if pretrained else 1.0
    return [{"params": encoder, "lr": params.lr * scale}, {"params": head, "lr": params.lr}]


def finetune_fold(data: MicroTensors, fold: LosoFold, num_classes: int, model_params: ModelParams,
                  params: FinetuneParams, device: torch.device, encoder_state: dict | None,
                  on_epoch: Callable[[int, dict[str, float]], None] | None = None, progress: bool = True,
                  state_path: Path | None = None, fingerprint: str = "") -> nn.Module:
    """Train MIACNet on ``fold.train_idx`` for exactly ``params.epochs`` epochs.

    Args:
        encoder_state: pre-trained branch weights (MA2MI ``encoder_state_dict``), or None to start from scratch.
        on_epoch: called as ``on_epoch(epoch, {'loss', 'accuracy'})`` with TRAINING metrics after each epoch
            (after a resume, first for every epoch already finished, so logged curves are whole).
        state_path: where the full training state is saved after every epoch; when it exists with the same
            ``fingerprint`` (a hash of everything that shapes the run), training resumes after its last epoch
            and ends exactly as an uninterrupted run would. None: no saving, no resuming.

    Returns:
        The trained model (eval mode).
    """
    model = create_model("miacnet", num_classes, model_params)
    if encoder_state is not None:
        model.load_encoder_state_dict(encoder_state)
    model = model.to(device)
    optimizer = torch.optim.AdamW(_param_groups(model, params, encoder_state is not None),
                                  weight_decay=params.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=params.epochs)
    augment = pair_augmentation(params.flip, params.rotate_deg, params.translate_px, model_params.image_size_px)
    generator = torch.Generator().manual_seed(params.seed)

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
                                f"fold {fold.index} epoch {epoch + 1}/{params.epochs}", progress)
        scheduler.step()
        history.append(train)
        if state_path is not None:
            save_training_state(state_path, fingerprint, epoch, model, optimizer, scheduler, generator, history)
        log.info("fold %d (%s) epoch %d/%d: train loss %.4f, train accuracy %.3f", fold.index, fold.test_subject,
                 epoch + 1, params.epochs, train["loss"], train["accuracy"])
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
