"""params.yaml is strict: unknown, missing or mistyped keys are errors that name the key."""

from __future__ import annotations

import pytest
import yaml

from pipeline.config import ConfigError, load_params


def _write(tmp_path, raw):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_real_params_load(repo):
    params = load_params(repo / "params.yaml")
    assert params.finetune.inits == ["ma2mi", "scratch"]
    assert params.synthesize.micro_peak_px[1] <= 2.0


def test_unknown_key_is_an_error(tmp_path, raw_params):
    raw_params["finetune"]["learning_rate"] = 0.1
    with pytest.raises(ConfigError, match=r"finetune\.learning_rate"):
        load_params(_write(tmp_path, raw_params))


def test_unknown_section_is_an_error(tmp_path, raw_params):
    raw_params["train"] = {"epochs": 3}
    with pytest.raises(ConfigError, match=r"train"):
        load_params(_write(tmp_path, raw_params))


def test_missing_key_is_an_error(tmp_path, raw_params):
    del raw_params["pretrain"]["horizon_s"]
    with pytest.raises(ConfigError, match=r"pretrain\.horizon_s.*[Ff]ield required"):
        load_params(_write(tmp_path, raw_params))


def test_wrong_type_and_range_are_errors(tmp_path, raw_params):
    raw_params["finetune"]["epochs"] = "many"
    raw_params["synthesize"]["micro_peak_px"] = [2.0, 0.5]
    with pytest.raises(ConfigError) as err:
        load_params(_write(tmp_path, raw_params))
    assert "finetune.epochs" in str(err.value) and "synthesize.micro_peak_px" in str(err.value)


def test_demo_root_must_be_the_synthesized_dataset(tmp_path, raw_params):
    raw_params["micro"]["root"] = "somewhere/else"
    with pytest.raises(ConfigError, match="demo_micro_dir"):
        load_params(_write(tmp_path, raw_params))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_params(tmp_path / "nope.yaml")


def test_params_are_frozen(repo):
    params = load_params(repo / "params.yaml")
    with pytest.raises(Exception):
        params.finetune.epochs = 3
