"""Grad-CAM, MIACNet's action attention and overlays (pipeline.models.heatmap) on toy and real models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.config import load_params
from pipeline.models.heatmap import action_attention, grad_cam, model_heatmaps, normalise_heatmaps, overlay
from pipeline.models.registry import create_model


class PatchDetector(nn.Module):
    """A toy classifier whose class-1 evidence is a bright patch: a 3x3 box filter, then average pool + linear.

    Class 1's logit grows with the brightness of channel 0 anywhere; class 0 is its negative. The feature map keeps
    the input's resolution, so Grad-CAM for class 1 must peak on the patch and be zero where the input is dark.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = 1.0 / 9  # channel 0: the local brightness
            self.conv.weight[1, 0, 1, 1] = 0.0  # channel 1: nothing
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))  # (B, 2, H, W)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))  # (B, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def test_grad_cam_peaks_where_the_evidence_is():
    x = torch.zeros(2, 1, 16, 16)
    x[0, 0, 3:6, 10:13] = 1.0  # sample 0: patch centred at (row 4, col 11)
    x[1, 0, 12:15, 1:4] = 1.0  # sample 1: patch centred at (row 13, col 2)
    cam, logits = grad_cam(PatchDetector().eval(), [x])
    assert cam.shape == (2, 16, 16) and (cam >= 0).all()
    assert logits.argmax(1).tolist() == [1, 1]
    assert np.unravel_index(int(cam[0].argmax()), (16, 16)) == (4, 11)
    assert np.unravel_index(int(cam[1].argmax()), (16, 16)) == (13, 2)
    assert float(cam[0, 12:, :5].sum()) == 0.0  # nothing where the input is dark
    # for the other class the evidence is negative everywhere: the ReLU leaves nothing
    cam0, _ = grad_cam(PatchDetector().eval(), [x], target=torch.tensor([0, 0]))
    assert float(cam0.sum()) == 0.0


def test_normalised_maps_cover_the_crop_and_stay_in_unit_range():
    maps = torch.tensor([[[0.0, 1.0], [2.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]])
    out = normalise_heatmaps(maps, 8)
    assert out.shape == (2, 8, 8) and out.dtype == np.float32
    assert out[0].max() == pytest.approx(1.0) and out[0].min() >= 0.0
    row, col = np.unravel_index(int(out[0].argmax()), (8, 8))
    assert row >= 4 and col >= 4 and out[0, 7, 7] == pytest.approx(1.0)  # the bottom-right cell, as in the map
    assert not out[1].any()  # no evidence stays no evidence


@pytest.mark.parametrize("name", ["miacnet", "ststnet", "resnet18-diff"])
def test_heatmaps_of_every_small_registry_model(name):
    params = load_params("params.yaml").model.model_copy(update={"image_size_px": 32})
    torch.manual_seed(0)
    model = create_model(name, 3, params).eval()
    onset, apex = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    inputs = [torch.randn(2, 3, 28, 28)] if name == "ststnet" else [onset, apex]
    heat, probs = model_heatmaps(model, inputs, 40)
    assert heat.shape == (2, 40, 40) and heat.min() >= 0 and heat.max() <= 1
    assert probs.shape == (2, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    with torch.no_grad():  # the probabilities are the model's own
        assert np.allclose(probs, torch.softmax(model(*inputs), 1).numpy(), atol=1e-5)


def test_action_attention_is_miacnets_only():
    params = load_params("params.yaml").model.model_copy(update={"image_size_px": 32})
    model = create_model("miacnet", 3, params).eval()
    frames = [torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)]
    attention, logits = action_attention(model, frames)
    assert attention.shape == (1, 2, 2) and float(attention.min()) >= 0 and float(attention.max()) <= 1
    assert logits.shape == (1, 3)
    heat, _ = model_heatmaps(model, frames, 32, "attention")  # the gate's own values, not scaled to a peak of 1
    assert heat.shape == (1, 32, 32)
    assert heat.max() == pytest.approx(float(attention.max()), abs=1e-6)
    assert heat.min() == pytest.approx(float(attention.min()), abs=1e-6)
    with pytest.raises(ValueError, match="no action attention"):
        action_attention(create_model("ststnet", 3, params), [torch.randn(1, 3, 28, 28)])
    with pytest.raises(ValueError, match="heat-map method"):
        model_heatmaps(model, frames, 32, "lime")


def test_overlay_blends_and_checks_shapes():
    image = np.full((8, 8, 3), 100, np.uint8)
    heat = np.zeros((8, 8), np.float32)
    heat[2, 3] = 1.0
    out = overlay(image, heat)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert out[2, 3, 0] > out[0, 0, 0]  # red where the heat is (JET's 1.0), blue elsewhere
    with pytest.raises(ValueError, match="must match"):
        overlay(image, np.zeros((4, 4)))
