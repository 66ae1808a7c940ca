"""The two encoder branches of MIACNet, shared by fine-tuning (:class:`MIACNet`) and pre-training (:class:`MA2MI`).

Both branches downsample the same way: a 3x3 stride-2 stem, then stages with strides 2, 2, 2, 1, 1, ...
(stride 2 for the first three stages, 1 after). So a (B, 3, H, W) input gives (B, C, h, w) maps with
h = ceil(H / 16), w = ceil(W / 16) in both branches (7x7 at 112 px), and their stage outputs have equal sizes.

The encoder state is ``position_branch.*`` + ``action_branch.*``: :func:`encoder_state_dict` and
:func:`load_encoder_state_dict` move exactly those keys between a pre-trained MA2MI and a fresh MIACNet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from timm.layers import ConvNormAct
from torch import nn

from pipeline.models.checkpoint import check_state_fits
from pipeline.models.layers import CABlock, init_weights

__all__ = [
    "ENCODER_PREFIXES",
    "MIN_STAGES",
    "ActionBranch",
    "PositionBranch",
    "check_frame_batch",
    "encoder_state_dict",
    "load_encoder_state_dict",
    "stage_strides",
]

ENCODER_PREFIXES = ("position_branch.", "action_branch.")
MIN_STAGES = 3  # three stride-2 stages after the stride-2 stem give the total stride of 16


def stage_strides(n_stages: int) -> list[int]:
    """Strides of ``n_stages`` stages after the stem: 2 for the first three, 1 after (total stride 16).

    Raises:
        ValueError: fewer than :data:`MIN_STAGES` stages (the maps would not reach H / 16).
    """
    if n_stages < MIN_STAGES:
        raise ValueError(f"need at least {MIN_STAGES} stages for a total stride of 16, got {n_stages}")
    return [2 if i < MIN_STAGES else 1 for i in range(n_stages)]


def check_frame_batch(name: str, *frames: torch.Tensor) -> None:
    """Check that frames are (B, 3, H, W) floating tensors of one shape with H, W >= 16.

    Raises:
        ValueError: naming ``name``, the offending argument position and its shape / dtype.
    """
    ref = frames[0]
    for i, frame in enumerate(frames):
        if frame.ndim != 4 or frame.shape[1] != 3:
            raise ValueError(f"{name}: frame {i} must be (B, 3, H, W), got {tuple(frame.shape)}")
        if not frame.is_floating_point():
            raise ValueError(f"{name}: frame {i} must be float (ImageNet-normalised), got {frame.dtype}")
        if frame.shape != ref.shape:
            raise ValueError(f"{name}: frames differ in shape: {tuple(ref.shape)} vs {tuple(frame.shape)}")
    if min(ref.shape[2:]) < 16:
        raise ValueError(f"{name}: frames must be at least 16x16 px, got {tuple(ref.shape[2:])}")


class PositionBranch(nn.Module):
    """Facial position features of the onset frame: stem + one 3x3 conv-BN-ReLU per stage.

    Args:
        stem_channels: width of the 3x3 stride-2 stem.
        channels: width of each stage; strides from :func:`stage_strides`.

    Shapes:
        forward(onset (B, 3, H, W) float32, ImageNet-normalised) -> (B, channels[-1], ceil(H/16), ceil(W/16)).
        forward_pyramid(onset) -> [stem (B, stem_channels, H/2, W/2), stage i (B, channels[i], ...)], the
        multi-scale features the MA2MI decoder uses as skips.
    """

    def __init__(self, stem_channels: int, channels: Sequence[int]) -> None:
        super().__init__()
        self.stem = ConvNormAct(3, stem_channels, kernel_size=3, stride=2)
        widths = [stem_channels, *channels]
        self.stages = nn.ModuleList(
            ConvNormAct(c_in, c_out, kernel_size=3, stride=s)
            for c_in, c_out, s in zip(widths[:-1], widths[1:], stage_strides(len(channels)), strict=True)
        )
        self.num_features = channels[-1]
        self.pyramid_channels = widths
        init_weights(self)

    def forward_pyramid(self, onset: torch.Tensor) -> list[torch.Tensor]:
        """Multi-scale features of ``onset`` (B, 3, H, W): the stem map, then each stage's map.

        Returns ``[stem (B, stem_channels, H/2, W/2), stage i (B, channels[i], ...)]``, the MA2MI decoder's skips.
        """
        x = self.stem(onset)  # (B, stem, H/2, W/2)
        feats = [x]
        for stage in self.stages:
            x = stage(x)  # (B, C_i, h_i, w_i)
            feats.append(x)
        return feats

    def forward(self, onset: torch.Tensor) -> torch.Tensor:
        """Position features: onset (B, 3, H, W) float32 -> (B, channels[-1], ceil(H/16), ceil(W/16))."""
        return self.forward_pyramid(onset)[-1]


class ActionBranch(nn.Module):
    """Action code of the onset -> apex motion (MMNet's main branch, bottlenecked).

    Input is the difference image ``apex - onset`` (as MMNet), then a 3x3 stride-2 stem (conv-BN-ReLU), one
    :class:`CABlock` per stage with continuous attention, and a 1x1 conv-BN bottleneck to ``code_channels``
    (linear: no activation). MA2MI pre-training squeezes the motion through this bottleneck.

    Args:
        stem_channels: width of the stem.
        channels: width of each CA stage; strides from :func:`stage_strides`.
        code_channels: width of the action code.

    Shapes:
        forward(onset, apex), both (B, 3, H, W) float32 ImageNet-normalised ->
        code (B, code_channels, ceil(H/16), ceil(W/16)).
        forward_with_attention(onset, apex) -> (code, attention of the last stage (B, 1, h, w) in [0, 1]).
    """

    def __init__(self, stem_channels: int, channels: Sequence[int], code_channels: int) -> None:
        super().__init__()
        self.stem = ConvNormAct(3, stem_channels, kernel_size=3, stride=2)
        widths = [stem_channels, *channels]
        self.stages = nn.ModuleList(
            CABlock(c_in, c_out, stride=s)
            for c_in, c_out, s in zip(widths[:-1], widths[1:], stage_strides(len(channels)), strict=True)
        )
        self.bottleneck = ConvNormAct(channels[-1], code_channels, kernel_size=1, apply_act=False)
        self.code_channels = code_channels
        init_weights(self)

    def forward_with_attention(self, onset: torch.Tensor, apex: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Action code and last-stage attention of onset, apex (B, 3, H, W).

        Returns ``(code (B, code_channels, ceil(H/16), ceil(W/16)), attention (B, 1, h, w) in [0, 1])``.
        """
        return self.forward_motion(apex - onset)

    def forward_motion(self, motion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Action code and last-stage attention of a motion image (B, 3, H, W).

        ``motion`` is the difference ``apex - onset`` (ImageNet-normalised units) or an optical flow (u, v,
        strain), as :class:`~pipeline.models.miacnet.MIACNet`'s ``action_input`` says.

        Returns ``(code (B, code_channels, ceil(H/16), ceil(W/16)), attention (B, 1, h, w) in [0, 1])``.
        """
        x = self.stem(motion)  # (B, stem, H/2, W/2)
        attn = None
        for stage in self.stages:
            x, attn = stage(x, attn)  # (B, C_i, h_i, w_i), (B, 1, h_i, w_i)
        assert attn is not None  # at least MIN_STAGES stages
        return self.bottleneck(x), attn  # (B, code, h, w), (B, 1, h, w)

    def forward(self, onset: torch.Tensor, apex: torch.Tensor) -> torch.Tensor:
        """Action code: onset, apex (B, 3, H, W) float32 -> (B, code_channels, ceil(H/16), ceil(W/16))."""
        return self.forward_with_attention(onset, apex)[0]


def encoder_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of the ``position_branch.*`` and ``action_branch.*`` entries of ``model.state_dict()``.

    The entries are weights and BN buffers; the keys are the same for :class:`MIACNet` and :class:`MA2MI`.
    """
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(ENCODER_PREFIXES)}


def load_encoder_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy an encoder state (from :func:`encoder_state_dict`) into ``model``'s branches; nothing else changes.

    Raises:
        ValueError: a key is missing, unexpected (including any key outside the two branches) or has a
            different shape; the message lists every offending key.
    """
    check_state_fits(encoder_state_dict(model), state, "encoder state")
    result = model.load_state_dict(dict(state), strict=False)  # strict=False: the head / decoder keys stay
    assert not result.unexpected_keys, result.unexpected_keys  # checked above
