"""Tests of pipeline.models: shapes, gradients, encoder transfer, loss yardsticks, learnability."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # no hub access; every timm layer here is built without weights

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ModelParams, Params, load_params
from pipeline.models.branches import ENCODER_PREFIXES
from pipeline.models.layers import CABlock, pool_attention
from pipeline.models.ma2mi import MA2MI
from pipeline.models.miacnet import MIACNet
from pipeline.models.registry import MODELS, create_model
from tests.conftest import shrink

PARAMS_YAML = Path(__file__).resolve().parents[1] / "params.yaml"
SIZES = [64, 112, 128, 224]


@pytest.fixture(scope="module")
def default_params() -> ModelParams:
    return load_params(PARAMS_YAML).model


@pytest.fixture(scope="module")
def tiny_params(default_params: ModelParams) -> ModelParams:
    """The real ``model`` section, shrunk to tiny widths (validated like params.yaml)."""
    shrunk = {
        "stem_channels": 8,
        "action_channels": [8, 8, 16],
        "position_channels": [8, 8, 16],
        "code_channels": 4,
        "dropout": 0.0,
    }
    return ModelParams.model_validate({**default_params.model_dump(), **shrunk})


def frame_pair(batch: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random onset and an apex that differs from it slightly: (B, 3, size, size) each."""
    gen = torch.Generator().manual_seed(seed)
    onset = torch.randn(batch, 3, size, size, generator=gen)
    apex = onset + 0.1 * torch.randn(batch, 3, size, size, generator=gen)
    return onset, apex


