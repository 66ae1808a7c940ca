"""MIACNet: a two-branch micro-action network (DESIGN §5), following timm's model contract.

Position branch on the onset frame, action branch (MMNet's CA blocks) on the onset -> apex difference, fused
only at the end: the position features and the action code are each projected (1x1 conv + BN) to the fused
width, added, passed through a ReLU, average-pooled and classified. The projections and the classifier form
the HEAD (fresh at fine-tuning); the two branches form the ENCODER (what MA2MI pre-trains).

Example:
    >>> import torch
    >>> from pipeline.config import load_params
    >>> model = MIACNet(load_params("params.yaml").model, num_classes=3)
    >>> onset = apex = torch.zeros(2, 3, 112, 112)
    >>> model(onset, apex).shape
    torch.Size([2, 3])
    >>> model.forward_features(onset, apex).shape[2:]
    torch.Size([7, 7])
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from timm.layers import ClassifierHead, ConvNormAct
from torch import nn

from pipeline.config import ModelParams
from pipeline.models.branches import (
    ENCODER_PREFIXES,
    ActionBranch,
    PositionBranch,
    check_frame_batch,
    encoder_state_dict,
    load_encoder_state_dict,
)
from pipeline.models.layers import init_weights

__all__ = ["MIACNet", "build_branches"]


def build_branches(params: ModelParams) -> tuple[PositionBranch, ActionBranch]:
    """The (position, action) encoder branches described by ``params`` (same for MIACNet and MA2MI).

    Raises:
        ValueError: fewer than 3 stages in ``position_channels`` or ``action_channels``.
    """
    position = PositionBranch(params.stem_channels, params.position_channels)
    action = ActionBranch(params.stem_channels, params.action_channels, params.code_channels)
    return position, action


class MIACNet(nn.Module):
    """Micro-action network: position branch + action branch, fused late, then a linear classifier.

    Args:
        params: the ``model`` section of ``params.yaml`` (widths, ``code_channels``, ``dropout``;
            ``image_size_px`` is the nominal input side, kept as ``self.image_size_px``).
        num_classes: K, the number of classes (0 gives ``forward`` = pooled features, as timm).

    Shapes:
        forward(onset, apex) -> logits (B, K) float32, unnormalised.
        forward_features(onset, apex) -> fused map (B, num_features, h, w), h = ceil(H/16), w = ceil(W/16).
        forward_head(x, pre_logits=False) -> logits (B, K), or pooled features (B, num_features) with
        ``pre_logits=True``.
        ``onset`` and ``apex`` are (B, 3, H, W) float32 ImageNet-normalised frames of one clip, H, W >= 16
        (any size; multiples of 16 give h = H/16 exactly). With ``params.action_input == 'flow'`` the second
        input is the onset → apex optical flow (B, 3, H, W) float32 (u, v in px, optical strain) instead of
        the apex, and the action branch sees it in place of the difference image.

    Attributes:
        input_names: the batch keys ``forward`` takes, in order: ``('onset', 'apex')`` or ``('onset', 'flow')``.

    Raises:
        ValueError: at construction for fewer than 3 stages per branch; at forward for frames that are not
            (B, 3, H, W) float of equal shapes.
    """

    def __init__(self, params: ModelParams, num_classes: int) -> None:
        super().__init__()
        self.image_size_px = params.image_size_px
        self.position_branch, self.action_branch = build_branches(params)
        width = self.position_branch.num_features
        self.num_features = self.head_hidden_size = width
        # head: fresh at fine-tuning
        self.position_proj = ConvNormAct(width, width, kernel_size=1, apply_act=False)
        self.action_proj = ConvNormAct(params.code_channels, width, kernel_size=1, apply_act=False)
        self.fuse_act = nn.ReLU(inplace=True)
        init_weights(self.position_proj)
        init_weights(self.action_proj)
        self.head = ClassifierHead(width, num_classes, pool_type="avg", drop_rate=params.dropout)
        self.num_classes = num_classes
        self.action_input = params.action_input
        self.input_names = ("onset", "flow") if params.action_input == "flow" else ("onset", "apex")

    def forward_features(self, onset: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Fused map (B, num_features, ceil(H/16), ceil(W/16)) of onset and apex (or flow), (B, 3, H, W) float32."""
        return self.forward_with_attention(onset, second)[0]

    def forward_with_attention(self, onset: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused map and the action branch's last-stage attention (B, 1, h, w) in [0, 1] (where it looks).

        ``second`` is the apex frame (``action_input: difference``: the branch sees ``apex - onset``) or the
        onset → apex optical flow (u, v, strain) at the frames' size (``action_input: flow``).
        """
        check_frame_batch(type(self).__name__, onset, second)
        position = self.position_branch(onset)  # (B, Cp, h, w)
        motion = second if self.action_input == "flow" else second - onset  # (B, 3, H, W)
        action, attention = self.action_branch.forward_motion(motion)  # (B, code, h, w), (B, 1, h, w)
        fused = self.fuse_act(self.position_proj(position) + self.action_proj(action))  # (B, C, h, w)
        return fused, attention

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits (B, K) of a fused map ``x``, or pooled features (B, num_features) with ``pre_logits=True``."""
        return self.head(x, pre_logits=pre_logits)  # (B, K) or (B, C)

    def forward(self, onset: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) float32, unnormalised, of the onset and the apex (or flow), see :attr:`input_names`."""
        return self.forward_head(self.forward_features(onset, second))

    def get_classifier(self) -> nn.Module:
        """The final linear layer (timm's contract)."""
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the final linear layer with a fresh one for ``num_classes`` (fusion projections are kept)."""
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters outside the two branches (fusion projections + classifier): the fresh part."""
        return [p for n, p in self.named_parameters() if not n.startswith(ENCODER_PREFIXES)]

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """Detached copies of the ``position_branch.*`` and ``action_branch.*`` weights and buffers."""
        return encoder_state_dict(self)

    def load_encoder_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load pre-trained branches (e.g. ``MA2MI.encoder_state_dict()``); the head is left as it is.

        Raises:
            ValueError: missing, unexpected or mis-shaped keys (all listed).
        """
        load_encoder_state_dict(self, state)
