"""Reading a clip's onset and apex frames from a folder of frames or a video (pipeline.serve.clips)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.serve.clips import FrameRangeError, InputError, folder_frames, frame_number, read_clip


@pytest.mark.parametrize(("name", "number"), [
    ("img46.jpg", 46),  # CASME II raw
    ("reg_img46.jpg", 46),  # CASME II cropped
    ("006_05562.jpg", 5562),  # SAMM: the last number, not the subject
    ("image000123.bmp", 123),  # SMIC
    ("image123.bmp", 123),
    ("12.jpg", 12),  # CAS(ME)^3, MMEW
    ("frame_0007_aligned.png", 7),  # the last run of digits, wherever it is
    ("README", None),
    ("notes.txt", None),
])
def test_frame_number_is_the_last_number_of_the_name(name, number):
    assert frame_number(name) == number


def _frames(folder, names, size=(40, 48)):
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        if name.endswith(".txt"):
            (folder / name).write_text("not a frame")
            continue
        cv2.imwrite(str(folder / name), np.full((*size, 3), 20 * k, np.uint8))


def test_a_folder_of_frames_by_their_numbers(tmp_path):
    clip = tmp_path / "006_1_2"
    _frames(clip, ["006_05560.jpg", "006_05561.jpg", "006_05562.jpg", "notes.txt"])
    assert sorted(folder_frames(clip)) == [5560, 5561, 5562]
    frames = read_clip(clip, 5560, 5562)
    assert frames.onset.shape == (40, 48, 3) and frames.onset.dtype == np.uint8
    assert (frames.onset_index, frames.apex_index) == (5560, 5562)
    assert int(frames.apex.mean()) > int(frames.onset.mean())  # the third file, not the first


def test_folder_errors_name_the_range_and_the_files(tmp_path):
    clip = tmp_path / "EP01"
    _frames(clip, ["reg_img10.jpg", "reg_img11.jpg", "reg_img13.jpg"])
    with pytest.raises(FrameRangeError, match=r"apex frame 99 is not in .*EP01: its frames are 10\.\.13 \(3 files, "
                                              r"with gaps\)"):
        read_clip(clip, 10, 99)
    with pytest.raises(InputError, match="no frame rate"):
        read_clip(clip, 0.1, 0.2, seconds=True)
    with pytest.raises(InputError, match="comes before"):
        read_clip(clip, 13, 10)
    _frames(clip, ["img11.jpg"])
    with pytest.raises(InputError, match=r"img11\.jpg and reg_img11\.jpg are both frame 11"):
        folder_frames(clip)
    with pytest.raises(InputError, match="no such"):
        read_clip(tmp_path / "missing", 1, 2)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no image file"):
        folder_frames(empty)


def test_a_truncated_frame_is_an_input_error(tmp_path):
    clip = tmp_path / "EP02"
    _frames(clip, ["img1.jpg", "img2.jpg"])
    data = (clip / "img2.jpg").read_bytes()
    (clip / "img2.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"img2\.jpg"):
        read_clip(clip, 1, 2)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """A 20-frame 10 fps video whose frame k is uniformly 10 * k grey."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    for k in range(20):
        writer.write(np.full((48, 64, 3), 10 * k, np.uint8))
    writer.release()
    return path


def test_video_frames_by_index_and_by_time(video):
    frames = read_clip(video, 3, 12)
    assert frames.onset.shape == (48, 64, 3)
    assert abs(float(frames.onset.mean()) - 30) < 4 and abs(float(frames.apex.mean()) - 120) < 4
    timed = read_clip(video, 0.3, 1.2, seconds=True)  # round(t * 10 fps)
    assert (timed.onset_index, timed.apex_index) == (3, 12)
    assert np.array_equal(timed.apex, frames.apex)


def test_video_errors_name_the_range(video, tmp_path):
    with pytest.raises(FrameRangeError, match=r"apex frame 20 is not in .*clip.mp4: its frames are 0\.\.19 "
                                              r"\(0\.\.1\.900 s\)"):
        read_clip(video, 0, 20)
    with pytest.raises(FrameRangeError, match=r"onset 5\.0 s = frame 50 at 10 fps"):
        read_clip(video, 5.0, 6.0, seconds=True)
    with pytest.raises(InputError, match="comes before"):
        read_clip(video, 5, 2)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(InputError, match="not a readable video"):
        read_clip(bad, 0, 1)
