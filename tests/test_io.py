"""Crash-safe outputs: a killed atomic_dir never leaves a partial folder at its destination."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.io import atomic_dir

# A child process replaces OUT with a new folder of 3 files and is killed (os._exit, no clean-up) right after
# the n-th os.replace call of atomic_dir: 1 = after the old folder was moved aside, 2 = after the new one was
# renamed in (before the old one is deleted).
CHILD = """
import os, sys
from pathlib import Path
import pipeline.io as io

calls, kill_after = 0, int(sys.argv[2])
real_replace = os.replace

def replace_then_die(src, dst):
    global calls
    real_replace(src, dst)
    calls += 1
    if calls == kill_after:
        os._exit(9)

io.os.replace = replace_then_die
with io.atomic_dir(Path(sys.argv[1])) as tmp:
    for i in range(3):
        (tmp / f"new{i}.txt").write_text("new")
"""


def _contents(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def _old_output(root: Path) -> Path:
    out = root / "out"
    out.mkdir()
    for i in range(5):
        (out / f"old{i}.txt").write_text("old")
    return out


@pytest.mark.parametrize("kill_after", [1, 2])
def test_a_kill_between_the_renames_leaves_the_old_or_the_new_output(tmp_path, kill_after):
    out = _old_output(tmp_path)
    child = subprocess.run([sys.executable, "-c", CHILD, str(out), str(kill_after)], capture_output=True, text=True,
                           timeout=60)
    assert child.returncode == 9, child.stderr
    if kill_after == 2:  # the new folder is in place, whole; the old one waits for removal under its .old name
        assert _contents(out) == {"new0.txt", "new1.txt", "new2.txt"}
    else:  # between the renames the destination is missing; the old output is whole under its .old name
        assert not out.exists()
        (aside,) = tmp_path.glob(".out.old-*")
        assert _contents(aside) == {f"old{i}.txt" for i in range(5)}
    with atomic_dir(out) as tmp:  # the next run first recovers: the old output comes back, or the stale copy goes
        expected = _contents(out)
        assert expected in ({f"old{i}.txt" for i in range(5)}, {"new0.txt", "new1.txt", "new2.txt"})
        (tmp / "again.txt").write_text("again")
    assert _contents(out) == {"again.txt"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing stale left beside it


def test_a_failed_block_leaves_the_destination_as_it_was(tmp_path):
    out = _old_output(tmp_path)
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("failed mid-way")
    assert _contents(out) == {f"old{i}.txt" for i in range(5)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
