"""MA2MI pre-training model: reconstruct a future frame from the current one and a bottlenecked action code.

DESIGN §4 (our reading; the paper's exact recipe is not public). For a source frame ``x_t`` and a future frame
``x_{t+k}`` of a macro-expression video:

- position branch ``P(x_t)`` -> multi-scale facial position features of the current frame;
- action branch ``A(x_t, x_{t+k})`` -> action code (B, code_channels, H/16, W/16) from the difference image;
- decoder ``D(P, A)`` -> the residual ``x_{t+k} - x_t``; the prediction is ``x_t + residual``.

The decoder is U-Net-like: it starts from [code, last position map] at H/16 and, at each coarser-to-finer
level (H/8, H/4, H/2), upsamples (bilinear), concatenates the position branch's map of that size and applies a
conv-BN-ReLU (3x3 at H/8 and H/4, 1x1 at H/2 for speed). A last 3x3 conv at H/2 gives 12 channels that a pixel
shuffle turns into the full-size 3-channel residual (a full-size conv with 3 output channels was the slowest
layer on CPU). The motion reaches the decoder only through the action code: that bottleneck is what
pre-training trains. Decoder widths are derived, not configured: half the width of the position map joined at
each level (at least 8).

The encoder (``position_branch.*``, ``action_branch.*``) has exactly MIACNet's keys:
``MIACNet.load_encoder_state_dict(MA2MI.encoder_state_dict())`` moves the pre-trained branches.

Example:
    >>> import torch
    >>> from pipeline.config import load_params
    >>> model = MA2MI(load_params("params.yaml").model)
    >>> source = torch.zeros(2, 3, 112, 112)
    >>> model(source, source).shape
    torch.Size([2, 3, 112, 112])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from timm.layers import ConvNormAct, trunc_normal_
from torch import nn

from pipeline.config import ModelParams
from pipeline.models.branches import check_frame_batch, encoder_state_dict, load_encoder_state_dict
from pipeline.models.layers import init_weights
from pipeline.models.miacnet import build_branches

__all__ = ["MA2MI", "ResidualDecoder"]

RESIDUAL_INIT_STD = 1e-3  # the last conv starts near zero, so the first predictions are near the copy baseline


class ResidualDecoder(nn.Module):
    """``D(P, A)``: position pyramid + action code -> residual frame.

    Args:
        pyramid_channels: widths of the position pyramid, ``[stem, stage 1, ..., stage n]`` (n >= 3); the
            stem, stage 1 and stage 2 maps (H/2, H/4, H/8) are the skips, the last map (H/16) the start.
        code_channels: width of the action code.

    Shapes:
        forward(pyramid, code, out_size) with pyramid as from ``PositionBranch.forward_pyramid``, code
        (B, code_channels, h, w) at the last map's size, out_size (H, W) -> residual (B, 3, H, W) float32
        in ImageNet-normalised units.
    """

    def __init__(self, pyramid_channels: Sequence[int], code_channels: int) -> None:
        super().__init__()
        skips = list(pyramid_channels[:3])[::-1]  # widths at H/8, H/4, H/2
        widths = [max(8, pyramid_channels[-1] // 2)] + [max(8, c // 2) for c in skips]
        self.start = ConvNormAct(pyramid_channels[-1] + code_channels, widths[0], kernel_size=3)
        kernels = [3, 3, 1]  # a 1x1 mix at H/2 (a 3x3 there costs ~1 ms/sample on CPU); to_residual is 3x3
        self.levels = nn.ModuleList(
            ConvNormAct(c_prev + c_skip, c_out, kernel_size=k)
            for c_prev, c_skip, c_out, k in zip(widths[:-1], skips, widths[1:], kernels, strict=True)
        )
        # at H/2: 3x3 conv to 3 * 2 * 2 channels, then a pixel shuffle to (3, H, W)
        self.to_residual = nn.Conv2d(widths[-1], 3 * 4, kernel_size=3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        init_weights(self)
        trunc_normal_(self.to_residual.weight, std=RESIDUAL_INIT_STD)

    def forward(
        self, pyramid: Sequence[torch.Tensor], code: torch.Tensor, out_size: tuple[int, int]
    ) -> torch.Tensor:
        """Residual frame (B, 3, H, W) float32 from the position ``pyramid``, the action ``code`` and ``out_size``."""
        x = self.start(torch.cat([pyramid[-1], code], dim=1))  # (B, d0, H/16, W/16)
        for level, skip in zip(self.levels, pyramid[2::-1], strict=True):  # skips at H/8, H/4, H/2
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)  # (B, d, hs, ws)
            x = level(torch.cat([x, skip], dim=1))  # (B, d_next, hs, ws)
        x = self.shuffle(self.to_residual(x))  # (B, 12, H/2, W/2) -> (B, 3, 2 * ceil(H/2), 2 * ceil(W/2))
        return x[..., : out_size[0], : out_size[1]]  # (B, 3, H, W): crops the extra row / column of odd sizes


class MA2MI(nn.Module):
    """Future-frame reconstruction model for MA2MI pre-training (DESIGN §4; our reading).

    Args:
        params: the ``model`` section of ``params.yaml``; the branches are built exactly as MIACNet's.

    Shapes:
        forward(source, future) -> predicted future (B, 3, H, W) float32 = source + predicted residual.
        ``source`` (x_t) and ``future`` (x_{t+k}) are (B, 3, H, W) float32 ImageNet-normalised, H, W >= 16.

    Raises:
        ValueError: frames that are not (B, 3, H, W) float of equal shapes; fewer than 3 stages per branch.
    """

    def __init__(self, params: ModelParams) -> None:
        super().__init__()
        self.image_size_px = params.image_size_px
        self.position_branch, self.action_branch = build_branches(params)
        self.decoder = ResidualDecoder(self.position_branch.pyramid_channels, params.code_channels)

    def forward(self, source: torch.Tensor, future: torch.Tensor) -> torch.Tensor:
        """Predicted future (B, 3, H, W) float32 = source + predicted residual; both inputs (B, 3, H, W)."""
        check_frame_batch(type(self).__name__, source, future)
        pyramid = self.position_branch.forward_pyramid(source)  # [(B, C_i, h_i, w_i)]
        code = self.action_branch(source, future)  # (B, code, H/16, W/16)
        residual = self.decoder(pyramid, code, source.shape[-2:])  # (B, 3, H, W)
        return source + residual

    def losses(self, source: torch.Tensor, future: torch.Tensor) -> dict[str, torch.Tensor]:
        """Reconstruction losses of one batch (both inputs as in ``forward``).

        Returns:
            ``recon_loss``: mean L1 of the prediction vs ``future`` (scalar, differentiable; the objective);
            ``copy_loss``: mean L1 of ``source`` vs ``future`` (scalar, no gradient), the copy baseline that
            predicts no motion. Both in ImageNet-normalised units; ``recon_loss / copy_loss < 1`` on held-out
            videos is the yardstick of DESIGN §4.
        """
        prediction = self(source, future)
        with torch.no_grad():
            copy_loss = F.l1_loss(source, future)
        return {"recon_loss": F.l1_loss(prediction, future), "copy_loss": copy_loss}

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """Detached copies of the ``position_branch.*`` and ``action_branch.*`` weights and buffers.

        The keys are the same as ``MIACNet.encoder_state_dict()``'s.
        """
        return encoder_state_dict(self)

    def load_encoder_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load branch weights (e.g. to resume); the decoder is left as it is.

        Raises:
            ValueError: missing, unexpected or mis-shaped keys (all listed).
        """
        load_encoder_state_dict(self, state)
