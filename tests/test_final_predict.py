"""Final models, their cards and ``ma2mi predict`` (pipeline.train.final, pipeline.serve.predict, pipeline.serve.cli)
on a rendered demo
(the session fixture ``demo`` of tests/demo_models.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pipeline.config import ConfigError
from pipeline.data.micro import MicroTensors
from pipeline.face.video import read_image
from pipeline.io import decode_png
from pipeline.serve.cli import main
from pipeline.serve.predict import load_model
from pipeline.train.final import check_final_arm, final_seed
from pipeline.train.finetune import predict as predict_rows
from tests.conftest import REPO
from tests.demo_models import LOSO, demo_fixture  # noqa: F401 (the fixture "demo")


def _clip(demo, row: int = 0) -> tuple[str, int, int]:
    sample = demo["samples"].iloc[row]
    folder = str(sample["onset_path"]).rsplit("/", 1)[0]
    return folder, int(sample["onset_frame"]), int(sample["apex_frame"])


def test_the_card_says_how_the_model_was_trained_and_how_to_apply_it(demo):
    card = json.loads((demo["final"] / "scratch.json").read_text())
    params = demo["params"]
    assert card["format"] == "ma2mi-model-card" and card["arm"] == "scratch" and card["label"] == "scratch"
    assert card["classes"] == demo["classes"] == ["negative", "positive", "surprise"]
    names = list(demo["models"]["scratch"].input_names)  # ("onset", "flow") or ("onset", "apex"): model.action_input
    assert card["input"] == {**card["input"], "names": names, "crop_size_px": 48, "model_size_px": 48}
    pre = card["preprocessing"]
    assert {k: pre[k] for k in ("detector", "box_scale", "align_margin", "image_size_px", "optical_flow")} == {
        "detector": "none", "box_scale": 1.3, "align_margin": 0.25, "image_size_px": 48, "optical_flow": "tvl1"}
    assert pre["alignment"].startswith("none: the frames are faces already")
    assert card["model"]["name"] == "miacnet" and card["model"]["params"] == params.model.model_dump(mode="json")
    assert card["model"]["parameters"] == sum(p.numel() for p in demo["models"]["scratch"].parameters())
    assert card["recipe"] == params.finetune.recipe.model_dump(mode="json")
    assert card["seed"] == final_seed(params) == params.finetune.recipe.seeds[0]
    assert card["trained_on"]["samples"] == 18 and len(card["trained_on"]["subjects"]) == 3
    assert card["trained_on"]["per_class"] == {"negative": 6, "positive": 6, "surprise": 6}
    assert card["loso"] == LOSO["scratch"] and card["run"] == LOSO["run"]
    assert [row["epoch"] for row in card["training_curve"]] == [1]
    weights = torch.load(demo["final"] / card["weights"], map_location="cpu")
    assert weights["arm"] == "scratch" and weights["seed"] == card["seed"] and weights["classes"] == card["classes"]
    baseline = json.loads((demo["final"] / "baseline.json").read_text())
    assert baseline["label"] == "ststnet" and baseline["input"]["names"] == ["flow"]
    assert baseline["input"]["flow_size_px"] == 28 and baseline["loso"] == LOSO["ststnet"]


def test_a_final_model_of_an_arm_that_is_off_is_refused(demo):
    params = demo["params"]
    check_final_arm(params, "scratch")
    check_final_arm(params, "baseline")
    off = params.model_copy(update={"finetune": params.finetune.model_copy(
        update={"baseline": params.finetune.baseline.model_copy(update={"folds": []})})})
    with pytest.raises(ConfigError, match="baseline arm is off"):
        check_final_arm(off, "baseline")
    other = params.model_copy(update={"final": params.final.model_copy(update={"baseline": ["mmnet"]})})
    with pytest.raises(ConfigError, match=r"must be \[\] or \[ststnet\]"):
        check_final_arm(other, "baseline")


@pytest.mark.parametrize("arm", ["scratch", "baseline"])
def test_predict_applies_exactly_the_training_preprocessing(demo, arm):
    """The crop predict makes from the raw frames is the one ingest_micro stored, and the probabilities are the
    ones the training data pipeline gives (for STSTNet: through the float16 flow, as stored)."""
    predictor = load_model(demo["final"] / f"{arm}.json")
    samples = demo["samples"]
    for row in range(3):
        sample = samples.iloc[row]
        result = predictor.predict(read_image(Path(sample["onset_path"])), read_image(Path(sample["apex_path"])))
        assert np.array_equal(result.aligned_onset, decode_png(sample["onset_image"]))
        model = demo["models"][arm]
        _, expected = predict_rows(model, MicroTensors(samples, model.image_size_px), np.array([row]),
                                   torch.device("cpu"))
        assert np.allclose(list(result.probabilities.values()), expected[0], atol=1e-5)
        assert result.label == demo["classes"][int(np.argmax(expected[0]))]
        assert result.heatmap.shape == (48, 48) and result.heatmap.dtype == np.float32
        assert result.heatmap.min() >= 0 and result.heatmap.max() <= 1
        assert np.allclose(result.crop_matrix.ravel(), sample["crop_matrix"])


def test_cli_predict_on_a_rendered_clip_prints_json_and_writes_the_overlay(demo, tmp_path):
    folder, onset, apex = _clip(demo)
    result = subprocess.run([sys.executable, "-m", "pipeline.serve.cli", "predict", folder, "--onset", str(onset),
                             "--apex", str(apex), "--arm", "scratch", "--models", str(demo["final"]),
                             "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert output["arm"] == "scratch" and output["label"] in demo["classes"]
    assert list(output["probabilities"]) == demo["classes"]
    assert sum(output["probabilities"].values()) == pytest.approx(1, abs=1e-4)
    assert (output["onset_frame"], output["apex_frame"]) == (onset, apex)
    with Image.open(output["heatmap_png"]) as png:
        assert png.size == (48, 48) and png.mode == "RGB"


def _run(args, capsys) -> tuple[int, str, str]:
    status = main(args)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_cli_errors_exit_2_with_one_line(demo, tmp_path, capsys):
    folder, onset, apex = _clip(demo)
    common = ["--models", str(demo["final"]), "--arm", "scratch", "--out", str(tmp_path)]
    status, out, err = _run(["predict", folder, "--onset", str(onset), "--apex", "9999", *common], capsys)
    assert status == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "apex frame 9999 is not in" in err and "its frames are" in err
    status, _, err = _run(["predict", folder, "--onset", str(onset), "--apex", str(apex), "--models",
                           str(demo["final"]), "--arm", "ma2mi"], capsys)
    assert status == 2 and "no final model for arm 'ma2mi'" in err and "baseline, scratch" in err
    not_card = tmp_path / "not_a_card.json"
    not_card.write_text(json.dumps({"hello": 1}))
    status, _, err = _run(["predict", folder, "--onset", str(onset), "--apex", str(apex), "--card", str(not_card)],
                          capsys)
    assert status == 2 and "not a model card" in err and len(err.strip().splitlines()) == 1
    status, _, err = _run(["predict", folder, "--onset-s", "0.1", "--apex-s", "0.2", *common], capsys)
    assert status == 2 and "no frame rate" in err
    status, _, err = _run(["predict", folder, "--onset", str(onset), *common], capsys)
    assert status == 2 and "both --onset and --apex" in err


def test_no_face_on_the_onset_frame_is_a_clear_error(demo, tmp_path, capsys):
    models = tmp_path / "models"
    models.mkdir()
    card = json.loads((demo["final"] / "scratch.json").read_text())
    card["preprocessing"]["detector"] = "haar"  # a model trained on detected faces
    (models / "scratch.json").write_text(json.dumps(card))
    shutil.copy(demo["final"] / "scratch.pt", models / "scratch.pt")
    blank = tmp_path / "blank"
    blank.mkdir()
    for k in (1, 2):
        Image.fromarray(np.full((96, 96, 3), 128, np.uint8)).save(blank / f"img{k}.jpg")
    status, _, err = _run(["predict", str(blank), "--onset", "1", "--apex", "2", "--models", str(models),
                           "--arm", "scratch", "--out", str(tmp_path)], capsys)
    assert status == 2 and "no face found on the onset frame (haar)" in err and len(err.strip().splitlines()) == 1


def test_cli_batch_predicts_every_row_and_reports_the_bad_ones(demo, tmp_path, capsys):
    rows = [_clip(demo, 0), _clip(demo, 4)]
    table = pd.DataFrame({"path": [rows[0][0], rows[1][0], rows[1][0]], "onset": [rows[0][1], rows[1][1], 1],
                          "apex": [rows[0][2], rows[1][2], 9999]})
    csv = tmp_path / "clips.csv"
    table.to_csv(csv, index=False)
    status, out, err = _run(["predict", "--batch", str(csv), "--models", str(demo["final"]), "--arm", "baseline",
                             "--out", str(tmp_path / "maps")], capsys)
    results = json.loads(out)
    assert status == 2 and len(results) == 3
    assert [r["line"] for r in results] == [2, 3, 4]
    assert results[0]["arm"] == "baseline" and results[1]["label"] in demo["classes"]
    assert "error" in results[2] and "line 4" in err
    assert len(list((tmp_path / "maps").glob("*.png"))) == 2


def test_the_console_script_is_declared():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["ma2mi"] == "pipeline.serve.cli:main"
