"""params.yaml checks that need the registries or the file system, run before DVC needs the paths."""

from __future__ import annotations

import pytest
import yaml

from pipeline.config import ConfigError, load_params
from pipeline.ingest.checks import check_micro


def _params(tmp_path, raw, **micro):
    raw["micro"].update(micro)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    return load_params(tmp_path / "params.yaml")


def test_a_missing_root_is_named_with_what_to_set(tmp_path, raw_params):
    params = _params(tmp_path, raw_params, dataset="casme2", root=str(tmp_path / "CASME2"))
    with pytest.raises(ConfigError, match=r"micro.root: .*CASME2 is not a folder; set micro.root in params.yaml to the "
                                          r"casme2 dataset's folder"):
        check_micro(params)


def test_unknown_names_and_files_are_all_listed(tmp_path, raw_params):
    (tmp_path / "CASME2").mkdir()
    params = _params(tmp_path, raw_params, dataset="casme", protocol="7class", detector="dlib",
                     root=str(tmp_path / "CASME2"), annotation=str(tmp_path / "sheet.xlsx"))
    with pytest.raises(ConfigError) as err:
        check_micro(params)
    message = str(err.value)
    for part in ("micro.dataset: 'casme'", "micro.protocol: '7class'", "micro.detector: 'dlib'",
                 "micro.annotation: ", "sheet.xlsx does not exist"):
        assert part in message


def test_the_demo_root_may_not_exist_yet(tmp_path, raw_params):
    """The demo's root is the synthesize stage's output: it is checked by that stage, not here."""
    checked = check_micro(_params(tmp_path, raw_params))
    assert checked["dataset"] == "demo"


def test_the_record_is_the_same_in_every_checkout(tmp_path, raw_params, monkeypatch):
    """check_micro's record is a DVC dependency of ingest_micro: a clone in another folder must write the same."""
    params = _params(tmp_path, raw_params)
    records = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        records.append(check_micro(params))
    assert records[0] == records[1] and records[0]["root"] == str(params.micro.root)
