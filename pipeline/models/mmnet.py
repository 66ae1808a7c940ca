"""MMNet baseline (Li et al., "MMNet: Muscle motion-guided network for micro-expression recognition", IJCAI 2022).

Faithful to the forward pass of the public reference code (github.com/muse1998/MMNet: ``CASME2_5.py`` class
``MMNet``, ``CA_block.py`` and ``PC_module.py``), rebuilt from ``timm.layers``, timm's ViT ``Block`` and our
:class:`~pipeline.models.layers.CABlock` (DESIGN §5):

- main branch on ``apex - onset`` (224 px): 3x3 stride-2 conv 3 -> 180 + BN + ReLU (the reference's
  ``conv_act``); 3x3 stride-1 conv 180 -> 128 + BN + ReLU (the stem of the reference's CA ResNet); four CA
  stages of one block each, widths 128/128/256/512, strides 1/2/2/2, continuous attention max-pooled between
  stages -> (B, 512, 14, 14);
- position calibration (PC) module on the onset: resized to 14x14, 1x1 patch embedding 3 -> 512, a learned
  position embedding of 196 tokens (no class token), 2 ViT blocks (4 heads, MLP ratio 4, qkv bias,
  LayerNorm eps 1e-6), a final LayerNorm -> (B, 512, 14, 14);
- fusion by addition, flatten, ``Linear(512 * 14 * 14 -> K)``.

Parameters the reference defines but never uses in its forward pass (a 1x1 ``pos`` conv, a 38-way AU head on
112 x 112, a ``timeembed`` tensor, the ViT's class token, head and ``to_Mask``, an unused dropout) are left out,
so that at K = 5 the model has exactly the 9,438,841 trainable parameters the reference's forward pass uses.
The reference has no dropout in its forward pass, so ``ModelParams.dropout`` is not used here.

Input size: fixed at 224 x 224 px by the architecture. The classifier is ``Linear(512 * 14 * 14)``, so the main
branch (total stride 16) must end at 14x14, and the PC module's position embedding has 14 * 14 tokens.

Example:
    >>> import torch
    >>> model = MMNet(num_classes=5)
    >>> sum(p.numel() for p in model.parameters() if p.requires_grad)
    9438841
    >>> onset = apex = torch.zeros(1, 3, 224, 224)
    >>> model.eval()(onset, apex).shape
    torch.Size([1, 5])
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import ConvNormAct, PatchEmbed, trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from pipeline.config import ModelParams
from pipeline.models.branches import check_frame_batch
from pipeline.models.layers import CABlock, init_weights

__all__ = ["MMNET_IMAGE_SIZE_PX", "MMNet", "MMNetMainBranch", "PositionCalibration", "mmnet_from_params"]

MMNET_IMAGE_SIZE_PX = 224  # the reference's input side; the only one the architecture accepts
MAP_SIZE = 14  # side of both branches' output maps (224 / 16), and of the PC module's token grid
ACTION_CHANNELS = 180  # width of the first conv on apex - onset (the reference's 90 * 2)
STAGE_CHANNELS = (128, 128, 256, 512)  # the CA ResNet's stem and stage widths
STAGE_STRIDES = (1, 2, 2, 2)
EMBED_DIM = 512
VIT_DEPTH = 2
VIT_HEADS = 4
VIT_MLP_RATIO = 4.0
POS_EMBED_STD = 0.02  # trunc-normal std of the position embedding and the ViT's linear layers (reference)


class MMNetMainBranch(nn.Module):
    """MMNet's main branch: motion features of ``apex - onset`` through four CA blocks.

    Shapes:
        forward(onset, apex), both (B, 3, 224, 224) float32 ImageNet-normalised -> (B, 512, 14, 14).

    The first conv keeps torch's default init, as the reference's ``conv_act``; the CA ResNet (stem and stages)
    gets the reference's ResNet init (Kaiming-normal fan-out convs, unit BN).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv_act = ConvNormAct(3, ACTION_CHANNELS, kernel_size=3, stride=2)  # 3x3 s2 + BN + ReLU
        self.stem = ConvNormAct(ACTION_CHANNELS, STAGE_CHANNELS[0], kernel_size=3, stride=1)  # 3x3 + BN + ReLU
        widths = [STAGE_CHANNELS[0], *STAGE_CHANNELS]
        self.stages = nn.ModuleList(
            CABlock(c_in, c_out, stride=s)
            for c_in, c_out, s in zip(widths[:-1], widths[1:], STAGE_STRIDES, strict=True)
        )
        init_weights(self.stem)
        init_weights(self.stages)

    def forward(self, onset: torch.Tensor, apex: torch.Tensor) -> torch.Tensor:
        """Motion features: onset, apex (B, 3, 224, 224) float32 -> (B, 512, 14, 14)."""
        x = self.stem(self.conv_act(apex - onset))  # (B, 128, H/2, W/2)
        attn = None
        for stage in self.stages:
            x, attn = stage(x, attn)  # (B, C_i, h_i, w_i), (B, 1, h_i, w_i); max-pooled inside for stride 2
        return x  # (B, 512, H/16, W/16)


