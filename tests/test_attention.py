"""Heat maps of LOSO fold models on their held-out clips and their localisation scores (pipeline.evaluate.attention),
on the
rendered demo of tests/demo_models.py (its final models stand in for the fold models)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pipeline.evaluate.attention import (
    attention_metrics,
    example_rows,
    examples_figure,
    fold_maps,
    has_ground_truth,
    read_regions,
    score_clips,
)
from pipeline.io import decode_png
from pipeline.train.engine import save_checkpoint
from tests.demo_models import demo_fixture  # noqa: F401 (the fixture "demo")


@pytest.fixture(scope="module")
def fold_params(demo, tmp_path_factory):
    """Params whose finetune_dir holds a model_seed<s>.pt per arm, fold and seed, as the finetune stages write."""
    params = demo["params"]
    finetune_dir = tmp_path_factory.mktemp("finetune")
    models = {"ma2mi": demo["models"]["scratch"], "scratch": demo["models"]["scratch"],
              "baseline": demo["models"]["baseline"]}
    for arm, model in models.items():
        for fold in params.finetune.folds:
            for seed in params.finetune.recipe.seeds:
                save_checkpoint(finetune_dir / arm / f"fold{fold}" / f"model_seed{seed}.pt", model=model.state_dict())
    return params.model_copy(update={"paths": params.paths.model_copy(update={"finetune_dir": finetune_dir})})


def test_the_ground_truth_regions_are_where_the_face_moved(demo):
    """The masks mapped with each sample's crop_matrix land on the motion: |apex - onset| is larger inside."""
    samples, root = demo["samples"], demo["params"].micro.root
    assert has_ground_truth(root) and not has_ground_truth(root / "Cropped")
    regions = read_regions(samples, root, 48)
    inside_larger = 0
    for row, region in regions.items():
        assert region.shape == (48, 48) and 0 < region.mean() < 0.6
        onset, apex = decode_png(samples["onset_image"][row]), decode_png(samples["apex_image"][row])
        diff = np.abs(apex.astype(float) - onset.astype(float)).mean(axis=2)
        inside_larger += diff[region].mean() > diff[~region].mean()
    assert inside_larger >= len(regions) - 1


def test_every_fold_model_maps_its_held_out_clips_and_is_scored(demo, fold_params):
    samples, classes = demo["samples"], demo["classes"]
    regions = read_regions(samples, fold_params.micro.root, 48)
    maps = list(fold_maps(fold_params, samples, len(classes), "attention", torch.device("cpu")))
    seeds, folds = fold_params.finetune.recipe.seeds, fold_params.finetune.folds
    assert len(maps) == 3 * len(folds) * len(seeds)  # ma2mi, scratch, the STSTNet baseline
    assert {(m.label, m.method) for m in maps} == {("ma2mi", "attention"), ("scratch", "attention"),
                                                   ("ststnet", "gradcam")}  # no attention in STSTNet
    for m in maps:
        assert set(samples["subject"].iloc[m.rows]) == {sorted(samples["subject"].unique())[m.fold]}
        assert m.heatmaps.shape == (len(m.rows), 48, 48) and m.heatmaps.max() <= 1
    per_clip = pd.concat([score_clips(m, samples, regions) for m in maps], ignore_index=True)
    assert len(per_clip) == 3 * len(seeds) * len(samples)
    assert per_clip["mass_in_region"].between(0, 1).all()
    metrics = attention_metrics(per_clip, "attention", fold_params.micro.root)
    assert metrics["ground_truth"] is True and {"ma2mi", "scratch", "ststnet", "chance"} <= set(metrics)
    assert metrics["ststnet"]["seeds"] == len(seeds) and metrics["ststnet"]["clips"] == len(samples)
    assert metrics["ma2mi_minus_scratch"]["mass_in_region"] == pytest.approx(0.0)  # the same model twice
    assert metrics["chance"]["mass_in_region"] == pytest.approx(np.mean([r.mean() for r in regions.values()]))
    no_truth = attention_metrics(pd.concat([score_clips(m, samples, None) for m in maps]), "gradcam",
                                 fold_params.micro.root / "elsewhere")
    assert no_truth["ground_truth"] is False and "elsewhere has no ground_truth_au_masks/" in no_truth["note"]


def test_the_examples_figure_draws_each_class(demo, fold_params):
    samples, classes = demo["samples"], demo["classes"]
    rows = example_rows(samples, classes, 2)
    assert [samples["label"].iloc[r] for r in rows] == [0, 0, 1, 1, 2, 2]
    drawn = {}
    for m in fold_maps(fold_params, samples, len(classes), "gradcam", torch.device("cpu")):
        if m.seed == 0:
            for row, heat, probs in zip(m.rows, m.heatmaps, m.probabilities, strict=True):
                drawn.setdefault(m.label, {})[int(row)] = (heat, probs)
    figure = examples_figure(samples, classes, rows, drawn, read_regions(samples, fold_params.micro.root, 48), 48,
                             "gradcam")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=50)
    with Image.open(io.BytesIO(buffer.getvalue())) as image:
        assert image.size[0] > image.size[1] / 3  # rows of 2 + 3 panels