def blob_pair(batch: int, size: int, shift_px: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs at random places (source) and the same blobs shifted right by ``shift_px`` (future)."""
    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    centres = size * (0.25 + 0.5 * torch.rand(batch, 2, generator=gen))  # (B, 2) as (y, x)

    def render(dx: float) -> torch.Tensor:
        cy, cx = centres[:, 0, None, None], centres[:, 1, None, None] + dx  # (B, 1, 1)
        blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 8) ** 2))  # (B, size, size)
        return 2 * blob[:, None].expand(batch, 3, size, size) - 1  # (B, 3, size, size)

    return render(0.0), render(shift_px)


# --- the CA block -------------------------------------------------------------------------------------------


def test_ca_block_attention_shapes_and_range() -> None:
    torch.manual_seed(0)
    first, second = CABlock(4, 8, stride=2), CABlock(8, 8, stride=1)
    x = torch.randn(2, 4, 15, 15)
    out1, attn1 = first(x)
    out2, attn2 = second(out1, attn1)
    assert out1.shape == (2, 8, 8, 8) and attn1.shape == (2, 1, 8, 8)
    assert out2.shape == (2, 8, 8, 8) and attn2.shape == (2, 1, 8, 8)
    for attn in (attn1, attn2):
        assert attn.min() >= 0 and attn.max() <= 1


def test_ca_block_multiplies_previous_attention() -> None:
    torch.manual_seed(0)
    block = CABlock(4, 4, stride=2)
    x = torch.randn(2, 4, 8, 8)
    _, attn_alone = block(x)
    out, attn = block(x, torch.zeros(2, 1, 8, 8))  # a previous map of zeros switches everything off
    assert torch.count_nonzero(out) == 0 and torch.count_nonzero(attn) == 0
    _, attn_ones = block(x, torch.ones(2, 1, 8, 8))  # a previous map of ones changes nothing
    torch.testing.assert_close(attn_ones, attn_alone)


def test_pool_attention_matches_mmnet_maxpool() -> None:
    attn = torch.rand(2, 1, 14, 14)
    torch.testing.assert_close(pool_attention(attn, 2), nn.MaxPool2d(3, 2, 1)(attn))
    assert pool_attention(attn, 1) is attn


def test_ca_block_rejects_misshaped_attention() -> None:
    with pytest.raises(ValueError, match="attn_prev"):
        CABlock(4, 4, stride=2)(torch.randn(2, 4, 8, 8), torch.rand(2, 1, 4, 4))


# --- shapes and the timm contract ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_miacnet_shapes(tiny_params: ModelParams, size: int) -> None:
    model = MIACNet(tiny_params, num_classes=5).eval()
    onset, apex = frame_pair(2, size)
    features = model.forward_features(onset, apex)
    assert features.shape == (2, model.num_features, size // 16, size // 16)
    assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)
    assert model(onset, apex).shape == (2, 5)


def test_miacnet_default_params(default_params: ModelParams) -> None:
    model = MIACNet(default_params, num_classes=3).eval()
    size = default_params.image_size_px
    onset, apex = frame_pair(2, size)
    side = size // 16  # total stride 16
    assert model.forward_features(onset, apex).shape == (2, default_params.position_channels[-1], side, side)
    logits = model(onset, apex)
    assert logits.shape == (2, 3) and logits.dtype == torch.float32 and torch.isfinite(logits).all()


@pytest.mark.parametrize("size", [*SIZES, 97])
def test_ma2mi_prediction_has_input_shape(tiny_params: ModelParams, size: int) -> None:
    source, future = frame_pair(2, size)
    assert MA2MI(tiny_params).eval()(source, future).shape == source.shape


@pytest.mark.parametrize(
    ("onset_shape", "apex_shape", "message"),
    [
        ((2, 1, 64, 64), (2, 1, 64, 64), "must be \\(B, 3, H, W\\)"),
        ((2, 3, 64, 64), (2, 3, 64, 48), "differ in shape"),
        ((3, 64, 64), (3, 64, 64), "must be \\(B, 3, H, W\\)"),
        ((2, 3, 8, 8), (2, 3, 8, 8), "at least 16x16"),
    ],
)
def test_bad_frames_are_rejected(tiny_params: ModelParams, onset_shape, apex_shape, message) -> None:
    for model in (MIACNet(tiny_params, 3), MA2MI(tiny_params)):
        with pytest.raises(ValueError, match=message):
            model(torch.zeros(onset_shape), torch.zeros(apex_shape))


def test_integer_frames_are_rejected(tiny_params: ModelParams) -> None:
    frames = torch.zeros(2, 3, 64, 64, dtype=torch.uint8)
    with pytest.raises(ValueError, match="must be float"):
        MIACNet(tiny_params, 3)(frames, frames)


def test_reset_classifier_changes_k(tiny_params: ModelParams) -> None:
    model = MIACNet(tiny_params, num_classes=3).eval()
    onset, apex = frame_pair(2, 64)
    encoder_before = model.encoder_state_dict()
    model.reset_classifier(7)
    assert model.num_classes == 7 and model(onset, apex).shape == (2, 7)
    assert model.get_classifier().out_features == 7
    for key, value in model.encoder_state_dict().items():
        assert torch.equal(value, encoder_before[key]), key


def test_create_model(tiny_params: ModelParams) -> None:
    model = create_model("miacnet", num_classes=4, params=tiny_params)
    assert isinstance(model, MIACNet) and model.num_classes == 4
    with pytest.raises(ValueError, match="known models: miacnet"):
        create_model("no-such-model", num_classes=4, params=tiny_params)
    with pytest.raises(ValueError, match="num_classes"):
        create_model("miacnet", num_classes=0, params=tiny_params)
    assert set(MODELS) == {"miacnet", "mmnet", "resnet18-diff", "ststnet"}


def test_too_few_stages_is_an_error(tiny_params: ModelParams) -> None:
    shallow = ModelParams.model_validate({**tiny_params.model_dump(), "action_channels": [8, 8]})
    with pytest.raises(ValueError, match="at least 3 stages"):
        MIACNet(shallow, 3)


@pytest.mark.parametrize("batch", [1, 3])
def test_shrunk_pipeline_config_trains(raw_params: dict, batch: int) -> None:
    """The conftest's shrunk params (what the pipeline smoke tests run) build and train, odd batches included."""
    params = Params.model_validate(shrink(raw_params)).model
    onset, apex = frame_pair(batch, params.image_size_px)
    model, pretrain = MIACNet(params, num_classes=3).train(), MA2MI(params).train()
    F.cross_entropy(model(onset, apex), torch.arange(batch) % 3).backward()
    pretrain.losses(onset, apex)["recon_loss"].backward()
    model.load_encoder_state_dict(pretrain.encoder_state_dict())


# --- gradients ----------------------------------------------------------------------------------------------


def assert_every_parameter_learns(model: nn.Module, loss: torch.Tensor) -> None:
    """Every parameter gets a gradient that exists, is finite and is not all zeros."""
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name}: no gradient"
        assert torch.isfinite(param.grad).all(), f"{name}: non-finite gradient"
        assert param.grad.abs().sum() > 0, f"{name}: gradient is all zeros"


@pytest.mark.parametrize("which", ["tiny", "default"])
def test_miacnet_every_parameter_gets_gradient(request, which: str) -> None:
    torch.manual_seed(0)
    model = MIACNet(request.getfixturevalue(f"{which}_params"), num_classes=3).train()
    onset, apex = frame_pair(4, 64)
    loss = F.cross_entropy(model(onset, apex), torch.tensor([0, 1, 2, 0]))
    assert_every_parameter_learns(model, loss)


@pytest.mark.parametrize("which", ["tiny", "default"])
def test_ma2mi_every_parameter_gets_gradient(request, which: str) -> None:
    torch.manual_seed(0)
    model = MA2MI(request.getfixturevalue(f"{which}_params")).train()
    source, future = frame_pair(4, 64)
    losses = model.losses(source, future)
    assert losses["copy_loss"].requires_grad is False
    assert_every_parameter_learns(model, losses["recon_loss"])


