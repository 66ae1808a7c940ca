"""Models of the MA2MI pipeline: MIACNet (fine-tuning), MA2MI (pre-training), the MMNet and ResNet-18 baselines.

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
from pipeline.models.mmnet import MMNet, mmnet_from_params
from pipeline.models.resnet_diff import ResNetDiff

__all__ = ["MA2MI", "MODELS", "MIACNet", "MMNet", "ResNetDiff", "create_model"]

# name -> constructor(params, num_classes)
MODELS: dict[str, Callable[[ModelParams, int], nn.Module]] = {
    "miacnet": MIACNet,  # ours (DESIGN §5)
    "mmnet": mmnet_from_params,  # MMNet baseline, IJCAI 2022; 224 px only
    "resnet18-diff": ResNetDiff,  # timm ResNet-18 on apex - onset
}


def create_model(name: str, num_classes: int, params: ModelParams) -> nn.Module:
    """Build the classifier ``name`` for ``num_classes`` classes from the ``model`` params section.

    Args:
        name: a key of :data:`MODELS` (``'miacnet'``, ``'mmnet'``, ``'resnet18-diff'``).
        num_classes: K >= 1, the width of the logits.
        params: the ``model`` section of ``params.yaml``.

    Returns:
        A freshly initialised ``nn.Module`` with timm's model contract, taking (onset, apex).

    Raises:
        ValueError: unknown ``name`` (the message lists the known names) or ``num_classes`` < 1; for
            ``'mmnet'``, ``params.image_size_px`` != 224 (the only size MMNet takes).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return MODELS[name](params, num_classes)
