"""In-memory tensors, batching and augmentation for pre-training pairs and micro-expression samples.

The demo and the real ME datasets are small (hundreds of clips; a few thousand macro frames), so frames are
decoded once into ``uint8`` tensors and batches are gathered by index; no DataLoader workers are needed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from pipeline.io import decode_png

__all__ = ["PairAugmentation", "images_to_tensor", "iterate_batches", "normalise"]

_MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)


def images_to_tensor(pngs: Sequence[bytes], size_px: int) -> torch.Tensor:
    """Decode PNG bytes of RGB images into ``(N, 3, size_px, size_px) uint8``.

    Images of another size are resized (bilinear, antialiased).
    """
    if len(pngs) == 0:
        return torch.empty(0, 3, size_px, size_px, dtype=torch.uint8)
    images = torch.from_numpy(np.stack([decode_png(data) for data in pngs])).permute(0, 3, 1, 2)  # (N, 3, H, W)
    if images.shape[-2:] != (size_px, size_px):
        images = F.interpolate(images.float(), size=(size_px, size_px), mode="bilinear", antialias=True)
        images = images.round().clamp(0, 255).to(torch.uint8)
    return images.contiguous()


def normalise(images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W) uint8`` in [0, 255] → ``float32`` ImageNet-normalised (timm's mean and std)."""
    return (images.float() / 255.0 - _MEAN.to(images.device)) / _STD.to(images.device)


def iterate_batches(n: int, batch_size: int, generator: torch.Generator | None) -> Iterator[torch.Tensor]:
    """Index batches ``(b,) int64`` over ``range(n)``; shuffled when ``generator`` is given, else in order."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    yield from order.split(batch_size)


class PairAugmentation:
    """One random geometric transform per sample, shared by its onset, apex and optical flow.

    The same warp for every frame of a sample: a different warp per frame would add motion larger than a
    micro-expression. Per sample: a horizontal flip with probability 1/2 (if ``flip``), then a rotation about the
    centre by an angle uniform in [-rotate_deg, rotate_deg], then a shift by integers uniform in
    [-translate_px, translate_px] (x and y), nearest-neighbour sampling, and 0 outside the frame. This is MMNet's
    reference augmentation (``RandomHorizontalFlip``, ``RandomRotation(3)``, ``RandomCrop(224, padding=15)``
    applied after ImageNet normalisation, github.com/muse1998/MMNet ``CASME2_5.py``): 0 in normalised units is
    the mean colour, and 0 flow is no motion. A flow field's vectors turn with the frame: u changes sign under the
    flip, (u, v) rotates by the angle; the strain (a magnitude) only moves.

    Args:
        flip: random horizontal flips.
        rotate_deg: largest rotation, degrees (>= 0).
        translate_px: largest shift, px (>= 0).

    Draws from torch's global random stream (seeded by :func:`pipeline.train.engine.seed_everything`).
    """

    def __init__(self, flip: bool, rotate_deg: float, translate_px: int) -> None:
        self.flip, self.rotate_deg, self.translate_px = flip, rotate_deg, translate_px

    @property
    def identity(self) -> bool:
        """True when the transform never changes anything."""
        return not self.flip and self.rotate_deg == 0 and self.translate_px == 0

    def __call__(self, frames: torch.Tensor,
                 flow: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augment a batch.

        Args:
            frames: ``(B, C, H, W)`` float32, e.g. onset and apex stacked on channels, ImageNet-normalised.
            flow: ``(B, 3, H, W)`` float32 (u, v in px, optical strain) of the same samples, or None.

        Returns:
            ``(frames, flow)`` transformed, same shapes (flow None if it was None).
        """
        if self.identity:
            return frames, flow
        b, _, h, w = frames.shape
        flips = torch.rand(b) < 0.5 if self.flip else torch.zeros(b, dtype=torch.bool)
        angle = torch.deg2rad((torch.rand(b) * 2 - 1) * self.rotate_deg)  # (B,) radians
        t = self.translate_px
        shift = torch.randint(-t, t + 1, (b, 2)).float() if t > 0 else torch.zeros(b, 2)  # (B, 2) px, (x, y)
        cos, sin = torch.cos(angle), torch.sin(angle)
        sign = torch.where(flips, -1.0, 1.0)  # the flip, as a factor on x
        # output -> input in affine_grid's normalised coordinates (x right, y down, centre 0, half-side 1):
        # input = Flip . R(-angle) . (output - shift), with shift in normalised units (2 px / side)
        inverse = torch.zeros(b, 2, 3)
        inverse[:, 0, 0], inverse[:, 0, 1] = sign * cos, sign * sin
        inverse[:, 1, 0], inverse[:, 1, 1] = -sin, cos
        offset = torch.stack([shift[:, 0] * 2 / w, shift[:, 1] * 2 / h], dim=1)  # (B, 2)
        inverse[:, :, 2] = -(inverse[:, :, :2] @ offset.unsqueeze(-1)).squeeze(-1)
        grid = F.affine_grid(inverse, [b, 1, h, w], align_corners=False)  # (B, H, W, 2)
        stacked = frames if flow is None else torch.cat([frames, flow], dim=1)
        warped = F.grid_sample(stacked, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        if flow is None:
            return warped, None
        frames, flow = warped[:, : frames.shape[1]], warped[:, frames.shape[1]:].clone()
        u, v = flow[:, 0] * sign.view(b, 1, 1), flow[:, 1]  # the flip mirrors u; then the rotation turns (u, v)
        c, s = cos.view(b, 1, 1), sin.view(b, 1, 1)
        flow[:, 0], flow[:, 1] = c * u - s * v, s * u + c * v
        return frames, flow
