"""``resnet18-diff``: the simplest baseline, a plain timm ResNet-18 on the difference image ``apex - onset``.

DESIGN §5. The backbone is ``timm.create_model("resnet18", pretrained=False)`` (no hub access); an optional
local checkpoint (a ResNet-18 ``state_dict`` saved with ``torch.save``, e.g. ImageNet weights copied by hand)
may initialise it. The classifier is always fresh.

Example:
    >>> import torch
    >>> from pipeline.config import load_params
    >>> model = ResNetDiff(load_params("params.yaml").model, num_classes=3)
    >>> onset = apex = torch.zeros(2, 3, 112, 112)
    >>> model.eval()(onset, apex).shape
    torch.Size([2, 3])
    >>> model.forward_features(onset, apex).shape
    torch.Size([2, 512, 4, 4])
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from pipeline.config import ModelParams
from pipeline.models.branches import check_frame_batch
from pipeline.models.checkpoint import check_state_fits

__all__ = ["ResNetDiff", "load_backbone_checkpoint"]

ARCH = "resnet18"
CLASSIFIER_PREFIX = "fc."  # timm ResNet's classifier keys, never taken from a checkpoint


def load_backbone_checkpoint(backbone: nn.Module, path: str | Path) -> None:
    """Copy a local ResNet-18 checkpoint into ``backbone``, all but the classifier (``fc.*``).

    Args:
        backbone: a timm ``resnet18``.
        path: a ``torch.save``d state dict, bare or under a ``"state_dict"`` / ``"model"`` key; keys may carry
            a ``"module."`` prefix (DataParallel). Loaded with ``weights_only=True`` on CPU.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the checkpoint does not fit: missing, unexpected or mis-shaped keys (all listed).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone checkpoint {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    state = {k.removeprefix("module."): v for k, v in state.items()}  # DataParallel prefix
    state = {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_PREFIX)}
    own = {k: v for k, v in backbone.state_dict().items() if not k.startswith(CLASSIFIER_PREFIX)}
    check_state_fits(own, state, f"{path} (a timm {ARCH} checkpoint)")
    backbone.load_state_dict(state, strict=False)  # strict=False: the fresh classifier stays


class ResNetDiff(nn.Module):
    """timm ResNet-18 on ``apex - onset``, with timm's model contract.

    Args:
        params: the ``model`` section; ``dropout`` (before the classifier) and ``image_size_px`` (kept as
            ``self.image_size_px``) are read, the widths are ResNet-18's.
        num_classes: K >= 0 (0 gives ``forward`` = pooled features, as timm).
        checkpoint: optional local ResNet-18 state dict for the backbone (see :func:`load_backbone_checkpoint`).

    Shapes:
        forward(onset, apex) -> logits (B, K) float32, unnormalised.
        forward_features(onset, apex) -> (B, 512, ceil(H/32), ceil(W/32)).
        forward_head(x, pre_logits=False) -> (B, K), or pooled features (B, 512) with ``pre_logits=True``.
        ``onset`` and ``apex`` are (B, 3, H, W) float32 ImageNet-normalised frames, H, W >= 16, any size.

    Raises:
        ValueError: frames that are not (B, 3, H, W) float of equal shapes; a checkpoint that does not fit.
        FileNotFoundError: a missing checkpoint.
    """

    def __init__(self, params: ModelParams, num_classes: int, checkpoint: str | Path | None = None) -> None:
        super().__init__()
        self.image_size_px = params.image_size_px
        self.backbone = timm.create_model(ARCH, pretrained=False, num_classes=num_classes, drop_rate=params.dropout)
        if checkpoint is not None:
            load_backbone_checkpoint(self.backbone, checkpoint)
        self.num_features = self.head_hidden_size = self.backbone.num_features  # 512
        self.num_classes = num_classes

    def forward_features(self, onset: torch.Tensor, apex: torch.Tensor) -> torch.Tensor:
        """Backbone map (B, 512, ceil(H/32), ceil(W/32)) of ``apex - onset``; inputs (B, 3, H, W) float32."""
        check_frame_batch(type(self).__name__, onset, apex)
        return self.backbone.forward_features(apex - onset)  # (B, 512, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits (B, K) of a backbone map ``x``, or pooled features (B, 512) with ``pre_logits=True``."""
        return self.backbone.forward_head(x, pre_logits=pre_logits)  # (B, K) or (B, 512)

    def forward(self, onset: torch.Tensor, apex: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) float32, unnormalised, of onset, apex (B, 3, H, W) float32 ImageNet-normalised."""
        return self.forward_head(self.forward_features(onset, apex))

    def get_classifier(self) -> nn.Module:
        """The backbone's classifier (timm's contract)."""
        return self.backbone.get_classifier()

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        """Replace the classifier with a fresh one for ``num_classes`` (the backbone is kept)."""
        self.num_classes = num_classes
        self.backbone.reset_classifier(num_classes, global_pool=global_pool)
