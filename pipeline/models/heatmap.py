"""Where a classifier looks: Grad-CAM on ``forward_features``, MIACNet's action attention, and overlays.

Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization",
ICCV 2017), written out here in a few lines of autograd rather than taken from a library: every classifier of
:mod:`pipeline.models.registry` follows timm's contract, so the last feature map is ``forward_features(*inputs)``
and the logits are ``forward_head(features)``. The class score's gradient with respect to that map, averaged over
space, weighs its channels; the weighted sum, through a ReLU, is the map of positive evidence for the class. Only
the head lies between the map and the score, so the branches run under ``no_grad`` and the gradient flows through
the head alone (cheap; BatchNorm in eval mode keeps the samples of a batch independent).

Which map that is, per model: MIACNet, the fused position + action map (``H/16``); MMNet, the CA stages + the
position calibration (14 x 14); ResNet-18-diff, the last stage; STSTNet, its three streams on the 28 x 28 flow
(10 x 10). Each covers the whole input, which is the whole aligned face crop, so the map is resized bilinearly to
the crop's side. MIACNet also has the action branch's own spatial attention (:func:`action_attention`), which
needs no gradient and says where the branch looked for motion, whatever the class.

Example:
    >>> import torch
    >>> from torch import nn
    >>> class Toy(nn.Module):  # evidence for class 1 = the mean of channel 0 of the input
    ...     def forward_features(self, x):
    ...         return x
    ...     def forward_head(self, x):
    ...         return torch.stack([-x[:, 0].mean((1, 2)), x[:, 0].mean((1, 2))], dim=1)
    >>> x = torch.zeros(1, 1, 4, 4)
    >>> x[0, 0, 1, 2] = 1.0
    >>> cam, logits = grad_cam(Toy(), [x], target=torch.tensor([1]))
    >>> tuple(cam.shape), [int(i) for i in (cam[0] == cam[0].max()).nonzero()[0]]
    ((1, 4, 4), [1, 2])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HEATMAP_METHODS", "action_attention", "grad_cam", "model_heatmaps", "normalise_heatmaps", "overlay"]

HeatmapMethod = Literal["gradcam", "attention"]
HEATMAP_METHODS: tuple[str, ...] = ("gradcam", "attention")


def grad_cam(model: nn.Module, inputs: Sequence[torch.Tensor],
             target: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM of ``model``'s ``forward_features`` map for one class per sample.

    Args:
        model: a classifier with timm's contract (``forward_features``, ``forward_head``), in eval mode.
        inputs: what ``model.forward`` takes (e.g. onset and apex ``(B, 3, S, S) float32``, ImageNet-normalised).
        target: ``(B,) int64`` class per sample; None = the predicted class.

    Returns:
        ``(cam, logits)``: ``cam`` ``(B, h, w) float32 >= 0`` at the feature map's resolution, unnormalised
        (zero where no positive evidence); ``logits`` ``(B, K) float32`` (detached).

    Raises:
        ValueError: ``forward_features`` does not return a ``(B, C, h, w)`` map, or ``target`` is not ``(B,)``.
    """
    with torch.no_grad():
        features = model.forward_features(*inputs)  # (B, C, h, w)
    if features.ndim != 4:
        raise ValueError(f"{type(model).__name__}.forward_features gave shape {tuple(features.shape)}, not "
                         "(B, C, h, w): Grad-CAM needs a spatial map")
    features = features.detach().float().requires_grad_(True)
    with torch.enable_grad():
        logits = model.forward_head(features)  # (B, K)
        classes = logits.argmax(1) if target is None else target.to(logits.device)
        if classes.shape != (len(features),):
            raise ValueError(f"target must be ({len(features)},) class indices, got {tuple(classes.shape)}")
        score = logits.gather(1, classes.view(-1, 1)).sum()  # samples are independent: one backward for all
        (gradient,) = torch.autograd.grad(score, features)  # (B, C, h, w)
    weights = gradient.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1): alpha_k^c of the paper
    cam = F.relu((weights * features.detach()).sum(dim=1))  # (B, h, w)
    return cam, logits.detach()


