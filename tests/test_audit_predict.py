"""Issue 19's audit of ``ma2mi predict`` (case 7): every case a test, on the session fixture ``demo``
(tests/demo_models.py) except the static checks of the ``torch.load`` calls and of the torch floor."""

from __future__ import annotations

import ast
import errno
import json
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version
from PIL import Image

from pipeline.serve.cli import main
from tests.conftest import REPO
from tests.demo_models import demo_fixture  # noqa: F401 (the fixture "demo")


def _clip(demo, row: int = 0) -> tuple[str, int, int]:
    sample = demo["samples"].iloc[row]
    folder = str(sample["onset_path"]).rsplit("/", 1)[0]
    return folder, int(sample["onset_frame"]), int(sample["apex_frame"])


def _run(args, capsys) -> tuple[int, str, str]:
    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ma2mi predict: error: "), err
    return lines[0]


def _copy_model(demo, tmp_path: Path, arm: str = "scratch") -> tuple[Path, dict]:
    """A private copy of ``arm``'s card and weights, to tamper with; ``(models folder, card)``."""
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    shutil.copy(demo["final"] / f"{arm}.pt", models / f"{arm}.pt")
    card = json.loads((demo["final"] / f"{arm}.json").read_text())
    (models / f"{arm}.json").write_text(json.dumps(card))
    return models, card


def _predict_args(demo, models: Path, tmp_path: Path, arm: str = "scratch") -> list:
    folder, onset, apex = _clip(demo)
    return ["predict", folder, "--onset", onset, "--apex", apex, "--models", models, "--arm", arm,
            "--out", tmp_path / "out"]


# 1. classes reordered in the card


def test_a_card_whose_classes_differ_from_the_weights_is_refused(demo, tmp_path, capsys):
    models, card = _copy_model(demo, tmp_path)
    card["classes"] = card["classes"][::-1]  # same names, other order: every label would be swapped
    (models / "scratch.json").write_text(json.dumps(card))
    status, out, err = _run(_predict_args(demo, models, tmp_path), capsys)
    line = _one_error_line(err)
    assert status == 2 and out == ""
    assert str(models / "scratch.json") in line and str(models / "scratch.pt") in line and "classes" in line
    assert not (tmp_path / "out").exists()


# 2. a crafted .pt runs no code; every torch.load of a file from elsewhere says weights_only=True


