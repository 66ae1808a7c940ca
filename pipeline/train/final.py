"""Final models: one per arm, trained on EVERY subject with the LOSO recipe, and their model cards (DESIGN §10).

LOSO evaluation says how well a recipe generalises to a new person; the model a user applies to new clips is
then trained once more on all subjects, with the same recipe and the same fixed number of epochs (nothing is
selected on any data), from the first seed of ``finetune.recipe.seeds`` (one model, not an ensemble: the seeds'
spread is reported in the card's LOSO metrics). :func:`train_final` is
:func:`pipeline.train.finetune.finetune_fold`
with a "fold" whose training rows are every sample and whose test rows are none.

The model card (:func:`model_card`, ``<arm>.json`` beside ``<arm>.pt``) holds everything needed to apply the
model the way it was trained: the classes, the input size and inputs, the preprocessing (face detector, crop,
canonical alignment, optical flow), the model name and params, the recipe and seed, what it was trained on, the
arm's LOSO metrics (mean ± std over seeds, from evaluate's ``metrics.json``) and the run (git revision, params
hash). :mod:`pipeline.serve.predict` reads it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipeline.arms import ARMS, active_arms, arm_label
from pipeline.cards import CARD_FORMAT, CARD_VERSION, PREPROCESSING_KEYS
from pipeline.config import ConfigError, MicroParams, Params, RecipeParams
from pipeline.data.loso import LosoFold
from pipeline.data.micro import MicroTensors
from pipeline.face.align import canonical_template
from pipeline.io import write_json
from pipeline.models.registry import ArmModel, input_names
from pipeline.train.engine import save_checkpoint
from pipeline.train.finetune import finetune_fold

__all__ = [
    "alignment_text",
    "all_subjects_fold",
    "check_final_arm",
    "final_seed",
    "model_card",
    "save_final",
    "train_final",
]

def final_seed(params: Params) -> int:
    """The seed of the final models: the first of ``finetune.recipe.seeds``."""
    return params.finetune.recipe.seeds[0]


def check_final_arm(params: Params, arm: str) -> None:
    """Refuse a final model of an arm that has no LOSO evaluation.

    Raises:
        ConfigError: ``arm`` is not an arm, is off (the baseline without ``finetune.baseline.folds``), or is the
            baseline while ``final.baseline`` does not name ``finetune.baseline.model``.
    """
    if arm not in ARMS:
        raise ConfigError(f"{arm!r} is not an arm; known: {', '.join(ARMS)}")
    if arm not in active_arms(params.finetune):
        raise ConfigError(f"final.baseline is {params.final.baseline} but the baseline arm is off "
                          "(finetune.baseline.folds is []): a final model needs the arm's LOSO evaluation; set "
                          "final.baseline to [] or turn the baseline arm on")
    if ARMS[arm].baseline and params.final.baseline != [params.finetune.baseline.model]:
        raise ConfigError(f"final.baseline must be [] or [{params.finetune.baseline.model}] (finetune.baseline."
                          f"model), got {params.final.baseline}")


def all_subjects_fold(n_samples: int) -> LosoFold:
    """A "fold" that trains on every one of ``n_samples`` rows and tests on none (index -1, no test subject)."""
    return LosoFold(-1, "", np.arange(n_samples), np.arange(0))


def train_final(samples: pd.DataFrame, *, n_classes: int, model: ArmModel, recipe: RecipeParams, seed: int,
                device: torch.device, encoder_state: dict | None = None,
                on_epoch: Callable[[int, dict[str, float]], None] | None = None, state_path: Path | None = None,
                fingerprint: str = "", progress: bool = True) -> nn.Module:
    """Train an arm's ``model`` on every sample of ``samples`` with the LOSO recipe.

    Args:
        samples: the samples table (:mod:`pipeline.data.micro_table`): crops, ``label`` (and ``flow``).
        n_classes: K.
        model: the arm's classifier (:func:`pipeline.models.registry.arm_model`).
        recipe: ``finetune.recipe``.
        seed: :func:`final_seed`.
        device: where to train.
        encoder_state: MA2MI's branches for a pre-trained arm, else None.
        on_epoch: ``on_epoch(epoch, {'loss', 'accuracy'})`` with training metrics after each epoch.
        state_path: where the resumable training state is saved (see :func:`pipeline.train.finetune.finetune_fold`).
        fingerprint: identifies the run a saved state belongs to (likewise).
        progress: show a progress bar.

    Returns:
        The trained model, in eval mode.
    """
    data = MicroTensors(samples, model.image_size_px)
    return finetune_fold(data, all_subjects_fold(len(samples)), num_classes=n_classes, model=model, params=recipe,
                         seed=seed, device=device, encoder_state=encoder_state, on_epoch=on_epoch,
                         progress=progress, state_path=state_path, fingerprint=fingerprint)


def alignment_text(micro: MicroParams) -> str:
    """In words: the one crop / alignment transform of a clip that ``micro.detector`` implies (from its onset)."""
    size = micro.image_size_px
    if micro.detector == "none":
        return (f"none: the frames are faces already; the centred square of the onset frame, scaled to {size} x "
                f"{size} px, applied to onset and apex alike")
    if micro.detector == "haar":
        return (f"haar: OpenCV's frontal-face cascade on the onset frame; a square of {micro.box_scale} x the box "
                f"side around its centre (no rotation), scaled to {size} x {size} px, applied to onset and apex alike")
    return (f"mtcnn: MTCNN's 5 landmarks of the onset frame; the least-squares similarity (rotation, scale, "
            f"translation) onto ArcFace's 5-point template shrunk by 1 / (1 + {micro.align_margin}) in a {size} x "
            f"{size} px crop (canonical_template), applied to onset and apex alike")


def model_card(*, arm: str, spec: ArmModel, params: Params, classes: list[str], samples: pd.DataFrame,
               model: nn.Module, weights_file: str, loso: Mapping, history: list[dict[str, float]]) -> dict:
    """The model card of ``arm``'s final model.

    Args:
        arm: a key of :data:`pipeline.arms.ARMS`.
        spec: the arm's classifier (:func:`pipeline.models.registry.arm_model`): the card's ``model`` entry.
        params: all params (the card quotes ``micro``, ``finetune`` and the arm's training recipe).
        classes: class names in label order.
        samples: what the model was trained on (``subject``, ``label_name``, ``source_dataset``).
        model: the trained model.
        weights_file: the weights' file name, relative to the card.
        loso: evaluate's ``metrics.json`` (the arm's entry, under its label, and ``run``).
        history: per-epoch training metrics (``epoch``, ``loss``, ``accuracy``).

    Returns:
        A JSON-ready dict (see the module docstring); ``format`` is :data:`CARD_FORMAT`.

    Raises:
        KeyError: ``loso`` has no entry for the arm's label (evaluate did not score it).
    """
    label = arm_label(params.finetune, arm)
    if label not in loso:
        raise KeyError(f"evaluate's metrics.json has no entry {label!r} for arm {arm}; run `dvc repro evaluate`")
    micro = params.micro
    preprocessing = {key: getattr(micro, key) for key in PREPROCESSING_KEYS}
    preprocessing["alignment"] = alignment_text(micro)
    if micro.detector == "mtcnn":
        preprocessing["canonical_landmarks_px"] = np.round(
            canonical_template(micro.image_size_px, micro.align_margin), 3).tolist()
    per_class = samples["label_name"].value_counts()
    return {
        "format": CARD_FORMAT,
        "format_version": CARD_VERSION,
        "arm": arm,
        "label": label,
        "description": ARMS[arm].description,
        "weights": weights_file,
        "classes": list(classes),
        "protocol": micro.protocol,
        "input": {
            "names": list(input_names(model)),
            "crop_size_px": micro.image_size_px,
            "model_size_px": spec.image_size_px,
            "flow_size_px": getattr(model, "flow_size_px", None),
            "normalisation": "RGB / 255, then ImageNet mean and std (timm's IMAGENET_DEFAULT_MEAN / _STD)",
            "note": "onset and apex aligned crops; the apex minus onset difference or the onset -> apex TV-L1 flow "
                    "(u, v, optical strain) is formed inside the pipeline, see pipeline.serve.predict",
        },
        "preprocessing": preprocessing,
        "model": {"name": spec.name, "params": spec.params.model_dump(mode="json"),
                  "parameters": sum(p.numel() for p in model.parameters())},
        "recipe": params.finetune.arm_recipe(arm).model_dump(mode="json"),
        "seed": final_seed(params),
        "pretrained": ARMS[arm].pretrained,
        "trained_on": {"dataset": micro.dataset, "samples": len(samples),
                       "subjects": sorted(samples["subject"].unique().tolist()),
                       "per_class": {name: int(per_class.get(name, 0)) for name in classes}},
        "training_curve": [{k: round(float(v), 6) for k, v in row.items()} for row in history],
        "loso": dict(loso[label]),
        "run": dict(loso.get("run", {})),
    }


def save_final(out: Path, model: nn.Module, card: Mapping) -> tuple[Path, Path]:
    """Write a final model's weights and card into ``out``, each atomically.

    Args:
        out: the folder (``final.dir``).
        model: the trained model.
        card: its :func:`model_card`; ``card['weights']`` names the weights file.

    Returns:
        ``(weights path, card path)``: ``<out>/<weights>`` holds ``model`` (the state dict), ``model_name``,
        ``arm``, ``seed`` and ``classes``; ``<out>/<arm>.json`` the card.
    """
    weights, card_file = out / card["weights"], out / f"{card['arm']}.json"
    save_checkpoint(weights, model=model.state_dict(), model_name=card["model"]["name"], arm=card["arm"],
                    seed=card["seed"], classes=card["classes"])
    write_json(dict(card), card_file)
    return weights, card_file