def action_attention(model: nn.Module, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """MIACNet's action-branch attention (``forward_with_attention``): where the branch looked for motion.

    Returns:
        ``(attention (B, h, w) float32 in [0, 1], logits (B, K) float32)``.

    Raises:
        ValueError: the model has no ``forward_with_attention`` (only MIACNet has).
    """
    if not hasattr(model, "forward_with_attention"):
        raise ValueError(f"{type(model).__name__} has no action attention (MIACNet only); use Grad-CAM")
    with torch.no_grad():
        fused, attention = model.forward_with_attention(*inputs)  # (B, C, h, w), (B, 1, h, w)
        logits = model.forward_head(fused)
    return attention[:, 0].float(), logits.float()


def normalise_heatmaps(maps: torch.Tensor, size_px: int, scale: bool = True) -> np.ndarray:
    """Resize maps to the crop and, with ``scale``, bring each to [0, 1] by its maximum.

    Args:
        maps: ``(B, h, w)`` float, >= 0 (Grad-CAM; or attention, already in [0, 1]).
        size_px: the side S of the aligned face crop the maps cover.
        scale: divide each map by its maximum (Grad-CAM's units are arbitrary); False keeps the values (the
            attention's gate values mean something: a uniform 0.9 is "looks everywhere", not "peaks everywhere").

    Returns:
        ``(B, S, S) float32`` in [0, 1] (bilinear, ``align_corners=False``: the map's cells cover the crop); scaled
        maps keep 0 as "no evidence"; a map that is zero everywhere stays zero.
    """
    resized = F.interpolate(maps[:, None].float(), size=(size_px, size_px), mode="bilinear", align_corners=False)
    resized = resized[:, 0].clamp(0, None if scale else 1)  # (B, S, S); bilinear keeps the range, up to rounding
    if not scale:
        return resized.cpu().numpy()
    peak = resized.amax(dim=(1, 2), keepdim=True)
    return torch.where(peak > 0, resized / peak.clamp_min(1e-12), torch.zeros_like(resized)).cpu().numpy()


def model_heatmaps(model: nn.Module, inputs: Sequence[torch.Tensor], size_px: int,
                   method: HeatmapMethod = "gradcam", native: bool = False) -> tuple[np.ndarray, ...]:
    """Heat maps of a batch on the ``size_px`` crop, and the class probabilities.

    Args:
        model: a classifier in eval mode.
        inputs: its ``forward`` inputs for a batch of B clips.
        size_px: the side S of the aligned face crop.
        method: ``gradcam`` (:func:`grad_cam` for the predicted class) or ``attention`` (:func:`action_attention`,
            MIACNet only).
        native: also return the maps on the model's own grid (before the resize).

    Returns:
        ``(heatmaps (B, S, S) float32 in [0, 1], probabilities (B, K) float32)``; Grad-CAM maps are scaled to
        their maximum, attention maps keep their values (:func:`normalise_heatmaps`). With ``native``, a third
        item: ``(B, h, w) float32 >= 0``, the maps on the grid of the model's last feature map (MIACNet's
        ``H/16``: 4 x 4 at 64 px; STSTNet 10 x 10; MMNet 14 x 14), unscaled.

    Raises:
        ValueError: an unknown ``method``, or ``attention`` for a model without it.
    """
    if method == "gradcam":
        maps, logits = grad_cam(model, inputs)
    elif method == "attention":
        maps, logits = action_attention(model, inputs)
    else:
        raise ValueError(f"heat-map method {method!r}: known {', '.join(HEATMAP_METHODS)}")
    out = (normalise_heatmaps(maps, size_px, scale=method == "gradcam"), torch.softmax(logits, dim=1).cpu().numpy())
    return (*out, maps.float().clamp_min(0).cpu().numpy()) if native else out


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a heat map, coloured with the JET map (blue = 0, red = 1), over an RGB image.

    Args:
        image: ``(S, S, 3) uint8 RGB`` (the aligned onset face).
        heatmap: ``(S, S)`` float in [0, 1].
        alpha: the heat map's weight.

    Returns:
        ``(S, S, 3) uint8 RGB``.

    Raises:
        ValueError: shapes that do not match.
    """
    if image.ndim != 3 or image.shape[2] != 3 or heatmap.shape != image.shape[:2]:
        raise ValueError(f"image (S, S, 3) and heat map (S, S) must match, got {image.shape} and {heatmap.shape}")
    colour = cv2.applyColorMap(np.clip(heatmap * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)  # BGR
    colour = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB)
    return np.clip((1 - alpha) * image.astype(np.float32) + alpha * colour, 0, 255).astype(np.uint8)
