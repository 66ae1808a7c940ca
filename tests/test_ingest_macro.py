"""Macro ingestion on real videos: faces found and aligned; bad videos recorded with a reason, not dropped."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import load_params
from pipeline.ingest_macro import find_videos, ingest_video
from pipeline.io import decode_png
from pipeline.video import HaarFaceDetector, confirm_detections, smooth_box_track


@pytest.fixture(scope="module")
def macro_params(repo):
    return load_params(repo / "params.yaml").macro


@pytest.fixture(scope="module")
def detector():
    return HaarFaceDetector()


def test_real_face_video_is_aligned(shared_videos, macro_params, detector):
    result = ingest_video(shared_videos / "single_face.mp4", macro_params, detector)
    assert result.video["status"] == "ok"
    assert result.video["n_frames"] == 72 and result.video["fps"] == pytest.approx(30.0)
    assert result.video["n_ok"] >= 65  # a face in (nearly) every frame
    assert len(result.index) == 72 and set(result.index["status"]) <= {"ok", "no_face"}
    crop = decode_png(result.frames["image"].iloc[0])
    assert crop.shape == (macro_params.image_size_px, macro_params.image_size_px, 3)
    times = result.frames["time_s"].to_numpy()
    assert np.all(np.diff(times) > 0)


def test_video_without_a_face_is_recorded_not_dropped(shared_videos, macro_params, detector):
    result = ingest_video(shared_videos / "no_face.mp4", macro_params, detector)
    assert result.video["status"] == "no_face"
    assert "no_face.mp4" in result.video["reason"]
    assert result.video["n_ok"] == 0 and len(result.frames) == 0
    assert len(result.index) == 98 and (result.index["status"] == "no_face").all()


def test_face_then_no_face_marks_the_faceless_frames(shared_videos, macro_params, detector):
    result = ingest_video(shared_videos / "face_noface.mov", macro_params, detector)
    status = result.index["status"].to_numpy()
    assert (status == "ok").any() and (status == "no_face").any()
    first_no_face = np.argmax(status == "no_face")
    assert (status[:first_no_face] == "ok").mean() > 0.9  # the face comes first


def test_missing_and_corrupt_videos_give_decode_errors(tmp_path, macro_params, detector):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    for path in (tmp_path / "missing.mp4", corrupt):
        result = ingest_video(path, macro_params, detector)
        assert result.video["status"] == "decode_error"
        assert path.name in result.video["reason"]
        assert len(result.frames) == 0


def test_find_videos_rejects_duplicate_ids(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "clip.mp4").write_bytes(b"x")
    (tmp_path / "b" / "clip.mov").write_bytes(b"x")
    with pytest.raises(ValueError, match="clip"):
        find_videos([tmp_path / "a", tmp_path / "b"], [".mp4", ".mov"])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_videos([tmp_path / "nowhere"], [".mp4"])


def test_isolated_detections_are_rejected():
    nan = [np.nan] * 4
    boxes = np.array([nan, [10, 10, 50, 50], nan, [100, 100, 40, 40], [102, 101, 40, 40]], dtype=float)
    kept = confirm_detections(boxes)
    assert np.isnan(kept[1]).all()  # alone: a false positive
    assert not np.isnan(kept[3:]).any()


def test_box_track_interpolates_and_leaves_faceless_frames_empty():
    times = np.arange(10) / 10.0
    key_t = np.array([0.0, 0.4, 0.8])
    key_b = np.array([[0, 0, 10, 10], [4, 0, 10, 10], [np.nan] * 4])
    boxes = smooth_box_track(times, key_t, key_b, window_s=0.0, max_gap_s=0.25)
    assert boxes[2, 0] == pytest.approx(2.0)  # halfway between x=0 and x=4
    assert np.isnan(boxes[7:]).all()  # nearest face is too far
