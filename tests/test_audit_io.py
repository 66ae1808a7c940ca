"""Audit (issue 19): one writer per output destination, and disk errors that name the path.

On 34752a0 a rerun started while a killed run's orphaned stage was still writing deleted that stage's
``.<name>.partial-*`` folder (``io._recover``), and ``ENOSPC`` came up as a bare ``[Errno 28] No space left on
device`` naming no file.
"""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipeline import io
from pipeline.io import DestinationBusyError, atomic_dir, atomic_path, write_json, write_parquet

REPO = Path(__file__).resolve().parents[1]

# The first writer: inside atomic_dir, it writes a file, says so, and waits for a line on stdin to finish.
WRITER = """
import sys
from pathlib import Path
from pipeline.io import atomic_dir

with atomic_dir(Path(sys.argv[1])) as tmp:
    (tmp / "first.txt").write_text("first")
    print("writing", flush=True)
    sys.stdin.readline()
"""


def test_a_second_writer_of_a_destination_fails_at_once_and_the_first_one_s_work_survives(tmp_path):
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-c", WRITER, str(out)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=REPO, env={"PYTHONPATH": str(REPO)})
    try:
        assert first.stdout.readline().strip() == "writing"
        (partial,) = tmp_path.glob(".out.partial-*")
        with pytest.raises(DestinationBusyError, match=rf"{out}.*PID {first.pid}"), atomic_dir(out) as tmp:
            (tmp / "second.txt").write_text("second")
        assert (partial / "first.txt").read_text() == "first"  # not removed as a dead writer's leftover
        assert not out.exists()
        first.stdin.write("\n")
        first.stdin.close()
        assert first.wait(timeout=30) == 0
    finally:
        if first.poll() is None:
            first.kill()
    assert {p.name for p in out.iterdir()} == {"first.txt"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial, no lock file left beside it


def test_the_same_process_cannot_write_one_destination_twice_at_once(tmp_path):
    with atomic_dir(tmp_path / "out"), pytest.raises(DestinationBusyError, match="out"), atomic_dir(tmp_path / "out"):
        pass


def _no_space(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("writer", ["write_json", "write_parquet", "atomic_path", "atomic_dir", "rename"])
def test_a_full_disk_names_the_destination(tmp_path, monkeypatch, writer):
    destination = tmp_path / "results" / "metrics.json"
    if writer == "write_json":
        monkeypatch.setattr(Path, "write_text", _no_space)
        call = lambda: write_json({"uf1": 0.5}, destination)  # noqa: E731
    elif writer == "write_parquet":
        monkeypatch.setattr(pd.DataFrame, "to_parquet", _no_space)
        call = lambda: write_parquet(pd.DataFrame({"a": [1]}), destination)  # noqa: E731
    elif writer == "rename":  # the rename onto the destination
        monkeypatch.setattr(io.os, "replace", _no_space)
        call = lambda: write_json({"uf1": 0.5}, destination)  # noqa: E731
    else:
        def call():
            with getattr(io, writer)(destination) as tmp:
                if writer == "atomic_dir":
                    tmp = tmp / "table.parquet"
                with open(tmp, "wb") as handle:
                    handle.write(b"x")
                    _no_space()
    with pytest.raises(OSError) as raised:
        call()
    assert raised.value.errno == errno.ENOSPC
    assert raised.value.filename == str(destination)
    assert str(destination) in str(raised.value) and "No space left on device" in str(raised.value)
    assert isinstance(raised.value.__cause__, OSError) and raised.value.__cause__.filename is None
    assert sorted(p.name for p in destination.parent.iterdir()) == []  # nothing written, nothing left


def test_other_errors_in_a_writer_s_block_pass_unchanged(tmp_path):
    """Only disk errors are renamed: a network timeout (an OSError too) keeps its type and message."""
    with pytest.raises(TimeoutError, match=r"^read timed out$"), atomic_path(tmp_path / "x.json"):
        raise TimeoutError("read timed out")
    with pytest.raises(FileNotFoundError) as raised, atomic_dir(tmp_path / "out"):
        (tmp_path / "missing-input.csv").read_text()
    assert raised.value.filename == str(tmp_path / "missing-input.csv")
