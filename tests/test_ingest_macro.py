"""Macro ingestion on real videos: faces found and aligned; bad videos recorded with a reason, not dropped."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from pipeline.config import load_params
from pipeline.face.video import HaarFaceDetector, confirm_detections, smooth_box_track
from pipeline.ingest.macro import find_videos, ingest_video
from pipeline.io import decode_png


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
    # FFmpeg decodes 95 frames (`ffprobe -count_frames`; the container lists 98 packets): decord padded the
    # index to 98 with 3 copies of the last frame; OpenCV's reader, which ingestion now streams from, does not
    assert len(result.index) == 95 and (result.index["status"] == "no_face").all()
    assert result.video["n_frames_native"] == 98 and result.video["reason"].endswith("no face found in any frame")


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


def _source(root, **kw):
    from pipeline.config import MacroSource

    return MacroSource(**{"kind": "videos", "root": root, "csv": None, "fps": None, **kw})


def test_csv_source_keeps_a_window_and_records_missing_files(tmp_path, shared_videos, macro_params, detector):
    from pipeline.ingest.macro import list_source

    shutil.copy(shared_videos / "single_face.mp4", tmp_path / "single_face.mp4")
    (tmp_path / "videos.csv").write_text("file,start_s,end_s\nsingle_face.mp4,0.5,1.5\ngone.mp4,,\n")
    items = list_source("mine", _source(tmp_path, csv="videos.csv"), macro_params.video_suffixes)
    assert [i.video for i in items] == ["mine/single_face", "mine/gone"]
    first = ingest_video(items[0].path, macro_params, detector, video=items[0].video, start_s=0.5, end_s=1.5)
    assert first.index["time_s"].between(0.5, 1.5).all() and len(first.index) == 31  # 30 fps, both ends kept
    missing = ingest_video(items[1].path, macro_params, detector, video=items[1].video)
    assert missing.video["status"] == "decode_error" and "gone.mp4" in missing.video["reason"]
    (tmp_path / "videos.csv").write_text("file,start_s\nsingle_face.mp4,soon\n")
    with pytest.raises(ValueError, match="row 2 column start_s: 'soon'"):
        list_source("mine", _source(tmp_path, csv="videos.csv"), macro_params.video_suffixes)


def test_ckplus_image_sequences(tmp_path, shared_videos, macro_params, detector):
    import cv2

    from pipeline.ingest.macro import list_source

    sequence = tmp_path / "cohn-kanade-images" / "S005" / "001"
    sequence.mkdir(parents=True)
    capture = cv2.VideoCapture(str(shared_videos / "single_face.mp4"))
    for n in range(1, 13):
        ok, frame = capture.read()
        assert ok
        cv2.imwrite(str(sequence / f"S005_001_{n:08d}.png"), cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))  # CK+ is grey
    source = _source(tmp_path / "cohn-kanade-images", kind="ckplus", fps=30.0)
    (item,) = list_source("ckplus", source, macro_params.video_suffixes)
    assert item.video == "ckplus/S005_001" and item.sequence_fps == 30.0
    result = ingest_video(item.path, macro_params, detector, video=item.video, sequence_fps=item.sequence_fps)
    assert result.video["n_frames"] == 12 and result.video["n_ok"] >= 10
    assert result.index["time_s"].iloc[-1] == pytest.approx(11 / 30)


def test_macro_sources_must_keep_the_builtins_and_give_sequence_fps(tmp_path, raw_params):
    import yaml

    from pipeline.config import ConfigError, load_params

    del raw_params["macro"]["sources"]["demo"]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw_params))
    with pytest.raises(ConfigError, match="built-in 'demo'"):
        load_params(tmp_path / "p.yaml")
    raw_params["macro"]["sources"]["demo"] = {"kind": "videos", "root": "x", "csv": None, "fps": None}
    raw_params["macro"]["sources"]["ck"] = {"kind": "ckplus", "root": "y", "csv": None, "fps": None}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw_params))
    with pytest.raises(ConfigError, match=r"macro\.sources\.ck: an image-sequence source needs fps"):
        load_params(tmp_path / "p.yaml")
