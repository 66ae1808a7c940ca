"""The classifiers fine-tuning can build, by name: the one list of model names (``finetune.baseline.model``).

Every classifier follows timm's contract (``forward``, ``forward_features``, ``forward_head``,
``reset_classifier``, ``num_classes``, ``num_features``). ``forward`` takes the batch entries that
:func:`input_names` lists: ``(onset, apex)`` frames by default, ``(flow,)`` for STSTNet, ``(onset, flow)`` for
MIACNet on optical flow. MIACNet also exposes ``encoder_state_dict()`` / ``load_encoder_state_dict()`` for the
pre-trained branches.

Example:
    >>> from pipeline.config import load_params
    >>> model = create_model("miacnet", num_classes=3, params=load_params("params.yaml").model)
    >>> model.num_classes
    3
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from pipeline.config import ModelParams
from pipeline.models.miacnet import MIACNet
from pipeline.models.mmnet import mmnet_from_params
from pipeline.models.resnet_diff import ResNetDiff
from pipeline.models.ststnet import ststnet_from_params

__all__ = ["MODELS", "create_model", "input_names"]

# name -> constructor(params, num_classes)
MODELS: dict[str, Callable[[ModelParams, int], nn.Module]] = {
    "miacnet": MIACNet,  # ours (DESIGN §5)
    "mmnet": mmnet_from_params,  # MMNet baseline, IJCAI 2022; 224 px only
    "resnet18-diff": ResNetDiff,  # timm ResNet-18 on apex - onset
    "ststnet": ststnet_from_params,  # STSTNet baseline, FG 2019, on 28 x 28 optical flow
}

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
    return MODELS[name](params, num_classes)
