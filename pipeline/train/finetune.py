"""Fine-tuning a classifier (MIACNet, or a baseline) on one LOSO fold, once per seed (DESIGN §5, §6).

The model trains for a fixed number of epochs on every subject but the held-out one, then predicts the held-out
subject once. Nothing is measured on the test subject during training, so no epoch can be selected on it.
:func:`finetune_seed` is the whole per-seed job of a ``finetune_<arm>@<fold>`` stage; the stage only reads the
inputs and writes the outputs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import RecipeParams
from pipeline.data.loso import ALL_LABELS, LosoFold, label_budget
from pipeline.data.micro import MicroTensors
from pipeline.data.tensors import PairAugmentation
from pipeline.models.registry import ArmModel, create_model, input_names, model_inputs
from pipeline.train.engine import Batch, EpochCurves, adamw, fit, save_checkpoint, seed_everything, to_device

__all__ = ["PREDICTION_COLUMNS", "SAVE_EVERY_S", "finetune_fold", "finetune_seed", "lr_scheduler", "predict"]

log = logging.getLogger(__name__)

SAVE_EVERY_S = 30.0  # a fine-tuning run's state is saved at most this often (and at its end): see engine.fit

PREDICTION_COLUMNS = ["sample_id", "dataset", "source_dataset", "subject", "clip", "label", "label_name"]


def _param_groups(model: nn.Module, params: RecipeParams, pretrained: bool) -> list[dict]:
    """AdamW parameter groups.

    With pre-trained branches, the branches (lr scaled by ``encoder_lr_scale``) and the fresh head
    (``model.head_parameters()``); otherwise one group.
    """
    if not pretrained:
        return [{"params": list(model.parameters()), "lr": params.lr}]
    head = model.head_parameters()
    ids = {id(p) for p in head}
    encoder = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": encoder, "lr": params.lr * params.encoder_lr_scale}, {"params": head, "lr": params.lr}]


def lr_scheduler(optimizer: torch.optim.Optimizer, params: RecipeParams) -> torch.optim.lr_scheduler.LRScheduler:
    """The recipe's per-epoch schedule (stepped once per epoch).

    ``cosine``: cosine annealing from the initial lr to 0 over ``epochs``. ``exponential``: ``lr * lr_gamma **
    min(epoch, decay_epochs)``, MMNet's reference recipe (``ExponentialLR(gamma=0.987)`` stepped only during the
    first 50 of 74 epochs; Li et al., IJCAI 2022, github.com/muse1998/MMNet).
    """
    if params.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=params.epochs)
    gamma, decay_epochs = params.lr_gamma, params.decay_epochs
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: gamma ** min(epoch, decay_epochs))


def finetune_fold(data: MicroTensors, fold: LosoFold, *, num_classes: int, model: ArmModel, params: RecipeParams,
                  seed: int, device: torch.device, encoder_state: dict | None = None,
                  on_epoch: Callable[[int, dict[str, float]], None] | None = None, progress: bool = True,
                  state_path: Path | None = None, fingerprint: str = "",
                  save_every_s: float = SAVE_EVERY_S) -> nn.Module:
    """Train the classifier ``model.name`` on ``fold.train_idx`` for exactly ``params.epochs`` epochs.

    Args:
        data: the samples' crops at the model's input size (``model.image_size_px``).
        fold: the LOSO fold; only its training rows are seen.
        num_classes: K.
        model: the arm's classifier (:func:`pipeline.models.registry.arm_model`): its registry name (``miacnet``,
            ``mmnet``, …) and ``model`` section at the arm's input size.
        params: the recipe (``finetune.recipe``).
        seed: seeds every RNG (model initialisation, batch order, augmentation) before the model is built.
        device: where to train.
        encoder_state: pre-trained branch weights (MA2MI ``encoder_state_dict``, ``miacnet`` only), or None to
            start from scratch.
        on_epoch: called as ``on_epoch(epoch, {'loss', 'accuracy'})`` with TRAINING metrics after each epoch
            (after a resume, first for every epoch already finished, so logged curves are whole).
        progress: show progress bars.
        state_path: where the full training state is saved (see ``save_every_s``); when it exists with the same
            ``fingerprint`` (a hash of everything that shapes the run), training resumes after its last epoch
            and ends exactly as an uninterrupted run would (a finished run's state gives its final weights back
            without training). None: no saving, no resuming.
        fingerprint: see ``state_path``.
        save_every_s: the state is saved after the first epoch ending this long after the previous save, and
            after the last epoch (0: every epoch; :func:`pipeline.train.engine.fit`).

    Returns:
        The trained model (eval mode).
    """
    seed_everything(seed)
    net = create_model(model.name, num_classes, model.params)
    if encoder_state is not None:
        net.load_encoder_state_dict(encoder_state)
    net = to_device(net, device)
    optimizer = adamw(_param_groups(net, params, encoder_state is not None), weight_decay=params.weight_decay)
    scheduler = lr_scheduler(optimizer, params)
    augment = PairAugmentation(params.flip, params.rotate_deg, params.translate_px)
    generator = torch.Generator().manual_seed(seed)
    flow_size_px = getattr(net, "flow_size_px", None)
    with_flow = "flow" in input_names(net)

    def step(module: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        logits = module(*model_inputs(module, batch))
        loss = F.cross_entropy(logits, batch["label"], label_smoothing=params.label_smoothing)
        return loss, {"accuracy": (logits.argmax(1) == batch["label"]).float().mean().item()}

    fit(net, optimizer, scheduler, params.epochs,
        lambda epoch: data.batches(fold.train_idx, params.batch_size, generator, augment, flow_size_px, with_flow),
        step, device, streams={"batches": generator}, state_path=state_path, fingerprint=fingerprint,
        save_every_s=save_every_s, on_epoch=on_epoch, progress=progress,
        desc=f"fold {fold.index} ({fold.test_subject}) {model.name} seed {seed}")
    return net.eval()


@torch.no_grad()
def predict(model: nn.Module, data: MicroTensors, rows: np.ndarray, device: torch.device,
            batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """``(predicted (n,) int64, probabilities (n, K) float32)`` for the samples at ``rows``."""
    model.eval()
    flow_size_px = getattr(model, "flow_size_px", None)
    probabilities = [
        torch.softmax(model(*[x.to(device) for x in model_inputs(model, b)]).float(), dim=1).cpu()
        for b in data.batches(rows, batch_size, None, flow_size_px=flow_size_px,
                              with_flow="flow" in input_names(model))
    ]
    probs = torch.cat(probabilities).numpy()
    return probs.argmax(1), probs


def finetune_seed(*, samples: pd.DataFrame, data: MicroTensors, classes: list[str], fold: LosoFold, arm: str,
                  model: ArmModel, recipe: RecipeParams, seed: int, device: torch.device, encoder_state: dict | None,
                  out: Path, state_path: Path | None = None, fingerprint: str = "",
                  budget: int | None = None) -> pd.DataFrame:
    """One seed of a ``finetune_<arm>@<fold>`` stage.

    Train, log the curve, save the model, predict the held-out subject. With a label ``budget``, train on at most
    that many clips per class and training subject (:func:`pipeline.data.loso.label_budget`), for the label-efficiency
    curve: the curve goes to ``dvclive/budget<k>/seed<s>/`` and no model is saved.

    Writes into ``out``: ``dvclive/seed<s>/`` (per-epoch training loss and accuracy, DVCLive's files written by
    :class:`pipeline.train.engine.EpochCurves`: nothing outside that folder, so runs side by side share no file) and
    ``model_seed<s>.pt`` (``model`` state dict, ``model_name``, ``arm``, ``fold``, ``seed``, ``test_subject``).

    Args:
        samples: the samples table (:mod:`pipeline.data.micro_table`), row-aligned with ``data``.
        data: its crops at the arm's input size.
        classes: class names in label order.
        fold: the LOSO fold.
        arm: a key of :data:`pipeline.arms.ARMS`.
        model: the arm's classifier (:func:`pipeline.models.registry.arm_model`).
        recipe: ``finetune.recipe``.
        seed: the seed of this run.
        device: where to train.
        encoder_state: MA2MI's branches for a pre-trained arm, else None.
        out: the stage's output folder.
        state_path: the seed's resumable training state (see :func:`finetune_fold`).
        fingerprint: see :func:`finetune_fold`.
        budget: training clips per class and subject, or None for all of them.

    Returns:
        The held-out subject's predictions: :data:`PREDICTION_COLUMNS`, ``predicted``, one ``prob_<class>`` per
        class, ``arm``, ``model``, ``fold``, ``seed``, ``label_budget`` (``'all'`` or the budget as text), and
        ``train_clips`` (how many clips it trained on); one row per test sample.
    """
    train = fold if budget is None else label_budget(fold, samples["subject"], samples["label"], budget, seed)
    curve = out / "dvclive" / (f"seed{seed}" if budget is None else f"budget{budget}/seed{seed}")
    net = finetune_fold(data, train, num_classes=len(classes), model=model, params=recipe, seed=seed, device=device,
                        encoder_state=encoder_state, on_epoch=EpochCurves(curve, prefix="train/"),
                        state_path=state_path, fingerprint=fingerprint)
    predicted, probs = predict(net, data, fold.test_idx, device)
    table = samples.iloc[fold.test_idx][PREDICTION_COLUMNS].reset_index(drop=True)
    table["predicted"] = predicted
    table[[f"prob_{name}" for name in classes]] = probs
    table["arm"], table["model"], table["fold"], table["seed"] = arm, model.name, fold.index, seed
    table["label_budget"] = ALL_LABELS if budget is None else str(budget)
    table["train_clips"] = len(train.train_idx)
    if budget is None:
        save_checkpoint(out / f"model_seed{seed}.pt", model=net.state_dict(), model_name=model.name, arm=arm,
                        fold=fold.index, seed=seed, test_subject=fold.test_subject)
    log.info("fold %d (%s), %s, seed %d, %s training clips: accuracy %.3f on %d held-out samples", fold.index,
             fold.test_subject, arm, seed, len(train.train_idx), float((table["predicted"] == table["label"]).mean()),
             len(table))
    return table