class PositionCalibration(nn.Module):
    """MMNet's position calibration (PC) module: a 2-block ViT on the onset frame resized to 14x14.

    The resize is bilinear without antialiasing (``align_corners=False``), as the reference's
    ``torchvision.transforms.Resize([14, 14])`` on a batch tensor did in the torchvision of its time (newer
    torchvision antialiases by default). Each of the 196 pixels is one token (patch size 1).

    Shapes:
        forward(onset (B, 3, H, W) float32 ImageNet-normalised, any H, W) -> (B, 512, 14, 14) float32.
    """

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(img_size=MAP_SIZE, patch_size=1, in_chans=3, embed_dim=EMBED_DIM)
        self.pos_embed = nn.Parameter(torch.zeros(1, MAP_SIZE * MAP_SIZE, EMBED_DIM))
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.Sequential(
            *(
                Block(EMBED_DIM, VIT_HEADS, mlp_ratio=VIT_MLP_RATIO, qkv_bias=True, norm_layer=norm_layer)
                for _ in range(VIT_DEPTH)
            )
        )
        self.norm = norm_layer(EMBED_DIM)
        trunc_normal_(self.pos_embed, std=POS_EMBED_STD)
        for m in self.blocks.modules():  # the reference's ViT init; the patch conv keeps torch's default
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=POS_EMBED_STD)
                nn.init.zeros_(m.bias)

    def forward(self, onset: torch.Tensor) -> torch.Tensor:
        """Position features: onset (B, 3, H, W) float32, any H, W -> (B, 512, 14, 14) float32."""
        x = F.interpolate(onset, size=(MAP_SIZE, MAP_SIZE), mode="bilinear", align_corners=False)  # (B, 3, 14, 14)
        x = self.patch_embed(x) + self.pos_embed  # (B, 196, 512), token i = pixel (i // 14, i % 14)
        x = self.norm(self.blocks(x))  # (B, 196, 512)
        return x.transpose(1, 2).reshape(x.shape[0], EMBED_DIM, MAP_SIZE, MAP_SIZE)  # (B, 512, 14, 14)


