"""After the shrunk ``dvc repro`` (the session's ``shrunk_project``): the final models and their cards, the attention
stage's localisation metrics, the HTML report and the summary; ``ma2mi predict`` with the project's final model;
which stages an edit of their params makes stale."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from tests.test_pipeline_repro import _stale_after_edit
from tests.test_report import assert_self_contained


def _run(args: list[str], cwd: Path, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_final_models_have_cards_with_their_loso_metrics(shrunk_project):
    work, _ = shrunk_project
    metrics = json.loads((work / "results" / "evaluate" / "metrics.json").read_text())
    for arm, label in (("ma2mi", "ma2mi"), ("scratch", "scratch"), ("baseline", "ststnet")):  # final.baseline
        card = json.loads((work / "models" / "final" / f"{arm}.json").read_text())
        assert card["format"] == "ma2mi-model-card" and card["arm"] == arm and card["label"] == label
        assert card["loso"] == metrics[label] and card["run"] == metrics["run"]
        assert card["trained_on"]["samples"] == 18 and len(card["trained_on"]["subjects"]) == 3
        assert card["seed"] == 0 and card["recipe"]["epochs"] == 2 and len(card["training_curve"]) == 2
        assert card["preprocessing"]["image_size_px"] == 48 and card["input"]["model_size_px"] == 48
        assert (work / "models" / "final" / card["weights"]).is_file()


@pytest.mark.slow
def test_attention_scores_every_held_out_clip_and_dvc_shows_them(shrunk_project):
    work, env = shrunk_project
    attention = json.loads((work / "results" / "attention" / "metrics.json").read_text())
    assert attention["ground_truth"] is True and attention["method"] == "gradcam"
    chance = attention["chance"]["mass_in_region"]
    assert 0 < chance < 1 and attention["chance"]["clips"] == 18
    for arm in ("ma2mi", "scratch", "ststnet"):
        assert 0 <= attention[arm]["mass_in_region"] <= 1 and 0 <= attention[arm]["pointing_hit_rate"] <= 1
        assert attention[arm]["seeds"] == 2 and attention[arm]["clips"] == 18
    assert "mass_in_region" in attention["ma2mi_minus_scratch"]
    per_clip = pd.read_csv(work / "results" / "attention" / "per_clip.csv")
    assert len(per_clip) == 3 * 2 * 18 and set(per_clip["fold"]) == {0, 1, 2}  # arms x seeds x clips
    with Image.open(work / "results" / "attention" / "examples.png") as image:
        image.verify()
    shown = _run(["dvc", "metrics", "show"], work, env).stdout
    assert "mass_in_region" in shown and "pointing_hit_rate" in shown


@pytest.mark.slow
def test_the_report_opens_offline_and_the_summary_lists_the_arms(shrunk_project):
    work, env = shrunk_project
    page = (work / "results" / "report.html").read_text(encoding="utf-8")
    assert assert_self_contained(page) >= 5  # ablation, confusion, curves, heat maps, pre-training examples
    assert "future-frame predictions on held-out videos" in page and "holds no decoder" not in page
    for text in ("MA2MI − scratch (paired by seed)", "pointing game", "Final models", "demo/sub01"):
        assert text in page, text
    summary = (work / "results" / "summary.md").read_text()
    assert "| ma2mi |" in summary and "| scratch |" in summary and "mass in region" in summary
    printed = _run([sys.executable, "-m", "pipeline.evaluate.summary"], work, env).stdout
    assert printed.startswith(summary) and "report.html" in printed


@pytest.mark.slow
def test_predict_with_the_projects_final_model_on_a_demo_clip(shrunk_project, tmp_path):
    work, env = shrunk_project
    truth = pd.read_csv(work / "data" / "demo" / "micro" / "ground_truth.csv").iloc[0]
    folder = work / "data" / "demo" / "micro" / "Cropped" / truth["subject"] / truth["clip"]
    result = _run([sys.executable, "-m", "pipeline.serve.cli", "predict", str(folder), "--onset",
                   str(truth["onset_frame"]),
                   "--apex", str(truth["apex_frame"]), "--out", str(tmp_path)], work, env)
    output = json.loads(result.stdout)
    assert output["arm"] == "ma2mi" and output["label"] in ("negative", "positive", "surprise")
    assert Path(output["heatmap_png"]).is_file()


@pytest.mark.slow
def test_each_deliverable_stage_reads_only_its_own_params(shrunk_project):
    work, env = shrunk_project
    assert _stale_after_edit(work, env, lambda raw: raw["report"].update(pretrain_examples=2)) == {"report"}
    assert _stale_after_edit(work, env, lambda raw: raw["attention"].update(examples_per_class=1)) == {"attention"}
    assert _stale_after_edit(work, env, lambda raw: raw["final"].update(dir="models/other")) == {
        "final_ma2mi", "final_scratch", "final_baseline@ststnet", "report"}
    assert _stale_after_edit(work, env, lambda raw: raw["final"].update(cache_dir=".cache/elsewhere")) == set()
