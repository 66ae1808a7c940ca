"""The fine-tuning augmentation: one warp per sample for onset, apex and flow; MMNet's reference geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from pipeline.data.tensors import PairAugmentation


def test_the_warp_is_torchvisions_affine_with_zero_fill():
    """Rotation about the centre, then an integer shift, nearest sampling, 0 outside: pixel for pixel what
    torchvision's affine gives (and what MMNet's RandomRotation + RandomCrop(padding) give after normalising)."""
    frames = torch.randn(6, 6, 64, 64)
    torch.manual_seed(1)
    out, _ = PairAugmentation(flip=False, rotate_deg=3.0, translate_px=4)(frames)
    torch.manual_seed(1)  # the same draws, in the same order
    angle = (torch.rand(6) * 2 - 1) * 3.0
    shift = torch.randint(-4, 5, (6, 2))
    for i in range(6):
        expected = TF.affine(frames[i], angle=float(angle[i]), translate=shift[i].tolist(), scale=1.0,
                             shear=[0.0, 0.0], fill=0.0)
        assert torch.equal(out[i], expected), i


def test_flip_mirrors_frames_and_negates_u():
    frames, flow = torch.randn(8, 6, 16, 16), torch.randn(8, 3, 16, 16)
    torch.manual_seed(0)
    out, out_flow = PairAugmentation(flip=True, rotate_deg=0.0, translate_px=0)(frames, flow)
    flipped = [i for i in range(8) if not torch.equal(out[i], frames[i])]
    assert 0 < len(flipped) < 8  # each sample flips with probability 1/2
    for i in range(8):
        mirrored = i in flipped
        assert torch.equal(out[i], frames[i].flip(-1) if mirrored else frames[i])
        source = flow[i].flip(-1) if mirrored else flow[i]
        assert torch.equal(out_flow[i, 0], -source[0] if mirrored else source[0])  # u
        assert torch.equal(out_flow[i, 1:], source[1:])  # v and the strain


def _blob(centre_xy: tuple[float, float], side: int = 80, sigma: float = 4.0) -> np.ndarray:
    y, x = np.mgrid[:side, :side].astype(np.float32)
    return np.exp(-((x - centre_xy[0]) ** 2 + (y - centre_xy[1]) ** 2) / (2 * sigma**2))


def _centroid(image: torch.Tensor) -> np.ndarray:
    weights = image.numpy().astype(np.float64)
    y, x = np.mgrid[: weights.shape[0], : weights.shape[1]]
    return np.array([(weights * x).sum(), (weights * y).sum()]) / weights.sum()


@pytest.mark.parametrize("seed", range(6))
def test_flow_turns_with_the_frames(seed):
    """A blob that moves by (u, v) = (2, -1) px from onset to apex: after the augmentation the blob moves by the
    augmented flow vector (flip and rotation applied to the vector, the shift not)."""
    frames = torch.from_numpy(np.stack([_blob((40.0, 40.0)), _blob((42.0, 39.0))]))[None]  # (1, 2, 80, 80)
    flow = torch.zeros(1, 3, 80, 80)
    flow[:, 0], flow[:, 1] = 2.0, -1.0
    torch.manual_seed(seed)
    out, out_flow = PairAugmentation(flip=True, rotate_deg=45.0, translate_px=3)(frames, flow)
    moved = _centroid(out[0, 1]) - _centroid(out[0, 0])
    vector = out_flow[0, :2, 40, 40].numpy()
    assert np.hypot(*(moved - vector)) < 0.15, (moved, vector)
    assert np.hypot(*vector) == pytest.approx(np.hypot(2.0, 1.0), rel=1e-5)  # a rotation keeps the length
