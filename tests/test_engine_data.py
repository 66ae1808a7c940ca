"""The training engine's bookkeeping and the future-frame pair sampler."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from pipeline.data.macro import FuturePairSampler
from pipeline.train.engine import evaluate, train_one_epoch


def _step(model, batch):
    loss = ((model(batch["x"]) - batch["y"]) ** 2).mean()
    return loss, {"size": float(len(batch["x"]))}


def test_epoch_metrics_are_batch_size_weighted():
    model = nn.Linear(1, 1)
    batches = [{"x": torch.zeros(3, 1), "y": torch.zeros(3, 1)}, {"x": torch.zeros(1, 1), "y": torch.zeros(1, 1)}]
    means = evaluate(model, batches, _step, torch.device("cpu"))
    assert means["size"] == pytest.approx((3 * 3 + 1 * 1) / 4)


def test_training_reduces_the_loss_and_a_nan_loss_is_an_error():
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.linspace(-1, 1, 32).unsqueeze(1)
    batches = [{"x": x, "y": 3 * x + 1}]
    first = train_one_epoch(model, batches, _step, optimizer, torch.device("cpu"), progress=False)["loss"]
    for _ in range(50):
        last = train_one_epoch(model, batches, _step, optimizer, torch.device("cpu"), progress=False)["loss"]
    assert last < 0.05 * first
    with pytest.raises(FloatingPointError, match="batch 0"):
        train_one_epoch(model, [{"x": x, "y": x * float("nan")}], _step, optimizer, torch.device("cpu"),
                        progress=False)


def test_pairs_respect_the_horizon_in_seconds_and_never_cross_videos():
    index = pd.DataFrame({
        "video": ["a"] * 30 + ["b"] * 200,
        "time_s": np.r_[np.arange(30) / 30.0, np.arange(200) / 200.0],  # 30 fps and 200 fps footage
    })
    sampler = FuturePairSampler(index, (0.05, 0.2))
    source, future = sampler.sample(2000, np.random.default_rng(0))
    assert (index["video"].to_numpy()[source] == index["video"].to_numpy()[future]).all()
    gap = index["time_s"].to_numpy()[future] - index["time_s"].to_numpy()[source]
    assert gap.min() >= 0.05 - 1e-9 and gap.max() <= 0.2 + 1e-9
    assert set(index["video"].to_numpy()[source]) == {"a", "b"}
    with pytest.raises(ValueError, match="no frame has a future frame"):
        FuturePairSampler(index, (5.0, 6.0))


def test_checkpoints_of_identical_state_are_byte_identical(tmp_path):
    from pipeline.train.engine import save_checkpoint

    state = {"model": nn.Linear(2, 2).state_dict(), "epoch": 3}
    save_checkpoint(tmp_path / "a.pt", **state)
    save_checkpoint(tmp_path / "b.pt", **state)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert torch.load(tmp_path / "a.pt")["epoch"] == 3


@pytest.mark.parametrize("schedule", ["cosine", "exponential"])
def test_recipe_schedules(raw_params, tmp_path, schedule):
    """exponential: MMNet's recipe, lr * gamma**epoch for decay_epochs epochs, then held; cosine: to 0."""
    import yaml

    from pipeline.config import load_params
    from pipeline.train.finetune import lr_scheduler

    raw_params["finetune"]["recipe"].update(schedule=schedule, lr=8e-4, lr_gamma=0.987, decay_epochs=50, epochs=74)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw_params))
    params = load_params(tmp_path / "params.yaml").finetune.recipe
    optimizer = torch.optim.AdamW(nn.Linear(2, 2).parameters(), lr=params.lr)
    scheduler = lr_scheduler(optimizer, params)
    lrs = []
    for _ in range(params.epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    if schedule == "exponential":
        expected = [8e-4 * 0.987 ** min(epoch, 50) for epoch in range(74)]
        assert lrs == pytest.approx(expected, rel=1e-9)
        assert lrs[50] == lrs[73] < lrs[49]
    else:
        assert lrs[0] == pytest.approx(8e-4) and lrs[-1] < 1e-6 and all(a >= b for a, b in itertools.pairwise(lrs))
