"""MIACNet's position branch ablated on held-out clips (issue 21, item 3): donors of other subjects, exact hooks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from pipeline.config import load_params
from pipeline.data.micro import MicroTensors
from pipeline.evaluate.decoupling import donor_rows, position_ablation_predictions, position_ablation_summary
from pipeline.models.miacnet import MIACNet
from tests.conftest import shrink
from tests.test_probe import _coloured_change_samples


def test_donors_are_of_another_subject_and_repeatable():
    subjects = pd.Series(np.repeat(["a", "b", "c"], [3, 1, 2]))
    rows = np.arange(6)
    donors = donor_rows(subjects, rows, seed=4)
    assert all(subjects[d] != subjects[r] for r, d in zip(rows, donors, strict=True))
    assert np.array_equal(donors, donor_rows(subjects, rows, seed=4))
    with pytest.raises(ValueError, match="one subject"):
        donor_rows(pd.Series(["a", "a"]), np.arange(2), seed=0)


def test_ablations_change_only_the_position_branch_and_leave_the_model_as_it_was(tmp_path, raw_params):
    raw = shrink(raw_params)
    raw["model"].update(image_size_px=32, code_channels=8, action_input="difference")  # the samples hold no flow
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    torch.manual_seed(0)
    model = MIACNet(load_params(tmp_path / "params.yaml").model, 3).eval()
    samples = _coloured_change_samples(n_subjects=2, per_class=2)
    data = MicroTensors(samples, 32)
    rows = np.arange(len(samples))
    cpu = torch.device("cpu")
    with torch.no_grad():
        logits = torch.cat([model(b["onset"], b["apex"]) for b in data.batches(rows, 64, None)])
    intact = position_ablation_predictions(model, data, rows, rows, "intact", cpu)
    assert np.array_equal(intact, logits.argmax(1).numpy())
    # the clip's own onset as its donor: the same position features, the same predictions
    assert np.array_equal(position_ablation_predictions(model, data, rows, rows, "shuffled", cpu), intact)
    removed = position_ablation_predictions(model, data, rows, rows, "removed", cpu)
    with torch.no_grad():
        batch = next(data.batches(rows, 64, None))
        position_out = model.position_proj(torch.zeros_like(model.position_branch(batch["onset"])))
        motion = model.action_branch.forward_motion(batch["apex"] - batch["onset"])[0]
        expected = model.forward_head(model.fuse_act(position_out + model.action_proj(motion))).argmax(1)
    assert np.array_equal(removed, expected.numpy())
    with torch.no_grad():  # the hooks are gone
        assert torch.equal(torch.cat([model(b["onset"], b["apex"]) for b in data.batches(rows, 64, None)]), logits)
    with pytest.raises(ValueError, match="position ablation 'half'"):
        position_ablation_predictions(model, data, rows, rows, "half", cpu)


def test_the_summary_pairs_each_ablation_with_the_intact_model_by_seed():
    per_seed = pd.DataFrame([{"arm": "ma2mi", "seed": seed, "mode": mode, "accuracy": value, "uf1": value,
                              "uar": value, "n": 10}
                             for seed, values in enumerate([(0.8, 0.5, 0.4), (0.6, 0.5, 0.2)])
                             for mode, value in zip(("intact", "shuffled", "removed"), values, strict=True)])
    summary = position_ablation_summary(per_seed)["ma2mi"]
    assert summary["intact"]["uf1"] == pytest.approx(0.7)
    assert summary["shuffled_minus_intact"]["uf1"] == pytest.approx(-0.2)  # (-0.3 - 0.1) / 2
    assert summary["removed_minus_intact"]["uf1"] == pytest.approx(-0.4)
    assert len(summary["removed_minus_intact"]["uf1_ci95"]) == 2
    from pipeline.evaluate.summary import summary_markdown

    text = summary_markdown({"run": {}}, {"ground_truth": False, "note": "real data",
                                          "position_ablation": position_ablation_summary(per_seed)})
    assert "| ma2mi | 0.700 ± 0.141 | 0.500 ± 0.000 (Δ -0.200 ± 0.141 [" in text
