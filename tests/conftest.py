"""Shared fixtures: the real params.yaml (shrunk where a test needs speed) and the real data in ../shared/."""

from __future__ import annotations

import os
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
    """The real params, shrunk to a minutes-long CPU run: 3 subjects x 1 clip per class, 48 px, 1-2 epochs, 2 seeds."""
    raw["synthesize"].update(n_subjects=3, clips_per_class=1, face_size_px=64, macro_video_duration_s=2.0,
                             macro_duration_s=[0.5, 1.0])
    raw["macro"].update(image_size_px=48)
    raw["micro"].update(image_size_px=48)
    raw["model"].update(image_size_px=48, stem_channels=8, action_channels=[8, 16, 16, 16],
                        position_channels=[8, 16, 16, 16], code_channels=4)
    raw["pretrain"].update(epochs=1, pairs_per_epoch=64, heldout_pairs=32, batch_size=16,
                           heldout_videos=["samples/carphone_pristine"])
    raw["finetune"].update(epochs=2, folds=[0, 1, 2], batch_size=4, seeds=[0, 1])
    return raw
