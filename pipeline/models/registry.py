"""The classifiers fine-tuning can build, by name: the one list of model names (``finetune.baseline.model``).

Every classifier follows timm's contract (``forward``, ``forward_features``, ``forward_head``,
``reset_classifier``, ``num_classes``, ``num_features``). ``forward`` takes the batch entries that
:func:`input_names` lists: ``(onset, apex)`` frames by default, ``(flow,)`` for STSTNet, ``(onset, flow)`` for
MIACNet on optical flow. MIACNet also exposes ``encoder_state_dict()`` / ``load_encoder_state_dict()`` for the
pre-trained branches.

The registry is lazy and torch-free: :data:`MODELS` names each constructor by ``module:attribute``, and
:func:`create_model` imports only the module of the model it builds. So a stage process can decide an arm's model
(:func:`arm_model`) without importing torch, and a stage depends only on the model modules it can build
(``tools/stage_deps.py`` reads :data:`MODELS` and :func:`arm_model_names`): an edit to the MMNet baseline does not
stale the MIACNet folds.

Example:
    >>> from pipeline.config import load_params
    >>> model = create_model("miacnet", num_classes=3, params=load_params("params.yaml").model)
    >>> model.num_classes
    3
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.arms import ARMS
from pipeline.config import ConfigError, FinetuneParams, ModelParams

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["MIACNET", "MODELS", "ArmModel", "arm_model", "arm_model_names", "create_model", "input_names",
           "model_inputs"]

MIACNET = "miacnet"  # the model of every arm but the baseline (DESIGN §5)

# name -> "module:constructor", constructor(params: ModelParams, num_classes: int) -> nn.Module
MODELS: dict[str, str] = {
    MIACNET: "pipeline.models.miacnet:MIACNet",  # ours (DESIGN §5)
    "mmnet": "pipeline.models.mmnet:mmnet_from_params",  # MMNet baseline, IJCAI 2022; 224 px only
    "resnet18-diff": "pipeline.models.resnet_diff:ResNetDiff",  # timm ResNet-18 on apex - onset
    "ststnet": "pipeline.models.ststnet:ststnet_from_params",  # STSTNet baseline, FG 2019, on 28 x 28 optical flow
}


@dataclass(frozen=True)
class ArmModel:
    """The classifier an arm of the ablation trains, decided once per stage (:func:`arm_model`).

    Attributes:
        name: a key of :data:`MODELS`.
        params: the ``model`` section at the arm's input size (``params.image_size_px``).
    """

    name: str
    params: ModelParams

    @property
    def image_size_px(self) -> int:
        """The side of the arm's input crops, in px."""
        return self.params.image_size_px


def arm_model(arm: str, *, finetune: FinetuneParams, model: ModelParams) -> ArmModel:
    """The model of ``arm``, torch-free: MIACNet with the ``model`` section, or the baseline model.

    The baseline arm's is ``finetune.baseline.model`` with the ``model`` section at
    ``finetune.baseline.image_size_px``.

    Raises:
        ConfigError: ``arm`` is not an arm of :data:`pipeline.arms.ARMS`, or ``finetune.baseline.model`` is not a
            model of :data:`MODELS` (the message lists the known ones).
    """
    if arm not in ARMS:
        raise ConfigError(f"{arm!r} is not an arm; known: {', '.join(ARMS)}")
    if not ARMS[arm].baseline:
        return ArmModel(MIACNET, model)
    baseline = finetune.baseline
    if baseline.model not in MODELS:
        raise ConfigError(f"finetune.baseline.model: {baseline.model!r} is not a model; known: "
                          f"{', '.join(sorted(MODELS))}")
    return ArmModel(baseline.model, model.model_copy(update={"image_size_px": baseline.image_size_px}))


def arm_model_names(arm: str | None) -> list[str]:
    """The models a stage of ``arm`` can build, whatever the params (what ``tools/stage_deps.py`` declares).

    MIACNet; for the baseline arm (whose model is a param) and for no arm (a stage that builds every arm's
    models), every model of :data:`MODELS`.

    Raises:
        KeyError: ``arm`` is not an arm.
    """
    return [MIACNET] if arm is not None and not ARMS[arm].baseline else sorted(MODELS)


DEFAULT_INPUTS = ("onset", "apex")


def input_names(model: nn.Module) -> tuple[str, ...]:
    """The batch keys ``model.forward`` takes, in order (``model.input_names``; default onset and apex)."""
    return tuple(getattr(model, "input_names", DEFAULT_INPUTS))


def create_model(name: str, num_classes: int, params: ModelParams) -> nn.Module:
    """Build the classifier ``name`` for ``num_classes`` classes from the ``model`` params section.

    Args:
        name: a key of :data:`MODELS` (``'miacnet'``, ``'mmnet'``, ``'resnet18-diff'``, ``'ststnet'``).
        num_classes: K >= 1, the width of the logits.
        params: the ``model`` section of ``params.yaml``.

    Returns:
        A freshly initialised ``nn.Module`` with timm's model contract, taking :func:`input_names`.

    Raises:
        ValueError: unknown ``name`` (the message lists the known names) or ``num_classes`` < 1; for
            ``'mmnet'``, ``params.image_size_px`` != 224 (the only size MMNet takes).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    module, _, constructor = MODELS[name].partition(":")
    return getattr(importlib.import_module(module), constructor)(params, num_classes)


def model_inputs(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """The entries of ``batch`` that ``model.forward`` takes, in order (:func:`input_names`).

    Raises:
        ValueError: the model needs the optical flow and the samples table has none.
    """
    names = input_names(model)
    if "flow" in names and "flow" not in batch:
        raise ValueError(f"{type(model).__name__} takes the optical flow, and the samples table has none: set "
                         "micro.optical_flow to tvl1 and rerun ingest_micro")
    return [batch[name] for name in names]
