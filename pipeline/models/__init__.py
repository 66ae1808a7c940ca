"""Models of the MA2MI pipeline: MIACNet (fine-tuning), MA2MI (pre-training) and their building blocks.

Every classifier follows timm's contract (``forward(onset, apex)``, ``forward_features``, ``forward_head``,
``reset_classifier``, ``num_classes``, ``num_features``) and exposes ``encoder_state_dict()`` /
``load_encoder_state_dict()`` for the pre-trained branches. :func:`create_model` builds one by name.

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
from pipeline.models.ma2mi import MA2MI
from pipeline.models.miacnet import MIACNet

__all__ = ["MA2MI", "MODELS", "MIACNet", "create_model"]

# name -> constructor(params, num_classes); add 'mmnet' and 'resnet18-diff' here.
MODELS: dict[str, Callable[[ModelParams, int], nn.Module]] = {
    "miacnet": MIACNet,
}


def create_model(name: str, num_classes: int, params: ModelParams) -> nn.Module:
    """Build the classifier ``name`` for ``num_classes`` classes from the ``model`` params section.

    Args:
        name: a key of :data:`MODELS` (``'miacnet'``).
        num_classes: K >= 1, the width of the logits.
        params: the ``model`` section of ``params.yaml``.

    Returns:
        A freshly initialised ``nn.Module`` with timm's model contract, taking (onset, apex).

    Raises:
        ValueError: unknown ``name`` (the message lists the known names) or ``num_classes`` < 1.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return MODELS[name](params, num_classes)
