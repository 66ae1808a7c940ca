"""Building blocks shared by the MER models: the continuous-attention (CA) block of MMNet.

Source: Li et al., "MMNet: Muscle motion-guided network for micro-expression recognition", IJCAI 2022, and its
reference code (github.com/muse1998/MMNet, ``CA_block.py``). The block below follows that code: a residual
basic block (3x3 conv + BN + ReLU, 1x1 conv + BN, projection shortcut when the shape changes, ReLU after the
sum) whose output is multiplied by a spatial attention map

    attn = sigmoid(BN(conv1x1([mean_c(out), max_c(out)])))  *  maxpool(attn_prev)

where ``attn_prev`` is the previous stage's attention, max-pooled to this block's resolution with the same
window the reference uses (3x3, stride 2, padding 1 for a stride-2 block; identity for a stride-1 block).
The first stage has no previous attention. The convolution / norm / activation layers come from
``timm.layers``; the CA logic is ours.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import ConvNormAct
from torch import nn

__all__ = ["CABlock", "init_weights", "pool_attention"]


def pool_attention(attn_prev: torch.Tensor, stride: int) -> torch.Tensor:
    """Max-pool a previous stage's attention to the resolution of a block with this stride.

    Args:
        attn_prev: (B, 1, h, w) float attention in [0, 1] at the block's input resolution.
        stride: the block's spatial stride (>= 1).

    Returns:
        (B, 1, ceil(h / stride), ceil(w / stride)): the same size a 3x3 convolution with this stride and
        padding 1 produces. Window ``2 * stride - 1``, padding ``stride - 1``: for stride 2 this is MMNet's
        ``MaxPool2d(3, 2, 1)``; for stride 1 the map is returned unchanged.
    """
    if stride == 1:
        return attn_prev
    return F.max_pool2d(attn_prev, kernel_size=2 * stride - 1, stride=stride, padding=stride - 1)


class CABlock(nn.Module):
    """Continuous-attention residual block (MMNet, IJCAI 2022; reference ``CA_block.CABlock``).

    Args:
        in_channels: channels of the input feature map.
        out_channels: channels of the output feature map.
        stride: spatial stride of the 3x3 convolution (1 or 2 in practice).

    Shapes:
        forward(x, attn_prev) with x (B, in_channels, H, W) float32 and attn_prev either ``None`` (first
        stage) or (B, 1, H, W) in [0, 1]; returns ``(features, attention)`` with features
        (B, out_channels, ceil(H / stride), ceil(W / stride)) and attention (B, 1, same h, w) in [0, 1].
        The attention returned is the product with the pooled previous one, as in the reference, so it
        carries through the stages ("continuous" attention).

    Raises:
        ValueError: ``attn_prev`` is not (B, 1, H, W) for an input x of spatial size (H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        self.conv1 = ConvNormAct(in_channels, out_channels, kernel_size=3, stride=stride)  # 3x3 + BN + ReLU
        self.conv2 = ConvNormAct(out_channels, out_channels, kernel_size=1, apply_act=False)  # 1x1 + BN
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = ConvNormAct(in_channels, out_channels, 1, stride=stride, apply_act=False)
        else:
            self.shortcut = nn.Identity()
        self.act = nn.ReLU(inplace=True)
        self.attn_conv = nn.Conv2d(2, 1, kernel_size=1, bias=False)  # [mean_c, max_c] -> 1 map
        self.attn_norm = nn.BatchNorm2d(1)

    def forward(
        self, x: torch.Tensor, attn_prev: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and attention of ``x`` (B, in_channels, H, W), continuing ``attn_prev`` (B, 1, H, W) or None.

        Returns ``(features (B, out_channels, ceil(H / stride), ceil(W / stride)), attention (B, 1, same h, w))``;
        raises ValueError when ``attn_prev`` does not match ``x``.
        """
        if attn_prev is not None and (
            attn_prev.shape[0] != x.shape[0] or attn_prev.shape[1] != 1 or attn_prev.shape[2:] != x.shape[2:]
        ):
            raise ValueError(
                f"CABlock: attn_prev must be (B, 1, H, W) = ({x.shape[0]}, 1, {x.shape[2]}, {x.shape[3]}) "
                f"to match x {tuple(x.shape)}, got {tuple(attn_prev.shape)}"
            )
        out = self.act(self.conv2(self.conv1(x)) + self.shortcut(x))  # (B, C, h, w)
        mean_c = out.mean(dim=1, keepdim=True)  # (B, 1, h, w)
        max_c = out.amax(dim=1, keepdim=True)  # (B, 1, h, w)
        attn = torch.sigmoid(self.attn_norm(self.attn_conv(torch.cat([mean_c, max_c], dim=1))))  # (B, 1, h, w)
        if attn_prev is not None:
            attn = attn * pool_attention(attn_prev, self.stride)  # (B, 1, h, w)
        return out * attn, attn


def init_weights(module: nn.Module) -> None:
    """ResNet-style initialisation of ``module``, as MMNet's reference.

    Kaiming-normal (fan_out, ReLU) convolutions, unit-scale zero-shift norms, zero biases. Linear layers are left
    to their own (timm / torch) init.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
