"""The linear probe of a frozen encoder: LOSO, weights frozen, BatchNorm re-estimated on training clips only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from pipeline.config import load_params
from pipeline.data.micro import MicroTensors
from pipeline.evaluate.probe import action_codes, frozen_encoder, probe_predictions, recalibrate_batchnorm
from pipeline.io import encode_png
from tests.conftest import shrink


def _coloured_change_samples(n_subjects: int = 4, per_class: int = 4, side: int = 32) -> pd.DataFrame:
    """Clips whose class is the colour of the onset -> apex change (none, redder, bluer) on random textures:
    any encoder's action code, which sees apex - onset, carries it linearly."""
    rng = np.random.default_rng(0)
    change = {0: (0, 0, 0), 1: (40, 0, 0), 2: (0, 0, 40)}
    rows = []
    for s in range(n_subjects):
        for label, rgb in change.items():
            for _ in range(per_class):
                onset = rng.integers(60, 180, (side, side, 3), dtype=np.uint8)
                apex = (onset + np.array(rgb, np.uint8)).astype(np.uint8)
                rows.append({"subject": f"s{s}", "label": label, "onset_image": encode_png(onset),
                             "apex_image": encode_png(apex)})
    return pd.DataFrame(rows)


def test_probe_is_loso_frozen_and_recalibrates_batchnorm(tmp_path, raw_params):
    raw = shrink(raw_params)
    raw["model"].update(image_size_px=32, code_channels=8)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(tmp_path / "params.yaml").model
    samples = _coloured_change_samples()
    data = MicroTensors(samples, 32)
    model = frozen_encoder(params, 3, None, seed=0)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    both = probe_predictions(model, data, samples["subject"], ("flattened", "pooled"))
    assert list(both) == ["flattened", "pooled"]
    for predicted in both.values():
        assert predicted.shape == (len(samples),) and set(predicted) <= {0, 1, 2}
        assert (predicted == samples["label"].to_numpy()).mean() > 0.9  # a uniform colour change: decodable both ways
    rows = np.arange(5)
    assert action_codes(model, data, rows, features="pooled").shape == (5, 8)
    assert action_codes(model, data, rows).shape[1] == 8 * 2 * 2  # 32 px: a 2 x 2 code
    with pytest.raises(ValueError, match="probe features 'max'"):
        action_codes(model, data, rows, features="max")
    for key, value in model.state_dict().items():
        if key in weights:
            assert torch.equal(value, weights[key]), f"{key} changed: the encoder must stay frozen"
    norm = model.position_branch.stem.bn  # the onset textures differ by subject (the differences do not)
    rows = np.flatnonzero(samples["subject"].to_numpy() != "s0")
    recalibrate_batchnorm(model, data, rows)
    before = norm.running_mean.clone()
    recalibrate_batchnorm(model, data, np.flatnonzero(samples["subject"].to_numpy() != "s1"))
    assert not torch.equal(before, norm.running_mean)  # the statistics follow the training clips given
