"""Tests of the baselines: MMNet (faithful to its reference: parameter count, shapes, fusion) and resnet18-diff."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # no hub access; every timm model here is built with pretrained=False

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ModelParams, load_params
from pipeline.models.miacnet import MIACNet
from pipeline.models.mmnet import MMNet
from pipeline.models.registry import MODELS, create_model
from pipeline.models.resnet_diff import ResNetDiff
from pipeline.models.ststnet import STSTNet

PARAMS_YAML = Path(__file__).resolve().parents[1] / "params.yaml"
MMNET_REFERENCE_PARAMS = 9_438_841  # trainable parameters of the reference's forward pass at K = 5 (DESIGN §5)
FLAT = 512 * 14 * 14  # MMNet's flattened fused map


@pytest.fixture(scope="module")
def default_params() -> ModelParams:
    return load_params(PARAMS_YAML).model


@pytest.fixture(scope="module")
def params_224(default_params: ModelParams) -> ModelParams:
    """The real ``model`` section at MMNet's input size."""
    return ModelParams.model_validate({**default_params.model_dump(), "image_size_px": 224})


def frame_pair(batch: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random onset and an apex that differs from it slightly: (B, 3, size, size) each."""
    gen = torch.Generator().manual_seed(seed)
    onset = torch.randn(batch, 3, size, size, generator=gen)
    apex = onset + 0.1 * torch.randn(batch, 3, size, size, generator=gen)
    return onset, apex


def n_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def assert_every_parameter_learns(model: nn.Module, loss: torch.Tensor, nonzero: bool = True) -> None:
    """Every parameter gets a gradient that exists, is finite and (with ``nonzero``) is not all zeros."""
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name}: no gradient"
        assert torch.isfinite(param.grad).all(), f"{name}: non-finite gradient"
        assert not nonzero or param.grad.abs().sum() > 0, f"{name}: gradient is all zeros"


# --- MMNet --------------------------------------------------------------------------------------------------


def test_mmnet_has_the_reference_parameter_count(params_224: ModelParams) -> None:
    model = create_model("mmnet", num_classes=5, params=params_224)
    assert n_trainable(model) == MMNET_REFERENCE_PARAMS
    # per part, from the reference's layer shapes (conv_act + CA ResNet; PC ViT without class token; fc)
    assert n_trainable(model.main_branch) == 5_220 + 2_523_664
    assert n_trainable(model.position) == 6_408_192
    assert n_trainable(model.fc) == FLAT * 5 + 5
    assert n_trainable(MMNet(num_classes=3)) == MMNET_REFERENCE_PARAMS - 2 * (FLAT + 1)


def test_mmnet_shapes() -> None:
    torch.manual_seed(0)
    model = MMNet(num_classes=5).eval()
    onset, apex = frame_pair(2, 224)
    with torch.no_grad():
        features = model.forward_features(onset, apex)
        assert features.shape == (2, model.num_features, 14, 14) == (2, 512, 14, 14)
        assert model.forward_head(features, pre_logits=True).shape == (2, model.head_hidden_size) == (2, FLAT)
        logits = model.forward_head(features)
    assert logits.shape == (2, 5) and logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_mmnet_fuses_action_of_the_difference_and_position_of_the_onset() -> None:
    torch.manual_seed(0)
    model = MMNet(num_classes=5).eval()
    onset, apex = frame_pair(1, 224)
    with torch.no_grad():
        action = model.main_branch(onset, apex)
        position = model.position(onset)
        assert action.shape == position.shape == (1, 512, 14, 14)
        torch.testing.assert_close(model.forward_features(onset, apex), action + position)
        # the main branch sees apex - onset only (that it sees it at all: conv_act gets gradients, test below);
        # the PC module sees the onset
        torch.testing.assert_close(model.main_branch(onset + 0.5, apex + 0.5), action, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(model.position(onset + 0.5), position)


def test_mmnet_every_parameter_gets_gradient() -> None:
    torch.manual_seed(0)
    model = MMNet(num_classes=5).train()
    onset, apex = frame_pair(2, 224)
    assert_every_parameter_learns(model, F.cross_entropy(model(onset, apex), torch.tensor([0, 3])))


def test_mmnet_reset_classifier() -> None:
    torch.manual_seed(0)
    model = MMNet(num_classes=5).eval()
    onset, apex = frame_pair(1, 224)
    body_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    model.reset_classifier(7)
    assert model.num_classes == 7 and model.get_classifier().out_features == 7
    with torch.no_grad():
        assert model(onset, apex).shape == (1, 7)
    for key, value in model.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(value, body_before[key]), key
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(onset, apex).shape == (1, FLAT)  # timm: K = 0 gives the pre-logits
    with pytest.raises(ValueError, match="no global pool"):
        model.reset_classifier(5, global_pool="avg")


def test_mmnet_takes_224_px_only(default_params: ModelParams) -> None:
    assert default_params.image_size_px != 224  # the pipeline default, which MMNet must refuse loudly
    with pytest.raises(ValueError, match=r"224 px frames only.*image_size_px=64"):
        create_model("mmnet", num_classes=5, params=default_params)
    model = MMNet(num_classes=5)
    with pytest.raises(ValueError, match="must be \\(B, 3, 224, 224\\), got \\(2, 3, 112, 112\\)"):
        model(*frame_pair(2, 112))
    with pytest.raises(ValueError, match="differ in shape"):
        model(torch.zeros(2, 3, 224, 224), torch.zeros(2, 3, 224, 112))
    with pytest.raises(ValueError, match="must be float"):
        frames = torch.zeros(2, 3, 224, 224, dtype=torch.uint8)
        model(frames, frames)


# --- resnet18-diff ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "side"), [(64, 2), (112, 4), (224, 7)])
def test_resnet_diff_shapes(default_params: ModelParams, size: int, side: int) -> None:
    model = create_model("resnet18-diff", num_classes=5, params=default_params).eval()
    onset, apex = frame_pair(2, size)
    with torch.no_grad():
        features = model.forward_features(onset, apex)
        assert features.shape == (2, model.num_features, side, side) == (2, 512, side, side)
        assert model.forward_head(features, pre_logits=True).shape == (2, 512)
        logits = model(onset, apex)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()


def test_resnet_diff_sees_the_difference_only(default_params: ModelParams) -> None:
    torch.manual_seed(0)
    model = ResNetDiff(default_params, num_classes=5).eval()
    onset, apex = frame_pair(2, 64)
    with torch.no_grad():
        logits = model(onset, apex)
        torch.testing.assert_close(model(onset + 0.5, apex + 0.5), logits, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(model(onset, onset), logits)


def test_resnet_diff_every_parameter_gets_gradient(default_params: ModelParams) -> None:
    """timm zero-initialises the last BN of each residual block, so at step 0 the layers before it get exact
    zero gradients; after one AdamW step every parameter's gradient is non-zero."""
    torch.manual_seed(0)
    model = ResNetDiff(default_params, num_classes=3).train()
    onset, apex = frame_pair(4, 64)
    labels = torch.tensor([0, 1, 2, 0])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    assert_every_parameter_learns(model, F.cross_entropy(model(onset, apex), labels), nonzero=False)
    assert model.backbone.layer1[0].conv1.weight.grad.abs().sum() == 0  # zero-init-last, as timm's default
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    assert_every_parameter_learns(model, F.cross_entropy(model(onset, apex), labels))


def test_resnet_diff_reset_classifier(default_params: ModelParams) -> None:
    model = ResNetDiff(default_params, num_classes=3).eval()
    model.reset_classifier(7)
    assert model.num_classes == 7 and model.get_classifier().out_features == 7
    with torch.no_grad():
        assert model(*frame_pair(2, 64)).shape == (2, 7)


def test_resnet_diff_loads_a_local_checkpoint(default_params: ModelParams, tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = ResNetDiff(default_params, num_classes=1000).backbone  # e.g. an ImageNet-shaped checkpoint
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    torch.manual_seed(2)
    model = ResNetDiff(default_params, num_classes=5, checkpoint=path)
    loaded, reference = model.backbone.state_dict(), source.state_dict()
    for key, value in loaded.items():
        if key.startswith("fc."):
            assert value.shape[0] == 5, key  # the classifier is fresh, for K = 5
        else:
            assert torch.equal(value, reference[key]), f"{key} was not loaded"


def test_resnet_diff_rejects_a_bad_checkpoint(default_params: ModelParams, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ResNetDiff(default_params, num_classes=5, checkpoint=tmp_path / "absent.pth")
    state = ResNetDiff(default_params, num_classes=5).backbone.state_dict()
    del state["conv1.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing \['conv1.weight'\]; unexpected \['extra.weight'\]"):
        ResNetDiff(default_params, num_classes=5, checkpoint=path)


# --- the registry -------------------------------------------------------------------------------------------


def test_create_model_knows_the_four_models(params_224: ModelParams) -> None:
    assert set(MODELS) == {"miacnet", "mmnet", "resnet18-diff", "ststnet"}
    for name, cls in [("miacnet", MIACNet), ("mmnet", MMNet), ("resnet18-diff", ResNetDiff), ("ststnet", STSTNet)]:
        model = create_model(name, num_classes=4, params=params_224)
        assert isinstance(model, cls) and model.num_classes == 4, name
        assert model.image_size_px == 224, name
        for method in ("forward_features", "forward_head", "reset_classifier", "get_classifier"):
            assert callable(getattr(model, method)), f"{name}.{method}"
    with pytest.raises(ValueError, match="unknown model 'mmnet2'; known models: miacnet, mmnet, resnet18-diff, "
                                         "ststnet"):
        create_model("mmnet2", num_classes=4, params=params_224)


def test_mmnet_fine_tunes_through_the_engine_at_its_input_size(params_224: ModelParams) -> None:
    """The baseline arm's path: MMNet built by name, one AdamW group, the exponential recipe, 224 px crops."""
    import numpy as np
    import pandas as pd

    from pipeline.data.loso import loso_fold
    from pipeline.data.micro import MicroTensors
    from pipeline.io import encode_png
    from pipeline.models.registry import ArmModel
    from pipeline.train.finetune import finetune_fold, predict

    finetune = load_params(PARAMS_YAML).finetune.recipe.model_copy(
        update={"epochs": 1, "batch_size": 4, "schedule": "exponential", "lr_gamma": 0.5, "decay_epochs": 1})
    rng = np.random.default_rng(0)
    images = [encode_png(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(16)]
    samples = pd.DataFrame({"subject": np.repeat(["a", "b"], 4), "label": np.tile([0, 1, 2, 0], 2),
                            "onset_image": images[:8], "apex_image": images[8:]})
    data = MicroTensors(samples, 224)  # resized to MMNet's side
    fold = loso_fold(samples["subject"], 0)
    torch.manual_seed(5)
    untrained = MMNet(3).state_dict()
    model = finetune_fold(data, fold, num_classes=3, model=ArmModel("mmnet", params_224), params=finetune, seed=5,
                          device=torch.device("cpu"), progress=False)
    assert isinstance(model, MMNet) and not model.training
    assert not torch.equal(model.state_dict()["fc.weight"], untrained["fc.weight"])
    predicted, probs = predict(model, data, fold.test_idx, torch.device("cpu"))
    assert probs.shape == (4, 3) and np.allclose(probs.sum(1), 1, atol=1e-5) and predicted.shape == (4,)
