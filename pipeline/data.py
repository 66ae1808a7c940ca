"""In-memory tensors, batching and augmentation for pre-training pairs and micro-expression samples.

The demo and the real ME datasets are small (hundreds of clips; a few thousand macro frames), so frames are
decoded once into ``uint8`` tensors and batches are gathered by index; no DataLoader workers are needed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.transforms import v2

from pipeline.io import decode_png

__all__ = ["FuturePairSampler", "images_to_tensor", "iterate_batches", "normalise", "pair_augmentation"]

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


def pair_augmentation(flip: bool, rotate_deg: float, translate_px: int, size_px: int) -> v2.Transform:
    """One random transform for an onset/apex pair stacked as ``(6, H, W) uint8``.

    Both frames receive identical geometry (a different warp per frame would add motion larger than a
    micro-expression).
    """
    steps: list[v2.Transform] = [v2.RandomHorizontalFlip()] if flip else []
    if rotate_deg > 0 or translate_px > 0:
        shift = translate_px / size_px
        steps.append(v2.RandomAffine(degrees=rotate_deg, translate=(shift, shift)))
    return v2.Compose(steps) if steps else v2.Identity()


class FuturePairSampler:
    """Samples (source frame, future frame) index pairs of the same video with a horizon in seconds (DESIGN §4).

    Args:
        index: one row per stored frame, in storage order, with columns ``video`` and ``time_s``.
        horizon_s: ``(min, max)`` seconds between source and future; converted per video through its real
            frame times, so 30 fps and 200 fps footage mean the same thing.

    Raises:
        ValueError: no frame has a future frame within the horizon.
    """

    def __init__(self, index: pd.DataFrame, horizon_s: tuple[float, float]):
        times = index["time_s"].to_numpy(dtype=float)
        video_rank = pd.factorize(index["video"], sort=True)[0]
        order = np.lexsort((times, video_rank))  # by video, then time
        # one increasing time axis: each video starts after the previous one ends plus more than the horizon,
        # so searchsorted is valid over the concatenation and a future frame never comes from another video
        spacing = np.ptp(times) + horizon_s[1] + 1.0
        axis = times[order] + video_rank[order] * spacing
        first = np.searchsorted(axis, axis + horizon_s[0] - 1e-9, side="left")
        last = np.searchsorted(axis, axis + horizon_s[1] + 1e-9, side="right")
        first = np.maximum(first, np.arange(len(axis)) + 1)  # the future frame is strictly later
        valid = first < last
        if not valid.any():
            raise ValueError(f"no frame has a future frame {horizon_s} s ahead in the same video")
        self._order, self._first, self._last = order, first, last
        self._sources = np.flatnonzero(valid)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(source, future)`` row positions into ``index``, each ``(n,) int64``."""
        sources = rng.choice(self._sources, size=n)
        futures = rng.integers(self._first[sources], self._last[sources])
        return self._order[sources], self._order[futures]
