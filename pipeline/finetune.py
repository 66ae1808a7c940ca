"""Fine-tuning a classifier (MIACNet, or a baseline) on one LOSO fold, once per seed (DESIGN §5, §6).

The model trains for a fixed number of epochs on every subject but the held-out one, then predicts the held-out
subject once. Nothing is measured on the test subject during training, so no epoch can be selected on it.
:func:`finetune_seed` is the whole per-seed job of a ``finetune_<arm>@<fold>`` stage; the stage only reads the
inputs and writes the outputs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from dvclive import Live
from torch import nn

from pipeline.arms import ARMS
from pipeline.config import ConfigError, ModelParams, Params, RecipeParams
from pipeline.data import PairAugmentation, images_to_tensor, iterate_batches, normalise
from pipeline.engine import Batch, fit, save_checkpoint, seed_everything, to_device
from pipeline.flow import resize_flow
from pipeline.io import decode_array
from pipeline.loso import LosoFold
from pipeline.models.registry import MODELS, create_model, input_names

__all__ = ["PREDICTION_COLUMNS", "MicroTensors", "arm_model", "finetune_fold", "finetune_seed", "lr_scheduler",
           "model_inputs", "predict"]

log = logging.getLogger(__name__)

PREDICTION_COLUMNS = ["sample_id", "dataset", "source_dataset", "subject", "clip", "label", "label_name"]


def arm_model(params: Params, arm: str) -> tuple[str, ModelParams]:
    """The model of ``arm``.

    MIACNet with the ``model`` section, or the baseline model with the ``model`` section at
    ``finetune.baseline.image_size_px``.

    Returns:
        ``(model name, model params)`` for :func:`pipeline.models.registry.create_model`.

    Raises:
        ConfigError: ``arm`` is not an arm, or ``finetune.baseline.model`` is not a model of the registry.
    """
    if arm not in ARMS:
        raise ConfigError(f"{arm!r} is not an arm; known: {', '.join(ARMS)}")
    if not ARMS[arm].baseline:
        return "miacnet", params.model
    baseline = params.finetune.baseline
    if baseline.model not in MODELS:
        raise ConfigError(f"finetune.baseline.model: {baseline.model!r} is not a model; known: "
                          f"{', '.join(sorted(MODELS))}")
    return baseline.model, params.model.model_copy(update={"image_size_px": baseline.image_size_px})


class MicroTensors:
    """A samples table's inputs as tensors, and batches of them.

    Attributes:
        onset, apex: ``(N, 3, S, S) uint8`` RGB crops at ``size_px``.
        flow: ``(N, 3, S, S) float32`` onset → apex optical flow (u, v in px of the S grid, optical strain) when
            the table has a ``flow`` column (``micro.optical_flow: tvl1``), else None.
        label: ``(N,) int64``.
    """

    def __init__(self, samples: pd.DataFrame, size_px: int):
        self.onset = images_to_tensor(samples["onset_image"].tolist(), size_px)
        self.apex = images_to_tensor(samples["apex_image"].tolist(), size_px)
        self.flow = None
        if "flow" in samples:
            flow = torch.from_numpy(np.stack([decode_array(cell) for cell in samples["flow"]]).astype(np.float32))
            self.flow = resize_flow(flow, size_px)  # (N, 3, S, S)
        self.label = torch.tensor(samples["label"].to_numpy(), dtype=torch.int64)  # a copy: pandas arrays are read-only

    def batches(self, rows: np.ndarray, batch_size: int, generator: torch.Generator | None,
                augment: PairAugmentation | None = None, flow_size_px: int | None = None) -> Iterator[Batch]:
        """Batches of the samples at ``rows``, shuffled by ``generator`` (in order when None).

        Each batch: ``onset``, ``apex``: ``(B, 3, S, S) float32`` ImageNet-normalised; ``flow`` (when present):
        ``(B, 3, F, F) float32`` with F = ``flow_size_px`` (default S; u, v rescaled to px of that grid);
        ``label``: ``(B,)``. ``augment`` warps a sample's onset, apex and flow alike.
        """
        rows = torch.as_tensor(rows)
        for batch in iterate_batches(len(rows), batch_size, generator):
            pick = rows[batch]
            frames = torch.cat([normalise(self.onset[pick]), normalise(self.apex[pick])], dim=1)  # (B, 6, S, S)
            flow = None if self.flow is None else self.flow[pick]
            if augment is not None:
                frames, flow = augment(frames, flow)
            out = {"onset": frames[:, :3], "apex": frames[:, 3:], "label": self.label[pick]}
            if flow is not None:
                out["flow"] = resize_flow(flow, flow_size_px) if flow_size_px else flow
            yield out


def model_inputs(model: nn.Module, batch: Batch) -> list[torch.Tensor]:
    """The entries of ``batch`` that ``model.forward`` takes, in order.

    The names come from :func:`pipeline.models.registry.input_names`.

    Raises:
        ValueError: the model needs the optical flow and the samples table has none.
    """
    names = input_names(model)
    if "flow" in names and "flow" not in batch:
        raise ValueError(f"{type(model).__name__} takes the optical flow, and the samples table has none: set "
                         "micro.optical_flow to tvl1 and rerun ingest_micro")
    return [batch[name] for name in names]


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


def finetune_fold(data: MicroTensors, fold: LosoFold, num_classes: int, model_name: str, model_params: ModelParams,
                  params: RecipeParams, seed: int, device: torch.device, encoder_state: dict | None,
                  on_epoch: Callable[[int, dict[str, float]], None] | None = None, progress: bool = True,
                  state_path: Path | None = None, fingerprint: str = "") -> nn.Module:
    """Train the classifier ``model_name`` on ``fold.train_idx`` for exactly ``params.epochs`` epochs.

    Args:
        data: the samples' crops at the model's input size (``model_params.image_size_px``).
        fold: the LOSO fold; only its training rows are seen.
        num_classes: K.
        model_name: a :func:`pipeline.models.registry.create_model` name (``miacnet``, ``mmnet``, …).
        model_params: the ``model`` section (at the arm's input size).
        params: the recipe (``finetune.recipe``).
        seed: seeds every RNG (model initialisation, batch order, augmentation) before the model is built.
        device: where to train.
        encoder_state: pre-trained branch weights (MA2MI ``encoder_state_dict``, ``miacnet`` only), or None to
            start from scratch.
        on_epoch: called as ``on_epoch(epoch, {'loss', 'accuracy'})`` with TRAINING metrics after each epoch
            (after a resume, first for every epoch already finished, so logged curves are whole).
        progress: show progress bars.
        state_path: where the full training state is saved after every epoch; when it exists with the same
            ``fingerprint`` (a hash of everything that shapes the run), training resumes after its last epoch
            and ends exactly as an uninterrupted run would (a finished run's state gives its final weights back
            without training). None: no saving, no resuming.
        fingerprint: see ``state_path``.

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
    augment = PairAugmentation(params.flip, params.rotate_deg, params.translate_px)
    generator = torch.Generator().manual_seed(seed)
    flow_size_px = getattr(model, "flow_size_px", None)

    def step(net: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        logits = net(*model_inputs(net, batch))
        loss = F.cross_entropy(logits, batch["label"], label_smoothing=params.label_smoothing)
        return loss, {"accuracy": (logits.argmax(1) == batch["label"]).float().mean().item()}

    fit(model, optimizer, scheduler, params.epochs,
        lambda epoch: data.batches(fold.train_idx, params.batch_size, generator, augment, flow_size_px), step, device,
        streams={"batches": generator}, state_path=state_path, fingerprint=fingerprint, on_epoch=on_epoch,
        desc=f"fold {fold.index} ({fold.test_subject}) {model_name} seed {seed}", progress=progress)
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, data: MicroTensors, rows: np.ndarray, device: torch.device,
            batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """``(predicted (n,) int64, probabilities (n, K) float32)`` for the samples at ``rows``."""
    model.eval()
    flow_size_px = getattr(model, "flow_size_px", None)
    probabilities = [
        torch.softmax(model(*[x.to(device) for x in model_inputs(model, b)]).float(), dim=1).cpu()
        for b in data.batches(rows, batch_size, None, flow_size_px=flow_size_px)
    ]
    probs = torch.cat(probabilities).numpy()
    return probs.argmax(1), probs


def finetune_seed(samples: pd.DataFrame, data: MicroTensors, classes: list[str], fold: LosoFold, arm: str,
                  params: Params, seed: int, device: torch.device, encoder_state: dict | None, out: Path,
                  state_path: Path | None = None, fingerprint: str = "") -> pd.DataFrame:
    """One seed of a ``finetune_<arm>@<fold>`` stage.

    Train, log the curve, save the model, predict the held-out subject.

    Writes into ``out``: ``dvclive/seed<s>/`` (per-epoch training loss and accuracy) and ``model_seed<s>.pt``
    (``model`` state dict, ``model_name``, ``arm``, ``fold``, ``seed``, ``test_subject``).

    Args:
        samples: the samples table (:mod:`pipeline.micro_table`), row-aligned with ``data``.
        data: its crops at the arm's input size.
        classes: class names in label order.
        fold: the LOSO fold.
        arm: a key of :data:`pipeline.arms.ARMS`.
        params: all params (the arm's model and ``finetune.recipe``).
        seed: the seed of this run.
        device: where to train.
        encoder_state: MA2MI's branches for a pre-trained arm, else None.
        out: the stage's output folder.
        state_path: the seed's resumable training state (see :func:`finetune_fold`).
        fingerprint: see :func:`finetune_fold`.

    Returns:
        The held-out subject's predictions: :data:`PREDICTION_COLUMNS`, ``predicted``, one ``prob_<class>`` per
        class, ``arm``, ``model``, ``fold``, ``seed``; one row per test sample.
    """
    model_name, model_params = arm_model(params, arm)
    with Live(dir=str(out / "dvclive" / f"seed{seed}"), save_dvc_exp=False, dvcyaml=None) as live:
        def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
            for key, value in metrics.items():
                live.log_metric(f"train/{key}", value)
            live.next_step()

        model = finetune_fold(data, fold, len(classes), model_name, model_params, params.finetune.recipe, seed,
                              device, encoder_state, log_epoch, state_path=state_path, fingerprint=fingerprint)
    predicted, probs = predict(model, data, fold.test_idx, device)
    table = samples.iloc[fold.test_idx][PREDICTION_COLUMNS].reset_index(drop=True)
    table["predicted"] = predicted
    table[[f"prob_{name}" for name in classes]] = probs
    table["arm"], table["model"], table["fold"], table["seed"] = arm, model_name, fold.index, seed
    save_checkpoint(out / f"model_seed{seed}.pt", model=model.state_dict(), model_name=model_name, arm=arm,
                    fold=fold.index, seed=seed, test_subject=fold.test_subject)
    log.info("fold %d (%s), %s, seed %d: accuracy %.3f on %d held-out samples", fold.index, fold.test_subject, arm,
             seed, float((table["predicted"] == table["label"]).mean()), len(table))
    return table
