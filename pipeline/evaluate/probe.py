"""Linear probe of a frozen encoder: what MA2MI's action code knows about micro-expressions before fine-tuning.

The encoder's weights stay as they are (MA2MI's ``encoder.pt``, or a random initialisation per seed); for each
LOSO fold its BatchNorm statistics are re-estimated on the fold's training clips (the same adaptation for every
encoder, never on the test subject), every clip's action code ``A(onset, apex)`` (``code_channels`` x h x w, the
bottleneck pre-training squeezes motion through) is flattened (``features='flattened'``: where the motion is, which
separates AU patterns) or averaged over space (``'pooled'``: ``code_channels`` values, what the motion is but not
where), and a logistic regression (scikit-learn, standardised
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

__all__ = ["PROBE_C", "PROBE_FEATURES", "action_codes", "frozen_encoder", "probe_predictions", "recalibrate_batchnorm"]

PROBE_C = 1.0  # inverse L2 strength of the logistic regression (scikit-learn's default), the same for every encoder
PROBE_FEATURES = ("flattened", "pooled")  # how the action code becomes a feature vector (see the module docstring)


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
def action_codes(model: MIACNet, data: MicroTensors, rows: np.ndarray, batch_size: int = 64,
                 features: str = "flattened") -> np.ndarray:
    """The action codes of the clips at ``rows`` (eval mode), float32, one row per clip.

    ``(n, code_channels * h * w)`` flattened, or ``(n, code_channels)`` averaged over space (``features='pooled'``).

    Raises:
        ValueError: ``features`` is not one of :data:`PROBE_FEATURES`.
    """
    if features not in PROBE_FEATURES:
        raise ValueError(f"probe features {features!r}: expected one of {PROBE_FEATURES}")
    model.eval()
    codes = [model.action_branch(b["onset"], b["apex"]) for b in data.batches(rows, batch_size, None)]
    codes = [code.mean((2, 3)) if features == "pooled" else code.flatten(1) for code in codes]
    return torch.cat(codes).numpy()


def probe_predictions(model: MIACNet, data: MicroTensors, subjects: pd.Series,
                      features: tuple[str, ...] = ("flattened",)) -> dict[str, np.ndarray]:
    """LOSO predictions of a logistic regression on ``model``'s frozen action codes, per kind of feature.

    Args:
        model: the frozen encoder (its BatchNorm statistics are re-estimated per fold, in place).
        data: every sample's crops and labels.
        subjects: the samples' subject ids (groups of the LOSO folds: every subject is held out once).
        features: the kinds of feature vector (:data:`PROBE_FEATURES`), each probed on the same recalibrated
            encoder.

    Returns:
        feature kind -> ``(N,)`` int64: each sample's predicted label, from the fold that held its subject out.
    """
    predicted = {kind: np.empty(len(subjects), dtype=np.int64) for kind in features}
    labels = data.label.numpy()
    for fold in loso_folds(subjects):
        recalibrate_batchnorm(model, data, fold.train_idx)
        for kind in features:
            train = action_codes(model, data, fold.train_idx, features=kind)
            test = action_codes(model, data, fold.test_idx, features=kind)
            probe = make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=5000))
            probe.fit(train, labels[fold.train_idx])
            predicted[kind][fold.test_idx] = probe.predict(test)
    return predicted
