"""Tests of the STSTNet baseline: faithful to the reference (parameter count, state-dict layout, forward pass),
timm's model contract, gradients, and input checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ModelParams, load_params
from pipeline.face.optical_flow import flow_features
from pipeline.models.ststnet import STSTNet, ststnet_from_params

PARAMS_YAML = Path(__file__).resolve().parents[1] / "params.yaml"

# Trainable parameters of the reference (christy1206/STSTNet main.py) at K = 3, from its layer shapes:
#   conv1 Conv2d(3 -> 3, 3x3):  3·3·3·3 + 3 =   84
#   conv2 Conv2d(3 -> 5, 3x3):  5·3·3·3 + 5 =  140
#   conv3 Conv2d(3 -> 8, 3x3):  8·3·3·3 + 8 =  224
#   bn1, bn2, bn3 (weight + bias):  2·(3 + 5 + 8) =   32
#   fc Linear(5·5·16 = 400 -> 3):  400·3 + 3 = 1203
#                                       total = 1683   (the paper's Table V: "0.00167 M")
REFERENCE_PARAMS_K3 = 84 + 140 + 224 + 32 + 1203
assert REFERENCE_PARAMS_K3 == 1683

# The state dict of the reference's released checkpoints (STSTNet_Weights/006.pth): name -> shape.
REFERENCE_STATE = {
    "conv1.weight": (3, 3, 3, 3), "conv1.bias": (3,),
    "conv2.weight": (5, 3, 3, 3), "conv2.bias": (5,),
    "conv3.weight": (8, 3, 3, 3), "conv3.bias": (8,),
    **{f"bn{i}.{name}": (c,) for i, c in ((1, 3), (2, 5), (3, 8))
       for name in ("weight", "bias", "running_mean", "running_var")},
    **{f"bn{i}.num_batches_tracked": () for i in (1, 2, 3)},
    "fc.weight": (3, 400), "fc.bias": (3,),
}


def n_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def random_flow(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 28, 28, generator=torch.Generator().manual_seed(seed))


def reference_forward_eval(model: STSTNet, x: torch.Tensor) -> torch.Tensor:
    """The reference's forward pass in eval mode, restated with torch.nn.functional from its layer definitions:
    per stream conv (padding 2) -> ReLU -> BN (running stats) -> max-pool 3/3 padding 1 (-> dropout, identity in
    eval); concatenation 3, 5, 8; average pool 2/2; flatten; linear."""
    streams = []
    for conv, bn in ((model.conv1, model.bn1), (model.conv2, model.bn2), (model.conv3, model.bn3)):
        y = F.relu(F.conv2d(x, conv.weight, conv.bias, stride=1, padding=2))
        y = F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=1e-5)
        streams.append(F.max_pool2d(y, kernel_size=3, stride=3, padding=1))
    y = F.avg_pool2d(torch.cat(streams, 1), kernel_size=2, stride=2)
    return F.linear(y.reshape(len(x), -1), model.fc.weight, model.fc.bias)


def test_ststnet_has_the_reference_parameter_count() -> None:
    assert n_trainable(STSTNet(num_classes=3)) == REFERENCE_PARAMS_K3 == 1683
    assert n_trainable(STSTNet(num_classes=5)) == 1683 + 2 * 401  # two more output units


def test_ststnet_state_dict_matches_the_reference_checkpoints() -> None:
    state = STSTNet(num_classes=3).state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == REFERENCE_STATE
    model = STSTNet(num_classes=3)
    model.load_state_dict({k: torch.randn(s) if s else torch.tensor(0) for k, s in REFERENCE_STATE.items()})


def test_ststnet_forward_is_the_reference_forward() -> None:
    torch.manual_seed(0)
    model = STSTNet(num_classes=3)
    with torch.no_grad():  # non-trivial BN statistics, so that the BN placement matters
        for bn in (model.bn1, model.bn2, model.bn3):
            bn.running_mean.uniform_(0.0, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    model.eval()
    x = random_flow(4)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_forward_eval(model, x))
        features = model.forward_features(x)
        assert features.shape == (4, model.num_features, 10, 10) == (4, 16, 10, 10)
        assert model.forward_head(features, pre_logits=True).shape == (4, model.head_hidden_size) == (4, 400)


@pytest.mark.parametrize(("batch", "classes"), [(1, 3), (4, 3), (4, 5)])
def test_ststnet_output_shape(batch: int, classes: int) -> None:
    model = STSTNet(num_classes=classes)
    for mode in (model.train(), model.eval()):
        logits = mode(random_flow(batch))
        assert logits.shape == (batch, classes) and logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_ststnet_every_parameter_gets_a_gradient() -> None:
    torch.manual_seed(0)
    model = STSTNet(num_classes=3).train()
    loss = F.cross_entropy(model(random_flow(4)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name}: no gradient"
        assert torch.isfinite(param.grad).all(), f"{name}: non-finite gradient"
        assert param.grad.abs().sum() > 0, f"{name}: all-zero gradient"


def test_ststnet_dropout_is_the_reference_rate_and_only_in_training() -> None:
    model = STSTNet(num_classes=3)
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.5]
    x = random_flow(2)
    torch.manual_seed(1)
    first = model.train()(x)
    assert not torch.equal(first, model(x))  # a fresh dropout mask
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize(
    ("flow", "match"),
    [
        (torch.zeros(4, 3, 32, 32), r"must be \(B, 3, 28, 28\).*got \(4, 3, 32, 32\)"),
        (torch.zeros(4, 2, 28, 28), r"got \(4, 2, 28, 28\)"),
        (torch.zeros(3, 28, 28), r"got \(3, 28, 28\)"),
        (torch.zeros(4, 28, 28, 3), r"got \(4, 28, 28, 3\)"),  # channels-last numpy layout
        (torch.zeros(4, 3, 28, 28, dtype=torch.uint8), "must be float"),
        (torch.zeros(0, 3, 28, 28), "empty batch"),
        (np.zeros((4, 3, 28, 28), np.float32), "got ndarray"),
    ],
)
def test_ststnet_rejects_bad_input(flow, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        STSTNet(num_classes=3)(flow)


def test_ststnet_rejects_bad_construction() -> None:
    with pytest.raises(ValueError, match="num_classes must be >= 0"):
        STSTNet(num_classes=-1)
    with pytest.raises(ValueError, match="image_size_px"):
        STSTNet(num_classes=3, image_size_px=1)


def test_ststnet_reset_classifier() -> None:
    torch.manual_seed(0)
    model = STSTNet(num_classes=3).eval()
    x = random_flow(2)
    body_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    model.reset_classifier(7)
    assert model.num_classes == 7 and model.get_classifier().out_features == 7
    with torch.no_grad():
        assert model(x).shape == (2, 7)
    for key, value in model.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(value, body_before[key]), key
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (2, 400)  # timm: K = 0 gives the pre-logits
    with pytest.raises(ValueError, match="no global pool"):
        model.reset_classifier(3, global_pool="avg")
    with pytest.raises(ValueError, match="num_classes must be >= 0"):
        model.reset_classifier(-2)


def test_ststnet_from_params_reads_only_the_crop_size() -> None:
    params = load_params(PARAMS_YAML).model
    model = ststnet_from_params(params, num_classes=3)
    assert isinstance(model, STSTNet) and model.num_classes == 3
    assert model.image_size_px == params.image_size_px and model.input_names == ("flow",)
    assert model.flow_size_px == 28
    other = ModelParams.model_validate({**params.model_dump(), "dropout": 0.1, "image_size_px": 64})
    model = ststnet_from_params(other, num_classes=3)
    assert model.image_size_px == 64 and model.dropout.p == 0.5  # the reference's rate wins
    assert n_trainable(model) == 1683


def test_ststnet_on_flow_features() -> None:
    """The intended data path: two aligned crops -> pipeline.face.optical_flow.flow_features -> a batch -> logits."""
    rng = np.random.default_rng(0)
    onset = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    apex = np.roll(onset, 1, axis=0)
    batch = torch.from_numpy(np.stack([flow_features(onset, apex), flow_features(onset, onset.copy())]))
    model = STSTNet(num_classes=3).eval()
    with torch.no_grad():
        logits = model(batch)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
