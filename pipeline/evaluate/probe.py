"""Linear probe of a frozen encoder: what MA2MI's action code knows about micro-expressions before fine-tuning.

The encoder's weights stay as they are (MA2MI's ``encoder.pt``, or a random initialisation per seed); for each
LOSO fold its BatchNorm statistics are re-estimated on the fold's training clips (the same adaptation for every
encoder, never on the test subject), every clip's action code ``A(onset, apex)`` (``code_channels`` x h x w, the
bottleneck pre-training squeezes motion through) is flattened, and a logistic regression (scikit-learn, standardised
features, fixed ``C`` = :data:`PROBE_C`: nothing is tuned) is trained on the training subjects and predicts the
held-out one. Pooled LOSO accuracy, UF1 and UAR as in :mod:`pipeline.evaluate.ablation`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from pipeline.config import ModelParams
from pipeline.data.loso import loso_folds
from pipeline.data.micro import MicroTensors
from pipeline.models.miacnet import MIACNet
from pipeline.train.engine import seed_everything

__all__ = ["PROBE_C", "action_codes", "frozen_encoder", "probe_predictions", "recalibrate_batchnorm"]

PROBE_C = 1.0  # inverse L2 strength of the logistic regression (scikit-learn's default), the same for every encoder


def frozen_encoder(model_params: ModelParams, num_classes: int, encoder_state: dict | None, seed: int) -> MIACNet:
    """MIACNet with MA2MI's branches (``encoder_state``) or, when None, randomly initialised with ``seed``."""
    seed_everything(seed)
    model = MIACNet(model_params, num_classes)
    if encoder_state is not None:
        model.load_encoder_state_dict(encoder_state)
    return model.requires_grad_(False)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data: MicroTensors, rows: np.ndarray, batch_size: int = 64) -> None:
    """Re-estimate every BatchNorm's running mean and variance on the clips at ``rows``.

    A cumulative average over one pass, no augmentation; the weights stay frozen.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative moving average: the statistics of all the batches seen
    model.train()
    for batch in data.batches(rows, batch_size, None):
        model.action_branch(batch["onset"], batch["apex"])
        model.position_branch(batch["onset"])
    model.eval()


@torch.no_grad()
def action_codes(model: MIACNet, data: MicroTensors, rows: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The flattened action codes of the clips at ``rows``: ``(n, code_channels * h * w)`` float32 (eval mode)."""
    model.eval()
    codes = [model.action_branch(b["onset"], b["apex"]).flatten(1) for b in data.batches(rows, batch_size, None)]
    return torch.cat(codes).numpy()


def probe_predictions(model: MIACNet, data: MicroTensors, subjects: pd.Series) -> np.ndarray:
    """LOSO predictions of a logistic regression on ``model``'s frozen action codes.

    Args:
        model: the frozen encoder (its BatchNorm statistics are re-estimated per fold, in place).
        data: every sample's crops and labels.
        subjects: the samples' subject ids (groups of the LOSO folds: every subject is held out once).

    Returns:
        ``(N,)`` int64: each sample's predicted label, from the fold that held its subject out.
    """
    predicted = np.empty(len(subjects), dtype=np.int64)
    labels = data.label.numpy()
    for fold in loso_folds(subjects):
        recalibrate_batchnorm(model, data, fold.train_idx)
        train, test = action_codes(model, data, fold.train_idx), action_codes(model, data, fold.test_idx)
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=5000))
        probe.fit(train, labels[fold.train_idx])
        predicted[fold.test_idx] = probe.predict(test)
    return predicted