class MMNet(nn.Module):
    """MMNet (IJCAI 2022) with timm's model contract; see the module docstring for the architecture.

    Args:
        num_classes: K >= 0 (0 gives ``forward`` = the flattened fused map, as timm).
        image_size_px: input side; must be :data:`MMNET_IMAGE_SIZE_PX` (224), the only size the reference
            architecture takes. Kept as ``self.image_size_px`` for the data pipeline.

    Attributes:
        num_features: 512, the channels of ``forward_features``.
        head_hidden_size: 512 * 14 * 14 = 100352, the width of ``forward_head(..., pre_logits=True)``.

    Shapes:
        forward(onset, apex) -> logits (B, K) float32, unnormalised.
        forward_features(onset, apex) -> fused map (B, 512, 14, 14) = main branch + PC module.
        forward_head(x, pre_logits=False) -> logits (B, K), or the flattened map (B, 100352) with
        ``pre_logits=True``.
        ``onset`` and ``apex`` are (B, 3, 224, 224) float32 ImageNet-normalised frames of one clip.

    Raises:
        ValueError: at construction for ``image_size_px`` != 224 or ``num_classes`` < 0; at forward for frames
            that are not (B, 3, 224, 224) float of equal shapes (the message names the offending shape).
    """

    def __init__(self, num_classes: int, image_size_px: int = MMNET_IMAGE_SIZE_PX) -> None:
        super().__init__()
        if image_size_px != MMNET_IMAGE_SIZE_PX:
            raise ValueError(
                f"MMNet takes {MMNET_IMAGE_SIZE_PX} px frames only (its classifier is Linear(512 * 14 * 14) after a "
                f"total stride of 16), got image_size_px={image_size_px}; set model.image_size_px: "
                f"{MMNET_IMAGE_SIZE_PX} to train it"
            )
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.image_size_px = image_size_px
        self.main_branch = MMNetMainBranch()
        self.position = PositionCalibration()
        self.num_features = EMBED_DIM
        self.head_hidden_size = EMBED_DIM * MAP_SIZE * MAP_SIZE
        self.num_classes = num_classes
        self.fc = self._make_fc(num_classes)

    def _make_fc(self, num_classes: int) -> nn.Module:
        # torch's default Linear init, as the reference's fc
        return nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, onset: torch.Tensor, apex: torch.Tensor) -> torch.Tensor:
        """Fused map (B, 512, 14, 14) = main branch + PC module, of onset, apex (B, 3, 224, 224) float32."""
        check_frame_batch(type(self).__name__, onset, apex)
        if tuple(onset.shape[2:]) != (self.image_size_px, self.image_size_px):
            raise ValueError(
                f"MMNet: frames must be (B, 3, {self.image_size_px}, {self.image_size_px}), "
                f"got {tuple(onset.shape)}"
            )
        action = self.main_branch(onset, apex)  # (B, 512, 14, 14)
        position = self.position(onset)  # (B, 512, 14, 14)
        return action + position  # (B, 512, 14, 14)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits (B, K) of a fused map ``x``, or the flattened map (B, 100352) with ``pre_logits=True``."""
        x = torch.flatten(x, 1)  # (B, 512 * 14 * 14)
        return x if pre_logits else self.fc(x)  # (B, 100352) or (B, K)

    def forward(self, onset: torch.Tensor, apex: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) float32, unnormalised, of onset, apex (B, 3, 224, 224) float32 ImageNet-normalised."""
        return self.forward_head(self.forward_features(onset, apex))

    def get_classifier(self) -> nn.Module:
        """The final linear layer (an identity with no classes; timm's contract)."""
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the final linear layer with a fresh one for ``num_classes`` (0: identity).

        ``global_pool`` is accepted for timm compatibility; MMNet has no pooling (it flattens), so it must be
        ``None`` or ``''``.

        Raises:
            ValueError: ``num_classes`` < 0 or a pooling type is asked for.
        """
        if global_pool:
            raise ValueError(f"MMNet flattens its 14x14 map and has no global pool; got global_pool={global_pool!r}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        self.fc = self._make_fc(num_classes).to(self.position.pos_embed.device)


def mmnet_from_params(params: ModelParams, num_classes: int) -> MMNet:
    """:class:`MMNet` from the ``model`` section.

    Only ``image_size_px`` is read (it must be 224); widths and depths are fixed by the reference.

    Raises:
        ValueError: ``params.image_size_px`` != 224.
    """
    return MMNet(num_classes, image_size_px=params.image_size_px)
