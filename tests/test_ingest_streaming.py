"""Streaming, parallel, resumable macro ingestion (DESIGN §7 "Scale").

- the streamed box track equals the whole-video computation (today's algorithm, kept below as the reference);
- a long video is ingested under an address-space ceiling too small to hold it decoded;
- a truncated stream keeps the frames before the break and says where and why;
- the per-video cache: reuse, incremental growth, atomic entries; the stage: parallel equals serial, a SIGKILLed
  run resumes to the same outputs, and nothing half-written is ever visible.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.config import load_params
from pipeline.face.video import (
    BoxTracker,
    FrameSource,
    HaarFaceDetector,
    _warp,
    confirm_detections,
    crop_matrix,
    key_positions,
    key_step_and_gap,
    smooth_box_track,
    warp_face,
)
from pipeline.ingest.macro import SourceItem, _frame_plan, _track, ingest_video
from pipeline.ingest.macro_cache import ShardWriter, ingest_cached
from pipeline.io import decode_jpeg
from tests.conftest import sigkill_leaves_none_behind

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def macro_params(repo):
    return load_params(repo / "params.yaml").macro


@pytest.fixture(scope="module")
def detector():
    return HaarFaceDetector()


def reference_smooth_box_track(times_s, key_times_s, key_boxes, window_s, max_gap_s):
    """The box smoothing of revision 03626ad (pandas' rolling mean), verbatim: what "the same boxes" means."""
    found = ~np.isnan(key_boxes).any(axis=1)
    boxes = np.full((len(times_s), 4), np.nan)
    if not found.any():
        return boxes
    good_t, good_b = key_times_s[found], key_boxes[found]
    for col in range(4):
        boxes[:, col] = np.interp(times_s, good_t, good_b[:, col])
    nearest_gap = np.min(np.abs(times_s[:, None] - good_t[None, :]), axis=1)
    boxes[nearest_gap > max_gap_s] = np.nan
    if window_s > 0 and len(times_s) > 1:
        fps = (len(times_s) - 1) / max(times_s[-1] - times_s[0], 1e-9)
        window = max(1, int(round(window_s * fps)))  # noqa: RUF046 (verbatim)
        boxes = pd.DataFrame(boxes).rolling(window, center=True, min_periods=1).mean().to_numpy(copy=True)
        boxes[nearest_gap > max_gap_s] = np.nan
    return boxes


def whole_video_track(frames, times_s, params, detector):
    """Revision 03626ad's ``_face_track`` on a whole decoded video: the expected boxes."""
    key_step, max_gap_s = key_step_and_gap(times_s, params.detect_every_s)
    key = key_positions(len(frames), key_step)
    key_boxes = np.array([detector.detect(frames[i]) or (np.nan,) * 4 for i in key], dtype=float)
    return reference_smooth_box_track(times_s, times_s[key], confirm_detections(key_boxes), params.smooth_window_s,
                                      max_gap_s)


def _stream_tracker(times, detections: dict[int, np.ndarray], detect_every_s, window_s, chunks, n_decoded):
    """Feed a BoxTracker the detections (key position → box, NaN: none) as ``chunks`` of decoded frames, the
    stream ending after ``n_decoded`` frames; return every frame's box, in order."""
    tracker = BoxTracker(times, detect_every_s, window_s)

    def detect():
        box = detections[tracker.next_key()]
        tracker.add_detection(None if np.isnan(box).any() else tuple(box))

    out, position = [], 0
    for size in chunks:
        position = min(n_decoded, position + int(size))
        while tracker.next_key() is not None and tracker.next_key() < position:
            detect()
        tracker.advance(position)
        start, boxes = tracker.pop_final()
        assert start == sum(len(b) for b in out)
        out.append(boxes)
        if position == n_decoded:
            break
    tracker.end(n_decoded)
    if tracker.next_key() is not None:
        detect()
    out.append(tracker.pop_final()[1])
    return np.concatenate(out)


@pytest.mark.parametrize("seed", range(40))
def test_streamed_track_equals_the_whole_video_track(seed):
    """Random detection patterns (faces, isolated false positives, long faceless gaps), random chunking, streams
    cut short: the streamed boxes equal the whole-video computation bitwise, and pandas' to 1e-9 px."""
    from pipeline.face.video import centred_mean, smoothing_window

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    times = np.arange(n) / float(rng.choice([25.0, 29.97, 30.0, 12.0])) + float(rng.uniform(0, 3))
    detect_every_s, window_s = float(rng.choice([0.04, 0.2, 0.5])), float(rng.choice([0.0, 0.3, 1.0, 2.0]))
    key_step, max_gap_s = key_step_and_gap(times, detect_every_s)
    n_decoded = n if rng.random() < 0.6 else int(rng.integers(1, n + 1))
    t = times[:n_decoded]
    keys = key_positions(n_decoded, key_step)
    face = np.repeat(rng.random(len(keys) // 4 + 1) < 0.6, 4)[: len(keys)] | (rng.random(len(keys)) < 0.05)
    centres = np.c_[100 + rng.normal(0, 3, (len(keys), 2)), 80 + rng.normal(0, 2, (len(keys), 2))]
    boxes = np.where(face[:, None], centres, np.nan)
    streamed = _stream_tracker(times, dict(zip(keys.tolist(), boxes, strict=True)), detect_every_s, window_s,
                               rng.integers(1, 40, size=n + 1), n_decoded)
    confirmed = confirm_detections(boxes)
    expected = smooth_box_track(t, t[keys], confirmed, 0.0, max_gap_s)
    window = smoothing_window(times, window_s)  # sized on the planned frames, also when the stream broke
    if window > 1:
        no_face = np.isnan(expected[:, 0])
        expected = centred_mean(expected, window)
        expected[no_face] = np.nan
    np.testing.assert_array_equal(streamed, expected)
    if n_decoded == n:
        reference = reference_smooth_box_track(t, t[keys], confirmed, window_s, max_gap_s)
        np.testing.assert_allclose(streamed, reference, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", [
    "single_face.mp4", "carphone_pristine.mp4", "face_noface.mov", "no_face.mp4",
    pytest.param("noface_face.mov", marks=pytest.mark.slow),
    pytest.param("WolfgangLanger_Pexels.mp4", marks=pytest.mark.slow)])
def test_streaming_equals_todays_algorithm_on_the_real_videos(name, shared_videos, macro_params, detector):
    """Each real video: the same boxes (to 1e-9 px, NaN where today's had none) and bitwise the same crops."""
    for path in [shared_videos / name]:
        source = FrameSource(path)
        indices, times, _ = _frame_plan(source.info, macro_params.max_fps, None, None, path, False)
        frames = np.stack([frame for _, chunk in source.chunks(indices) for frame in chunk])
        expected = whole_video_track(frames, times[: len(frames)], macro_params, detector)  # no_face.mp4: 95 of 98
        batches = list(_track(FrameSource(path), indices, times, macro_params, detector))
        boxes = np.concatenate([b.boxes for b in batches])
        np.testing.assert_array_equal(np.isnan(boxes), np.isnan(expected), err_msg=path.name)
        np.testing.assert_allclose(boxes, expected, rtol=0, atol=1e-9, err_msg=path.name)
        crops = [c for b in batches for c in b.crops]
        ok = np.flatnonzero(~np.isnan(expected[:, 0]))
        assert len(crops) == len(ok)
        size = macro_params.image_size_px
        for crop, i in zip(crops, ok, strict=True):
            np.testing.assert_array_equal(crop, warp_face(frames[i], crop_matrix(tuple(expected[i]),
                                                                                 macro_params.box_scale, size), size))


def test_warp_face_filters_only_what_it_reads_and_gives_the_same_pixels(shared_videos):
    import cv2

    frame = FrameSource(shared_videos / "WolfgangLanger_Pexels.mp4").chunks(np.array([50]))
    frame = next(frame)[1][0]
    rng = np.random.default_rng(0)
    for image in (frame, cv2.resize(frame, (1920, 1080))):
        height, width = image.shape[:2]
        for _ in range(40):
            side = rng.uniform(32, width)
            box = (rng.uniform(-side / 2, width - side / 2), rng.uniform(-side / 2, height - side / 2), side,
                   side * rng.uniform(0.8, 1.2))
            for size in (48, 112):
                matrix = crop_matrix(box, 1.3, size)
                zoom = matrix[0, 0]
                whole = image if zoom >= 1 else cv2.GaussianBlur(image, (0, 0), sigmaX=0.5 * (1 / zoom - 1) + 1e-3)
                np.testing.assert_array_equal(warp_face(image, matrix, size), _warp(whole, matrix, size))


def test_a_truncated_stream_keeps_its_frames_and_says_where_it_broke(tmp_path, shared_videos, macro_params,
                                                                      detector):
    data = (shared_videos / "WolfgangLanger_Pexels.mp4").read_bytes()
    half = tmp_path / "half.mp4"
    half.write_bytes(data[: len(data) // 2])
    result = ingest_video(half, macro_params, detector)
    row = result.video
    assert row["status"] == "ok" and row["n_frames_native"] == 472
    assert 200 <= row["n_frames"] < 472 and row["n_ok"] > 0.9 * row["n_frames"]
    assert f"decoding stopped at frame {row['n_frames']} of 472" in row["reason"]
    assert "half.mp4" in row["reason"] and "truncated or corrupt" in row["reason"]
    assert "AVERROR_INVALIDDATA" in row["reason"]
    assert len(result.index) == row["n_frames"] and (result.index["frame_index"] == np.arange(row["n_frames"])).all()
    # the frames before the break are those of the whole file, boxes included (up to the shortened end)
    whole = ingest_video(shared_videos / "WolfgangLanger_Pexels.mp4", macro_params, detector)
    head = whole.index.iloc[: row["n_frames"] - 20].drop(columns="video")
    pd.testing.assert_frame_equal(result.index.iloc[: len(head)].drop(columns="video"), head, check_exact=False,
                                  atol=1e-9)
    assert decode_jpeg(result.frames["image"].iloc[0]).shape == (macro_params.image_size_px,) * 2 + (3,)


def test_unreadable_image_in_a_sequence_is_a_recorded_break(tmp_path, shared_videos, macro_params, detector):
    import cv2

    folder = tmp_path / "S001" / "002"
    folder.mkdir(parents=True)
    frames = FrameSource(shared_videos / "single_face.mp4").chunks(np.arange(10))
    for n, frame in enumerate(next(frames)[1]):
        cv2.imwrite(str(folder / f"img{n:03d}.png"), frame[..., ::-1])
    (folder / "img005.png").write_bytes(b"not an image")
    result = ingest_video(folder, macro_params, detector, video="ck/S001_002", sequence_fps=30.0)
    assert result.video["n_frames"] == 5 and "img005.png: not a readable image" in result.video["reason"]
    assert "decoding stopped at frame 5 of 10" in result.video["reason"]


def test_jpeg_crops_decode_to_near_the_crop(shared_videos, macro_params, detector):
    from pipeline.io import decode_png

    result = ingest_video(shared_videos / "single_face.mp4", macro_params, detector)
    data = result.frames["image"].iloc[0]
    assert data[:2] == b"\xff\xd8"  # JPEG
    np.testing.assert_array_equal(decode_jpeg(data), decode_png(data))  # PIL (pre-training's reader) agrees


def test_shard_writer_splits_in_order(tmp_path):
    writer = ShardWriter(tmp_path, 4)
    for start, size in ((0, 3), (3, 3), (6, 3), (9, 1)):
        writer(pd.DataFrame({"video": "s/v", "frame_index": np.arange(start, start + size), "time_s": 0.0,
                             "image": b"x"}))
    assert writer.close() == ["frames-00000.parquet", "frames-00001.parquet", "frames-00002.parquet"]
    rows = [pq.read_table(tmp_path / n).column("frame_index").to_pylist() for n in writer.names]
    assert rows == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_cache_reuses_finished_videos_and_keys_on_content_and_params(tmp_path, shared_videos, macro_params):
    video = tmp_path / "v" / "single_face.mp4"
    video.parent.mkdir()
    shutil.copy(shared_videos / "single_face.mp4", video)
    item = SourceItem("mine/single_face", video)
    params = macro_params.model_copy(update={"image_size_px": 32})
    first = ingest_cached(item, params, tmp_path / "cache")
    again = ingest_cached(item, params, tmp_path / "cache")
    assert not first.reused and again.reused and again.folder == first.folder and again.row == first.row
    assert not any(p.name.startswith(".") for p in first.folder.parent.iterdir())  # no partial folder left
    other = ingest_cached(item, params.model_copy(update={"smooth_window_s": 0.5}), tmp_path / "cache")
    assert not other.reused and other.folder != first.folder
    with open(video, "ab") as handle:
        handle.write(b"\0")  # new content: a new entry
    assert not ingest_cached(item, params, tmp_path / "cache").reused
    missing = ingest_cached(SourceItem("mine/gone", tmp_path / "gone.mp4"), params, tmp_path / "cache")
    assert missing.row["status"] == "decode_error" and "gone.mp4" in missing.row["reason"]


def test_a_long_video_streams_under_a_memory_ceiling(tmp_path, shared_videos):
    """A 1280x720 video of 300 frames (830 MB decoded) is ingested in a child whose address space is capped at
    its start-up size + 700 MB; the whole-video decode of revision 03626ad needed > 1.6 GB there."""
    import cv2

    long_video = tmp_path / "long.mp4"
    capture = cv2.VideoCapture(str(shared_videos / "WolfgangLanger_Pexels.mp4"))
    frames = []
    while len(frames) < 150:
        ok, frame = capture.read()
        assert ok
        frames.append(cv2.resize(frame, (1280, 720)))
    writer = cv2.VideoWriter(str(long_video), cv2.VideoWriter_fourcc(*"mp4v"), 24.0, (1280, 720))
    for frame in frames + frames[::-1]:
        writer.write(frame)
    writer.release()
    script = f"""
import resource, sys
from pathlib import Path
import decord, cv2, numpy as np, pandas as pd
from pipeline.config import load_params
from pipeline.ingest.macro import stream_video
from pipeline.face.video import HaarFaceDetector
params = load_params({str(REPO / 'params.yaml')!r}).macro
def vm_bytes():
    return int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()
limit = vm_bytes() + (700 << 20)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    np.empty((300, 720, 1280, 3), np.uint8).fill(1)
    sys.exit("the ceiling is not low enough to forbid holding the video")
except MemoryError:
    pass
n_ok = [0]
row, index = stream_video(Path({str(long_video)!r}), params, HaarFaceDetector(),
                          lambda f: n_ok.__setitem__(0, n_ok[0] + len(f)), num_threads=1)
print(row["status"], row["n_frames"], n_ok[0], row["reason"])
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    status, n_frames, n_ok = result.stdout.split()[:3]
    assert status == "ok" and int(n_frames) == 300 and int(n_ok) > 250


# --- the stage: Prefect flow, Dask workers, cache, kill and resume ---------------------------------------------


def _project(tmp_path: Path, videos: dict[str, Path], workers: int, root: Path, size_px: int = 32) -> Path:
    """A params.yaml whose `mine` source is ``root`` holding ``videos`` (name → file); outputs and cache under
    tmp_path."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    root.mkdir(exist_ok=True)
    for name, file in videos.items():
        if not (root / name).exists():
            shutil.copy(file, root / name)
    raw["paths"].update(macro_dir=str(tmp_path / "macro"), macro_cache_dir=str(tmp_path / "cache"))
    raw["macro"]["sources"]["mine"] = {"kind": "videos", "root": str(root), "csv": None, "fps": None}
    raw["macro"].update(workers=workers, image_size_px=size_px, shard_frames=50)
    path = tmp_path / f"params-{workers}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _stage(params: Path, home: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    return subprocess.Popen([sys.executable, "-m", "stages.ingest_macro", "--source", "mine", "--params",
                             str(params)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kwargs)


def _run_stage(params: Path, home: Path) -> str:
    process = _stage(params, home)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-4000:]
    return output


def _tables(out: Path) -> dict[str, object]:
    """Every file of a stage output: Parquet as tables, JSON parsed."""
    tables = {}
    for file in sorted(out.iterdir()):
        tables[file.name] = pq.read_table(file) if file.suffix == ".parquet" else json.loads(file.read_text())
    return tables


def _assert_same_outputs(a: Path, b: Path) -> None:
    ta, tb = _tables(a), _tables(b)
    assert list(ta) == list(tb)
    for name in ta:
        assert ta[name] == tb[name] if name.endswith(".json") else ta[name].equals(tb[name]), name
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.fixture(scope="module")
def corpus(shared_videos) -> dict[str, Path]:
    """Seven clips: real faces, a faceless one, a corrupt file and a truncated one."""
    return {"a_face.mp4": shared_videos / "single_face.mp4", "b_carphone.mp4": shared_videos / "carphone_pristine.mp4",
            "c_face_noface.mov": shared_videos / "face_noface.mov", "d_noface.mp4": shared_videos / "no_face.mp4",
            "e_wolfgang.mp4": shared_videos / "WolfgangLanger_Pexels.mp4",
            "f_noface_face.mov": shared_videos / "noface_face.mov"}


def _add_bad_files(root: Path, shared_videos: Path) -> None:
    root.mkdir(exist_ok=True)
    (root / "g_corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    data = (shared_videos / "WolfgangLanger_Pexels.mp4").read_bytes()
    (root / "h_truncated.mp4").write_bytes(data[: len(data) // 2])


@pytest.mark.slow
def test_parallel_equals_serial_and_bad_input_is_recorded(tmp_path, corpus, shared_videos):
    """Two Dask workers give byte-identical outputs to one; every bad file is a row naming it."""
    outputs, root = {}, tmp_path / "videos"
    _add_bad_files(root, shared_videos)
    for workers in (1, 2):
        work = tmp_path / f"w{workers}"
        work.mkdir()
        log = _run_stage(_project(work, corpus, workers, root), work / "prefect")
        assert log.count("ingested mine/") == 8 and "reused" not in log.split("Finished")[0]
        outputs[workers] = work / "macro" / "mine"
    _assert_same_outputs(outputs[1], outputs[2])
    videos = pd.read_parquet(outputs[2] / "videos.parquet").set_index("video")
    assert videos.loc["mine/g_corrupt", "status"] == "decode_error"
    assert "g_corrupt.mp4" in videos.loc["mine/g_corrupt", "reason"]
    assert videos.loc["mine/d_noface", "status"] == "no_face" and "d_noface.mp4" in videos.loc["mine/d_noface",
                                                                                               "reason"]
    assert videos.loc["mine/h_truncated", "status"] == "ok"
    assert "decoding stopped at frame" in videos.loc["mine/h_truncated", "reason"]
    index = pd.read_parquet(outputs[2] / "index.parquet")
    assert len(index) == videos["n_frames"].sum() and set(index["status"]) == {"ok", "no_face"}
    frames = pd.concat(pd.read_parquet(p) for p in sorted(outputs[2].glob("frames-*.parquet")))
    assert len(frames) == videos["n_ok"].sum() == (index["status"] == "ok").sum()
    summary = json.loads((outputs[2] / "summary.json").read_text())
    assert {r["video"] for r in summary["skipped"]} == {"mine/g_corrupt", "mine/d_noface"}
    assert [r["video"] for r in summary["partial"]] == ["mine/h_truncated"]


def _visible_files_are_complete(work: Path) -> int:
    """Read every visible file of the cache and the outputs under ``work`` (temporary names start with '.');
    count them."""
    n = 0
    for file in [*(work / "cache").rglob("*"), *(work / "macro").rglob("*")]:
        if any(part.startswith(".") for part in file.relative_to(work).parts) or not file.is_file():
            continue
        with contextlib.suppress(FileNotFoundError):  # replaced between listing and reading
            if file.suffix == ".parquet":
                pq.read_table(file)
            elif file.suffix == ".json":
                json.loads(file.read_text())
            n += 1
    return n


@pytest.mark.slow
def test_a_killed_ingest_resumes_to_the_outputs_of_an_uninterrupted_one(tmp_path, corpus, shared_videos):
    """SIGKILL mid-way (two Dask workers): no process is left, no half-written file is ever visible, the rerun
    reuses the finished videos and its outputs equal an uninterrupted run without a cache; then a grown source
    ingests only its new video."""
    import psutil

    many = {f"{k}{n}_{name}": path for n in range(2) for k, (name, path) in enumerate(corpus.items())}
    reference, work, root = tmp_path / "reference", tmp_path / "work", tmp_path / "videos"
    reference.mkdir()
    work.mkdir()
    _run_stage(_project(reference, many, 1, root), reference / "prefect")
    params = _project(work, many, 2, root)
    stage = _stage(params, work / "prefect")
    cache, children = work / "cache", []
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            _visible_files_are_complete(work)
            done = list(cache.glob("*/*/video.json"))
            children = psutil.Process(stage.pid).children(recursive=True) or children
            if len(done) >= 3:
                break
            assert stage.poll() is None, stage.stdout.read()[-3000:]
            time.sleep(0.1)
        assert 3 <= len(done) < len(many), "kill it mid-way"
        sigkill_leaves_none_behind(stage, children, "stage")
    finally:
        if stage.poll() is None:
            stage.kill()
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
    assert _visible_files_are_complete(work) >= 3 * 3  # each finished entry: video.json, index, a shard
    assert not (work / "macro" / "mine").exists()  # the output appears whole at the end, or not at all
    finished = len(list(cache.glob("*/*/video.json")))

    log = _run_stage(params, work / "prefect")
    assert log.count("reused mine/") == finished and log.count("ingested mine/") == len(many) - finished
    _assert_same_outputs(reference / "macro" / "mine", work / "macro" / "mine")

    shutil.copy(shared_videos / "single_face.mp4", root / "z_new.mp4")
    log = _run_stage(params, work / "prefect")
    assert log.count("ingested mine/") == 1 and "ingested mine/z_new" in log
    assert log.count("reused mine/") == len(many)
    videos = pd.read_parquet(work / "macro" / "mine" / "videos.parquet")
    assert videos["video"].iloc[-1] == "mine/z_new" and len(videos) == len(many) + 1
