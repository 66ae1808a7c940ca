"""STSTNet baseline on the onset → apex optical flow (Liong et al., FG 2019).

Liong, Gan, See, Khor & Huang, "Shallow triple stream three-dimensional CNN (STSTNet) for micro-expression
recognition", IEEE FG 2019.

Faithful to the class ``STSTNet`` of the public PyTorch reference, ``main.py`` of github.com/christy1206/STSTNet
(commit 220f3de, "Python - pytorch version of STSTNet"; lines cited below), module names included, so that the
reference's per-subject checkpoints (``STSTNet_Weights/*.pth``) load with ``load_state_dict`` unchanged. Input:
(B, 3, 28, 28) float32 (u, v, optical strain), e.g. :func:`pipeline.face.optical_flow.flow_features` stacked over a
batch.

- three parallel streams on the same input (l. 18-20, 30-45), each
  ``Conv2d(3 -> c, 3x3, stride 1, padding 2, bias)`` with c = 3, 5 and 8 → ``ReLU`` → ``BatchNorm2d(c)`` →
  ``MaxPool2d(3, stride 3, padding 1)`` → ``Dropout(p=0.5)``, in that order (ReLU *before* BN, as in the
  reference and in its MATLAB network ``STSTNet.mat``): 28 → 30 (padding 2 grows the map) → 10;
- ``torch.cat`` of the streams in the order 3, 5, 8 channels (l. 46) → (B, 16, 10, 10): :meth:`forward_features`;
- ``AvgPool2d(2, stride 2)`` (l. 26) → (B, 16, 5, 5), flattened channel-major as the reference's ``view``
  (l. 48) → (B, 400), ``Linear(400 -> K)`` with bias (l. 28): :meth:`forward_head`.

One ``ReLU``, one ``MaxPool2d`` and one ``Dropout`` module are shared by the three streams, as in the reference
(none has parameters). Initialisation: torch's defaults, which is what the reference's ``reset_weights``
(``layer.reset_parameters()`` on every child, l. 52-56, applied at l. 145) restores before training.

Differences from the paper (Table I), where the reference code wins here: the paper's convolutions and max-pools
use "same" padding (28 → 28 → 10), the PyTorch reference pads the convolutions by 2 (28 → 30) and the pools by 1,
which also gives 10 x 10 but with the pooling windows placed differently. The paper trains 500 epochs (MATLAB),
the PyTorch reference 800. The MATLAB network's input layer also subtracts the training set's mean image
("zerocenter"); the PyTorch reference does not.

Trainable parameters at K = 3 (the reference's 3 classes): 3 convolutions 27·(3+5+8) weights + 16 biases = 448,
3 BatchNorms 2·16 = 32, the classifier 400·3 + 3 = 1203; 1683 in all, as in the reference's released checkpoints
(the paper's Table V says "0.00167 M", 13 fewer or truncated).

Published training recipe (``main.py`` l. 88-90, 98, 149): Adam, lr 5e-5 (no weight decay, no schedule),
batch 256, 800 epochs, cross-entropy, LOSO on the 442-clip MEGC2019 composite (3 classes), the model of the *last*
epoch evaluated (no early stopping); the training batches are not shuffled. The reference feeds 28 x 28 8-bit
images of normalised u, v and strain (``norm_u_v_os``, read with ``cv2.imread`` as 0-255 floats, BGR order);
how they were made is not public (see :mod:`pipeline.face.optical_flow`).

Dropout: the reference's rate (0.5) is part of the architecture here, so ``ModelParams.dropout`` (MIACNet's) is
not used; the reference's own value wins.

Example:
    >>> import torch
    >>> model = STSTNet(num_classes=3)
    >>> sum(p.numel() for p in model.parameters() if p.requires_grad)
    1683
    >>> model.eval()(torch.zeros(2, 3, 28, 28)).shape
    torch.Size([2, 3])
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.config import ModelParams

__all__ = ["STSTNET_FLOW_SIZE_PX", "STSTNet", "ststnet_from_params"]

STSTNET_FLOW_SIZE_PX = 28  # the reference's input side: Linear(5 * 5 * 16) after the pools needs 28 x 28
IN_CHANNELS = 3  # u, v, optical strain
STREAM_CHANNELS = (3, 5, 8)  # conv1, conv2, conv3
DROPOUT = 0.5  # the reference's nn.Dropout(p=0.5)
POOLED_SIDE = 5  # 28 -> conv (padding 2) 30 -> max-pool 3/3 (padding 1) 10 -> avg-pool 2/2 5


class STSTNet(nn.Module):
    """STSTNet (FG 2019) with timm's model contract; see the module docstring for the architecture.

    Args:
        num_classes: K >= 0 (0 gives ``forward`` = the flattened pooled map, as timm).
        image_size_px: side of the face crops the flow is computed from, kept as ``self.image_size_px`` for the
            data pipeline (any size >= 2; :func:`pipeline.face.optical_flow.flow_features` brings the flow to 28 x
            28). The
            network itself always takes 28 x 28 flow.

    Attributes:
        input_names: ``("flow",)``: ``forward`` takes one (u, v, strain) tensor, not the ``(onset, apex)`` frames
            the other classifiers take.
        flow_size_px: 28, the side of the flow input.
        num_features: 16, the channels of ``forward_features``.
        head_hidden_size: 16 * 5 * 5 = 400, the width of ``forward_head(..., pre_logits=True)``.

    Shapes:
        forward(flow) -> logits (B, K) float32, unnormalised.
        forward_features(flow) -> the concatenated streams (B, 16, 10, 10) (after ReLU, BN, max-pool, dropout).
        forward_head(x, pre_logits=False) -> logits (B, K), or the average-pooled, flattened map (B, 400) with
        ``pre_logits=True``.
        ``flow`` is (B, 3, 28, 28) float: channels u, v (px of the 28 px grid), optical strain.

    Raises:
        ValueError: at construction for ``num_classes`` < 0 or ``image_size_px`` < 2; at forward for a ``flow``
            that is not a (B, 3, 28, 28) float tensor with B >= 1 (the message names the offending shape).
    """

    input_names: tuple[str, ...] = ("flow",)
    flow_size_px: int = STSTNET_FLOW_SIZE_PX

    def __init__(self, num_classes: int = 3, image_size_px: int = 112) -> None:
        super().__init__()
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        if image_size_px < 2:
            raise ValueError(f"image_size_px (the crop side the flow is computed at) must be >= 2, got {image_size_px}")
        self.image_size_px = image_size_px
        c1, c2, c3 = STREAM_CHANNELS
        self.conv1 = nn.Conv2d(IN_CHANNELS, c1, kernel_size=3, padding=2)
        self.conv2 = nn.Conv2d(IN_CHANNELS, c2, kernel_size=3, padding=2)
        self.conv3 = nn.Conv2d(IN_CHANNELS, c3, kernel_size=3, padding=2)
        self.relu = nn.ReLU()
        self.bn1 = nn.BatchNorm2d(c1)
        self.bn2 = nn.BatchNorm2d(c2)
        self.bn3 = nn.BatchNorm2d(c3)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=3, padding=1)
        self.avgpool = nn.AvgPool2d(kernel_size=2, stride=2, padding=0)
        self.dropout = nn.Dropout(p=DROPOUT)
        self.num_features = sum(STREAM_CHANNELS)
        self.head_hidden_size = self.num_features * POOLED_SIDE * POOLED_SIDE
        self.num_classes = num_classes
        self.fc = self._make_fc(num_classes)

    def _make_fc(self, num_classes: int) -> nn.Module:
        # torch's default Linear init, as the reference's fc after reset_weights
        return nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def _check_flow(self, flow: torch.Tensor) -> None:
        expected = (IN_CHANNELS, self.flow_size_px, self.flow_size_px)
        if not isinstance(flow, torch.Tensor) or flow.ndim != 4 or tuple(flow.shape[1:]) != expected:
            shape = tuple(flow.shape) if isinstance(flow, torch.Tensor) else type(flow).__name__
            raise ValueError(
                f"STSTNet: flow must be (B, {IN_CHANNELS}, {self.flow_size_px}, {self.flow_size_px}) "
                f"(u, v, strain; see pipeline.face.optical_flow.flow_features), got {shape}"
            )
        if not flow.is_floating_point():
            raise ValueError(f"STSTNet: flow must be float, got {flow.dtype}")
        if flow.shape[0] < 1:
            raise ValueError("STSTNet: flow is an empty batch")

    def _stream(self, x: torch.Tensor, conv: nn.Module, bn: nn.Module) -> torch.Tensor:
        # the reference's order: conv -> ReLU -> BN -> max-pool -> dropout
        return self.dropout(self.maxpool(bn(self.relu(conv(x)))))  # (B, c, 10, 10)

    def forward_features(self, flow: torch.Tensor) -> torch.Tensor:
        """The three streams concatenated, (B, 16, 10, 10), of ``flow`` (B, 3, 28, 28) float (u, v, strain)."""
        self._check_flow(flow)
        x1 = self._stream(flow, self.conv1, self.bn1)  # (B, 3, 10, 10)
        x2 = self._stream(flow, self.conv2, self.bn2)  # (B, 5, 10, 10)
        x3 = self._stream(flow, self.conv3, self.bn3)  # (B, 8, 10, 10)
        return torch.cat((x1, x2, x3), dim=1)  # (B, 16, 10, 10)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits (B, K) of a feature map ``x`` (B, 16, 10, 10), or the pooled, flattened (B, 400) if ``pre_logits``."""
        x = torch.flatten(self.avgpool(x), 1)  # (B, 16, 5, 5) -> (B, 400), channel-major as the reference's view
        return x if pre_logits else self.fc(x)  # (B, 400) or (B, K)

    def forward(self, flow: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) float32, unnormalised, of ``flow`` (B, 3, 28, 28) float (u, v, strain)."""
        return self.forward_head(self.forward_features(flow))

    def get_classifier(self) -> nn.Module:
        """The final linear layer (an identity with no classes; timm's contract)."""
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the final linear layer with a fresh one for ``num_classes`` (0: identity).

        ``global_pool`` is accepted for timm compatibility; STSTNet has no global pool (a 2x2 average pool, then
        it flattens), so it must be ``None`` or ``''``.

        Raises:
            ValueError: ``num_classes`` < 0 or a pooling type is asked for.
        """
        if global_pool:
            raise ValueError(f"STSTNet flattens its 5x5 map and has no global pool; got global_pool={global_pool!r}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        self.fc = self._make_fc(num_classes).to(self.conv1.weight.device)


def ststnet_from_params(params: ModelParams, num_classes: int) -> STSTNet:
    """:class:`STSTNet` from the ``model`` section.

    Only ``image_size_px`` (the crop side the flow is computed at) is read. Widths, depths and dropout are fixed
    by the reference (its dropout, 0.5, wins over ``params.dropout``).

    Raises:
        ValueError: ``num_classes`` < 0.
    """
    return STSTNet(num_classes, image_size_px=params.image_size_px)