# --- encoder transfer ---------------------------------------------------------------------------------------


def test_encoder_keys_match_between_ma2mi_and_miacnet(tiny_params: ModelParams) -> None:
    net_keys = set(MIACNet(tiny_params, 3).encoder_state_dict())
    pre_keys = set(MA2MI(tiny_params).encoder_state_dict())
    assert net_keys == pre_keys
    assert net_keys and all(key.startswith(ENCODER_PREFIXES) for key in net_keys)
    assert any(key.startswith("action_branch.bottleneck") for key in net_keys)
    assert any(key.endswith("running_mean") for key in net_keys)  # BN buffers travel too


def test_loading_ma2mi_encoder_moves_branches_and_keeps_head(tiny_params: ModelParams) -> None:
    torch.manual_seed(1)
    pretrained = MA2MI(tiny_params)
    torch.manual_seed(2)
    model = MIACNet(tiny_params, num_classes=3)
    source_state = pretrained.encoder_state_dict()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert any(not torch.equal(before[k], v) for k, v in source_state.items() if v.is_floating_point())

    model.load_encoder_state_dict(source_state)

    after = model.state_dict()
    for key, value in source_state.items():
        assert torch.equal(after[key], value), f"{key} was not loaded"
    head_keys = [key for key in after if not key.startswith(ENCODER_PREFIXES)]
    assert head_keys and any(key.startswith("head.fc") for key in head_keys)
    for key in head_keys:
        assert torch.equal(after[key], before[key]), f"head entry {key} changed"
    onset, apex = frame_pair(2, 64)
    model.eval(), pretrained.eval()
    torch.testing.assert_close(model.action_branch(onset, apex), pretrained.action_branch(onset, apex))


def test_encoder_state_dict_is_a_copy(tiny_params: ModelParams) -> None:
    model = MIACNet(tiny_params, 3)
    state = model.encoder_state_dict()
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key].add_(1.0)
    assert not torch.equal(model.state_dict()[key], state[key])


def test_head_parameters_are_the_non_encoder_part(tiny_params: ModelParams) -> None:
    model = MIACNet(tiny_params, 3)
    head = {id(p) for p in model.head_parameters()}
    encoder = {id(p) for n, p in model.named_parameters() if n.startswith(ENCODER_PREFIXES)}
    assert head and encoder and not head & encoder
    assert head | encoder == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("problem", ["missing", "unexpected", "shape"])
def test_loading_mismatched_encoder_state_fails(tiny_params: ModelParams, problem: str) -> None:
    model = MIACNet(tiny_params, 3)
    state = MA2MI(tiny_params).encoder_state_dict()
    if problem == "missing":
        del state["action_branch.bottleneck.conv.weight"]
        match = "missing \\['action_branch.bottleneck.conv.weight'\\]"
    elif problem == "unexpected":
        state["decoder.start.conv.weight"] = torch.zeros(1)
        match = "unexpected \\['decoder.start.conv.weight'\\]"
    else:
        wider = ModelParams.model_validate({**tiny_params.model_dump(), "code_channels": 6})
        state = MA2MI(wider).encoder_state_dict()
        match = "shape mismatch \\[.*action_branch.bottleneck"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        model.load_encoder_state_dict(state)
    for key, value in model.state_dict().items():  # a failed load changes nothing
        assert torch.equal(value, before[key]), key


# --- learning -----------------------------------------------------------------------------------------------


def test_ma2mi_reconstruction_beats_copy_baseline(tiny_params: ModelParams) -> None:
    torch.manual_seed(0)
    model = MA2MI(tiny_params)
    source, future = blob_pair(batch=8, size=32, shift_px=3.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    with torch.no_grad():
        first = model.eval().losses(source, future)
    assert 0.9 < first["recon_loss"] / first["copy_loss"] < 1.1  # starts near the copy baseline
    model.train()
    for _ in range(40):
        optimizer.zero_grad()
        model.losses(source, future)["recon_loss"].backward()
        optimizer.step()
    with torch.no_grad():
        last = model.eval().losses(source, future)
    torch.testing.assert_close(last["copy_loss"], first["copy_loss"])
    assert last["recon_loss"] / last["copy_loss"] < 0.5  # observed 0.09-0.15 over seeds


def test_miacnet_overfits_a_tiny_batch(tiny_params: ModelParams) -> None:
    torch.manual_seed(0)
    model = MIACNet(tiny_params, num_classes=3).train()
    onset, apex = frame_pair(9, 32, seed=1)
    labels = torch.arange(9) % 3
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(onset, apex), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]  # observed < 0.003 of the first
    with torch.no_grad():
        assert torch.equal(model.eval()(onset, apex).argmax(dim=1), labels)
