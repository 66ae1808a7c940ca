"""The evaluate stage's logic (pipeline.evaluate.ablation): coverage of the LOSO folds, pooled scores, the paired
difference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from pipeline.evaluate.ablation import check_coverage, evaluate_ablation, save_figures, summary_rows

SUBJECTS = ["demo/sub01", "demo/sub02", "demo/sub03"]
CLASSES = ["negative", "positive", "surprise"]


def _predictions(seeds=(0, 1, 2), subjects=SUBJECTS, per_subject=4, accuracy_by_seed=None, seed_offset=0,
                 budget="all"):
    """Every subject's samples predicted once per seed; seed s gets the first ``accuracy_by_seed[s]`` share right."""
    rng = np.random.default_rng(seed_offset)
    rows = []
    for seed in seeds:
        for subject in subjects:
            for i in range(per_subject):
                label = int(rng.integers(0, 3))
                right = rng.random() < (accuracy_by_seed or {}).get(seed, 0.7)
                rows.append({"sample_id": f"{subject}/clip{i}/1", "subject": subject, "source_dataset": "demo",
                             "seed": seed, "label_budget": budget, "label": label, "label_name": CLASSES[label],
                             "predicted": label if right else (label + 1) % 3})
    return pd.DataFrame(rows)


def test_a_seed_missing_a_subject_is_refused():
    predictions = _predictions()
    partial = predictions[~((predictions["seed"] == 1) & (predictions["subject"] == "demo/sub02"))]
    with pytest.raises(ValueError, match=r"ma2mi, seed 1: finetune.folds \[0, 2\] do not cover each of the 3 "
                                         r"subjects exactly once \(missing: \['demo/sub02'\]\)"):
        check_coverage(partial, "ma2mi", [0, 1, 2], set(SUBJECTS), [0, 2])


def test_a_sample_predicted_twice_and_a_missing_seed_are_refused():
    predictions = _predictions()
    twice = pd.concat([predictions, predictions[(predictions["seed"] == 0)].head(1)], ignore_index=True)
    with pytest.raises(ValueError, match=r"seed 0: .* exactly once"):
        check_coverage(twice, "scratch", [0, 1, 2], set(SUBJECTS), [0, 1, 2])
    with pytest.raises(ValueError, match="scratch: no predictions for seed 3"):
        check_coverage(predictions, "scratch", [0, 1, 2, 3], set(SUBJECTS), [0, 1, 2])


def test_only_the_configured_seeds_are_kept():
    kept = check_coverage(_predictions(seeds=(0, 1, 2)), "ma2mi", [0, 2], set(SUBJECTS), [0, 1, 2])
    assert sorted(kept["seed"].unique()) == [0, 2]


def test_pooled_scores_per_seed_and_the_difference_paired_by_seed(tmp_path):
    ma2mi = _predictions(accuracy_by_seed={0: 0.9, 1: 0.8, 2: 0.7}, seed_offset=1)
    scratch = _predictions(accuracy_by_seed={0: 0.3, 1: 0.8, 2: 0.6}, seed_offset=2)
    ablation = evaluate_ablation({"ma2mi": ma2mi, "scratch": scratch}, CLASSES)
    per_seed = ablation.per_seed.set_index(["arm", "seed"])
    for arm, table in (("ma2mi", ma2mi), ("scratch", scratch)):
        for seed, part in table.groupby("seed"):
            expected = f1_score(part["label"], part["predicted"], labels=[0, 1, 2], average="macro", zero_division=0)
            assert per_seed.loc[(arm, seed), "uf1"] == pytest.approx(expected)
        assert ablation.metrics[arm]["uf1"] == pytest.approx(per_seed.loc[arm, "uf1"].mean())
        assert ablation.metrics[arm]["uf1_std"] == pytest.approx(per_seed.loc[arm, "uf1"].std(ddof=1))
        assert ablation.metrics[arm]["n"] == len(SUBJECTS) * 4
    difference = per_seed.loc["ma2mi", "accuracy"] - per_seed.loc["scratch", "accuracy"]
    assert ablation.metrics["ma2mi_minus_scratch"]["accuracy"] == pytest.approx(difference.mean())
    assert ablation.metrics["ma2mi_minus_scratch"]["accuracy_std"] == pytest.approx(difference.std(ddof=1))
    assert ablation.confusions["ma2mi"].sum() == len(ma2mi)
    assert set(ablation.per_subject["subject"]) == set(SUBJECTS)
    assert [row["arm"] for row in summary_rows(ablation.metrics)] == ["ma2mi", "scratch", "ma2mi − scratch"]
    with_extras = {"run": {"seeds": [0, 1, 2]}, **ablation.metrics,
                   "label_efficiency": {"ma2mi": {"1": ablation.metrics["ma2mi"]}}}  # as evaluate writes it
    assert [row["arm"] for row in summary_rows(with_extras)] == ["ma2mi", "scratch", "ma2mi − scratch"]

    curves = pd.DataFrame({"ma2mi": [1.0, 0.8], "scratch": [1.1, 0.9]}, index=pd.Index([1, 2], name="epoch"))
    save_figures(tmp_path, ablation, curves, CLASSES)
    for name in ("confusion.png", "ablation.png", "curves.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_ma2mi_is_paired_by_seed_with_the_baseline_of_the_best_mean_uf1(tmp_path):
    ma2mi = _predictions(accuracy_by_seed={0: 0.9, 1: 0.8, 2: 0.7}, seed_offset=1)
    scratch = _predictions(accuracy_by_seed={0: 0.3, 1: 0.8, 2: 0.6}, seed_offset=2)
    weak = _predictions(accuracy_by_seed={0: 0.4, 1: 0.4, 2: 0.4}, seed_offset=3)
    strong = _predictions(accuracy_by_seed={0: 1.0, 1: 0.9, 2: 1.0}, seed_offset=4)
    ablation = evaluate_ablation({"ma2mi": ma2mi, "scratch": scratch, "weak": weak, "strong": strong}, CLASSES,
                                 baselines=["weak", "strong"])
    per_seed = ablation.per_seed.set_index(["arm", "seed"])
    entry = ablation.metrics["ma2mi_minus_best_baseline"]
    assert entry["baseline"] == "strong"
    difference = per_seed.loc["ma2mi", "uf1"] - per_seed.loc["strong", "uf1"]
    assert entry["uf1"] == pytest.approx(difference.mean())
    assert entry["uf1_std"] == pytest.approx(difference.std(ddof=1))
    assert entry["uf1_ci95"][0] < entry["uf1"] < entry["uf1_ci95"][1]
    assert [row["arm"] for row in summary_rows(ablation.metrics)] == [
        "ma2mi", "scratch", "weak", "strong", "ma2mi − scratch", "ma2mi − strong"]
    from pipeline.evaluate.summary import summary_markdown

    assert "| ma2mi − strong (best baseline, paired by seed) |" in summary_markdown(ablation.metrics)
    assert "| strong |" in summary_markdown(ablation.metrics)
    assert "ma2mi_minus_best_baseline" not in evaluate_ablation({"ma2mi": ma2mi, "scratch": scratch}, CLASSES).metrics
    save_figures(tmp_path, ablation, pd.DataFrame({"ma2mi": [1.0]}), CLASSES)  # the differences are not bars