class _Payload:
    """Unpickling it calls ``Path.touch(target)``: what a crafted checkpoint could do with a shell command."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return Path.touch, (self.target,)


def test_a_crafted_checkpoint_is_refused_without_running_its_code(demo, tmp_path, capsys, monkeypatch):
    """With torch < 2.6's default (weights_only=False, simulated here) the payload ran; the explicit
    weights_only=True refuses it with the one-line error."""
    models, _ = _copy_model(demo, tmp_path)
    target = tmp_path / "pwned"
    state = torch.load(models / "scratch.pt", map_location="cpu", weights_only=True)
    torch.save({**state, "payload": _Payload(target)}, models / "scratch.pt")
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: real_load(*a, **{"weights_only": False, **k}))
    status, out, err = _run(_predict_args(demo, models, tmp_path), capsys)
    assert not target.exists(), "unpickling the checkpoint ran its code"
    line = _one_error_line(err)
    assert status == 2 and out == "" and str(models / "scratch.pt") in line and "refused" in line


LOCAL_STATE_LOADS = {("pipeline/train/engine.py", "_resume_state")}  # this process's own resume state (pickled RNG)


def _torch_loads() -> list[tuple[str, str, ast.Call]]:
    found = []
    for path in sorted([*(REPO / "pipeline").rglob("*.py"), *(REPO / "stages").rglob("*.py")]):
        tree = ast.parse(path.read_text())
        for function in [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)]:
            for call in ast.walk(function):
                if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "load"
                        and isinstance(call.func.value, ast.Name) and call.func.value.id == "torch"):
                    found.append((str(path.relative_to(REPO)), function.name, call))
    return found


def test_every_torch_load_says_weights_only_true_except_the_local_resume_state():
    loads = _torch_loads()
    assert len(loads) >= 9  # predict, final/fold/encoder checkpoints, attention, probe, pretrain examples, ...
    for where, function, call in loads:
        value = {kw.arg: kw.value for kw in call.keywords}.get("weights_only")
        expected = (where, function) not in LOCAL_STATE_LOADS
        assert isinstance(value, ast.Constant) and value.value is expected, \
            f"{where}:{call.lineno} ({function}): torch.load must pass weights_only={expected}"


def test_the_torch_floor_is_the_first_version_whose_load_default_is_safe():
    deps = {Requirement(d).name: Requirement(d) for d in
            tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
    for name, floor in (("torch", "2.6"), ("torchvision", "0.21")):
        major, minor = Version(floor).release[:2]
        assert not deps[name].specifier.contains(f"{major}.{minor - 1}.99"), f"{name}: {deps[name].specifier}"
        assert deps[name].specifier.contains(floor), name


# 3. corrupt weights, a card missing a key, an unknown model name, a bad --batch cell


@pytest.mark.parametrize("damage", ["truncated", "garbage", "not a dict"])
def test_a_corrupt_checkpoint_is_a_one_line_error(demo, tmp_path, capsys, damage):
    models, _ = _copy_model(demo, tmp_path)
    weights = models / "scratch.pt"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "garbage":
        weights.write_bytes(b"\x00not a checkpoint" * 10)
    else:
        torch.save([1, 2, 3], weights)
    status, out, err = _run(_predict_args(demo, models, tmp_path), capsys)
    line = _one_error_line(err)
    assert status == 2 and out == "" and str(weights) in line and "refused" not in line
    assert ("not a final model's checkpoint" if damage == "not a dict" else "not a readable checkpoint") in line


@pytest.mark.parametrize(("key", "expected"), [("classes", "classes"), ("preprocessing.detector", "detector"),
                                               ("input.model_size_px", "model_size_px"), ("model.params", "params")])
def test_a_card_missing_a_key_is_a_one_line_error_naming_it(demo, tmp_path, capsys, key, expected):
    models, card = _copy_model(demo, tmp_path)
    *parents, last = key.split(".")
    section = card
    for part in parents:
        section = section[part]
    del section[last]
    (models / "scratch.json").write_text(json.dumps(card))
    status, out, err = _run(_predict_args(demo, models, tmp_path), capsys)
    line = _one_error_line(err)
    assert status == 2 and out == "" and str(models / "scratch.json") in line and expected in line


def test_an_unknown_model_name_is_a_one_line_error(demo, tmp_path, capsys):
    models, card = _copy_model(demo, tmp_path)
    card["model"]["name"] = "resnet50"
    (models / "scratch.json").write_text(json.dumps(card))
    state = torch.load(models / "scratch.pt", map_location="cpu", weights_only=True)
    torch.save({**state, "model_name": "resnet50"}, models / "scratch.pt")  # the two files agree
    status, _, err = _run(_predict_args(demo, models, tmp_path), capsys)
    line = _one_error_line(err)
    assert status == 2 and str(models / "scratch.json") in line and "model.name" in line
    assert "'resnet50'" in line and "'miacnet'" in line and "'ststnet'" in line  # what it is, what is known


def test_bad_model_params_in_a_card_name_the_key(demo, tmp_path, capsys):
    models, card = _copy_model(demo, tmp_path)
    card["model"]["params"]["stem_channels"] = "many"
    (models / "scratch.json").write_text(json.dumps(card))
    status, _, err = _run(_predict_args(demo, models, tmp_path), capsys)
    assert status == 2 and "model.params.stem_channels" in _one_error_line(err)


def test_a_batch_reports_every_good_row_and_each_bad_cell(demo, tmp_path, capsys):
    (folder, onset, apex), (folder4, onset4, apex4) = _clip(demo, 0), _clip(demo, 4)
    csv = tmp_path / "clips.csv"
    pd.DataFrame({"path": [folder, folder, folder4, "", folder4],
                  "onset": [onset, "abc", onset4, onset4, f"{onset4}.5"],
                  "apex": [apex, apex, apex4, apex4, apex4]}).to_csv(csv, index=False)
    status, out, err = _run(["predict", "--batch", csv, "--models", demo["final"], "--arm", "scratch",
                             "--out", tmp_path / "maps"], capsys)
    results = json.loads(out)
    assert status == 2 and [r["line"] for r in results] == [2, 3, 4, 5, 6]
    assert [("error" in r) for r in results] == [False, True, False, True, True]
    assert results[0]["label"] in demo["classes"] and results[2]["label"] in demo["classes"]
    assert "onset" in results[1]["error"] and "'abc'" in results[1]["error"]
    assert "path" in results[3]["error"] and "onset" in results[4]["error"]
    assert [f"{csv} line {k}" in err for k in (3, 5, 6)] == [True] * 3
    assert len(list((tmp_path / "maps").glob("*.png"))) == 2


def test_an_unreadable_batch_csv_is_a_one_line_error(demo, tmp_path, capsys):
    csv = tmp_path / "clips.csv"
    csv.write_bytes(b"")
    status, _, err = _run(["predict", "--batch", csv, "--models", demo["final"], "--arm", "scratch"], capsys)
    assert status == 2 and str(csv) in _one_error_line(err)


# 4. --out: never overwritten unasked, never half-written, OSError a one-line error


def test_an_existing_heat_map_is_kept_unless_overwrite_is_asked(demo, tmp_path, capsys):
    args = _predict_args(demo, demo["final"], tmp_path)
    status, out, _ = _run(args, capsys)
    assert status == 0
    png = Path(json.loads(out)["heatmap_png"])
    png.write_bytes(b"mine")
    status, out, err = _run(args, capsys)
    line = _one_error_line(err)
    assert status == 2 and out == "" and str(png) in line and "--overwrite" in line and png.read_bytes() == b"mine"
    status, out, _ = _run([*args, "--overwrite"], capsys)
    assert status == 0 and Path(json.loads(out)["heatmap_png"]) == png
    with Image.open(png) as image:
        assert image.size == (48, 48)


def test_out_naming_an_existing_file_is_a_one_line_error(demo, tmp_path, capsys):
    args = _predict_args(demo, demo["final"], tmp_path)
    out_file = tmp_path / "out"
    out_file.write_bytes(b"a file")
    status, out, err = _run(args, capsys)
    assert status == 2 and out == "" and str(out_file) in _one_error_line(err) and out_file.read_bytes() == b"a file"


def test_a_full_disk_leaves_no_png_and_is_a_one_line_error(demo, tmp_path, capsys, monkeypatch):
    real_save = Image.Image.save

    def full_disk(self, fp, *args, **kwargs):
        if not isinstance(fp, str | Path):  # in memory (the model's batch): unaffected
            return real_save(self, fp, *args, **kwargs)
        Path(fp).write_bytes(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    status, out, err = _run(_predict_args(demo, demo["final"], tmp_path), capsys)
    line = _one_error_line(err)
    assert status == 2 and out == "" and "No space left on device" in line and str(tmp_path / "out") in line
    assert list((tmp_path / "out").iterdir()) == []  # neither a partial PNG nor a temporary file


# 5. out of distribution: noise frames with detector none


def test_noise_frames_with_detector_none_carry_a_warning_a_user_sees(demo, tmp_path, capsys):
    noise = tmp_path / "noise"
    noise.mkdir()
    rng = np.random.default_rng(0)
    for k in (1, 2):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(noise / f"img{k}.png")
    status, out, err = _run(["predict", noise, "--onset", 1, "--apex", 2, "--models", demo["final"],
                             "--arm", "scratch", "--out", tmp_path / "out"], capsys)
    result = json.loads(out)
    assert status == 0 and result["label"] in demo["classes"]
    assert len(result["warnings"]) == 1 and "no face" in result["warnings"][0]
    assert err.startswith("ma2mi predict: warning: ") and "no face" in err and str(noise) in err


def test_a_rendered_face_with_detector_none_has_no_warning(demo, tmp_path, capsys):
    status, out, err = _run(_predict_args(demo, demo["final"], tmp_path), capsys)
    assert status == 0 and json.loads(out)["warnings"] == [] and err == ""
