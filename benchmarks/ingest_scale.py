"""Macro ingestion at scale: memory vs video length, speed vs raw decoding, workers, storage formats, a DFEW estimate.

Usage:
    python -m benchmarks.ingest_scale [--params params.yaml] [--work .cache/bench-ingest] [--lengths 30 60 120]
        [--clips 16] [--skip memory speedup storage]

Needs ``ffmpeg`` on PATH to make the test videos (``apt-get install ffmpeg``; the project itself does not use it):
the real sample ``WolfgangLanger_Pexels.mp4`` (640x360, 24 fps, 20 s) looped and upscaled to 720p for each of
``--lengths`` seconds and to 1080p for the longest, H.264 (x264 veryfast, CRF 23).

1. **Memory and speed per video**: each video is ingested (``stream_video``, the stage's per-video work: decode,
   Haar on key frames, tracking, crops, JPEG) in a fresh child process with one decoding and one OpenCV thread (one
   worker = one core), after timing the raw decoding of the same file in the same child: decord (``next``, one
   thread; the DESIGN's reader) and OpenCV's FFmpeg reader (what ingestion streams from). The child reports its
   peak RSS (``ru_maxrss``), and where its time went.
2. **Workers**: the ``ingest_macro`` stage itself (``python -m stages.ingest_macro``, Prefect + Dask) on
   ``--clips`` 3-s 720p clips with ``macro.workers`` 1 then 2, empty cache each time: stage wall time and the
   flow's own ingest time (cluster start-up included).
3. **Storage**: bytes per frame and single-core encode / decode rates of real face crops (every ``ok`` crop of the
   sample videos at 112 and 224 px) as PNG (``pipeline.io``), JPEG q95 4:4:4 (OpenCV and Pillow), and raw uint8 in
   a Parquet ``fixed_size_binary`` column (no compression, zstd); JPEG's error against the raw crop, next to the
   mean frame-to-frame change it must not drown.
4. **A DFEW-sized corpus** (16 k clips of 2-3 s at 25-30 fps): core-hours and disk from the numbers above.

Prints markdown tables to stdout; progress goes to the log.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

log = logging.getLogger("ingest_scale")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "datasets" / "videos"

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import cv2
cv2.setNumThreads(1)
import decord
import numpy as np
from pipeline.config import load_params
import pipeline.ingest.macro as im
from pipeline.face.video import FrameSource, HaarFaceDetector

path, params_path = Path(sys.argv[1]), sys.argv[2]
params = load_params(params_path).macro
t = time.perf_counter()
reader = decord.VideoReader(str(path), num_threads=1)
n = len(reader)
for _ in range(n):
    reader.next().asnumpy()
decord_fps = n / (time.perf_counter() - t)
del reader
t = time.perf_counter()
capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
k = 0
while True:
    ok, frame = capture.read()
    if not ok:
        break
    cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    k += 1
opencv_fps = k / (time.perf_counter() - t)
capture.release()
spent = {"detect": 0.0, "crop": 0.0, "encode": 0.0, "decode": 0.0}

def timed(name, fn):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - start
    return wrapper

HaarFaceDetector.detect = timed("detect", HaarFaceDetector.detect)
im.warp_face = timed("crop", im.warp_face)
im.encode_jpeg = timed("encode", im.encode_jpeg)
FrameSource._read_capture = timed("decode", FrameSource._read_capture)
t = time.perf_counter()
row, index = im.stream_video(path, params, HaarFaceDetector(), lambda frames: None, num_threads=1)
seconds = time.perf_counter() - t
print(json.dumps({"frames": row["n_frames"], "ok": row["n_ok"], "seconds": seconds, "decord_fps": decord_fps,
                  "opencv_fps": opencv_fps, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "spent": spent, "reason": row["reason"]}))
"""


def ffmpeg(args: list[str]) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


def make_video(destination: Path, seconds: float, width: int, height: int) -> Path:
    """The sample video looped to ``seconds`` and scaled to ``width`` x ``height``, H.264 (cached)."""
    if not destination.is_file():
        log.info("making %s", destination.name)
        ffmpeg(["-stream_loop", "-1", "-i", str(SAMPLE / "WolfgangLanger_Pexels.mp4"), "-t", str(seconds), "-vf",
                f"scale={width}:{height}", "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt",
                "yuv420p", "-an", str(destination)])
    return destination


def measure_video(path: Path, params_path: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", CHILD, str(path), str(params_path)], capture_output=True,
                            text=True, cwd=REPO, env=env, check=False)
    if result.returncode:
        raise RuntimeError(f"{path}: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def memory_and_speed(work: Path, params_path: Path, lengths: list[int]) -> list[dict]:
    videos = [(f"{s} s 720p", make_video(work / f"loop{s}_720.mp4", s, 1280, 720), 1280 * 720) for s in lengths]
    longest = max(lengths)
    videos.append((f"{longest} s 1080p", make_video(work / f"loop{longest}_1080.mp4", longest, 1920, 1080),
                   1920 * 1080))
    print("\n### Peak RSS and speed of one worker (one core) per video\n")
    print("| video | frames | decoded size if held whole | worker peak RSS | ingest frames/s | decord raw frames/s "
          "| OpenCV raw frames/s | ingest / decord | time: decode / Haar / crop / JPEG / rest |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for name, path, pixels in videos:
        m = measure_video(path, params_path)
        fps = m["frames"] / m["seconds"]
        spent = m["spent"]
        rest = m["seconds"] - sum(spent.values())
        parts = [spent["decode"], spent["detect"], spent["crop"], spent["encode"], rest]
        shares = " / ".join(f"{100 * v / m['seconds']:.0f}%" for v in parts)
        print(f"| {name} | {m['frames']} | {m['frames'] * pixels * 3 / 2**30:.1f} GiB | {m['maxrss_mb']:.0f} MiB | "
              f"{fps:.0f} | {m['decord_fps']:.0f} | {m['opencv_fps']:.0f} | {fps / m['decord_fps']:.2f}x | "
              f"{shares} |")
        rows.append({"name": name, **m, "fps": fps})
    return rows


def stage_run(work: Path, clips: list[Path], workers: int, params: dict) -> tuple[float, float]:
    """Run the ingest_macro stage on ``clips`` with ``workers``; return (stage wall s, flow's ingest s)."""
    run = work / f"stage-w{workers}"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    raw = json.loads(json.dumps(params))
    raw["paths"].update(macro_dir=str(run / "macro"), macro_cache_dir=str(run / "cache"))
    raw["macro"]["sources"]["bench"] = {"kind": "videos", "root": str(clips[0].parent), "csv": None, "fps": None}
    raw["macro"]["workers"] = workers
    (run / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "PREFECT_HOME": str(run / "prefect")}
    env.pop("PREFECT_API_URL", None)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "stages.ingest_macro", "--source", "bench", "--params",
                             str(run / "params.yaml")], capture_output=True, text=True, cwd=REPO, env=env,
                            check=False)
    wall = time.perf_counter() - start
    if result.returncode:
        raise RuntimeError(result.stdout[-3000:] + result.stderr[-3000:])
    line = next(x for x in (result.stdout + result.stderr).splitlines() if " ingested, " in x)
    return wall, float(line.split(") in ")[1].split(" s,")[0])


def speedup(work: Path, params_path: Path, n_clips: int) -> None:
    source = make_video(work / f"loop{3 * n_clips + 3}_720.mp4", 3 * n_clips + 3, 1280, 720)
    folder = work / "clips"
    folder.mkdir(exist_ok=True)
    clips = []
    for k in range(n_clips):
        clip = folder / f"clip{k:03d}.mp4"
        if not clip.is_file():
            ffmpeg(["-ss", str(3 * k), "-i", str(source), "-t", "3", "-c:v", "libx264", "-preset", "veryfast", "-crf",
                    "23", "-an", str(clip)])
        clips.append(clip)
    params = yaml.safe_load(params_path.read_text())
    print(f"\n### The ingest_macro stage on {n_clips} clips of 3 s at 720p (Prefect + Dask, empty cache)\n")
    print("| macro.workers | stage wall s | flow ingest s (cluster start included) | speed-up (flow) | "
          "speed-up (wall) |")
    print("|---|---|---|---|---|")
    base = None
    for workers in (1, 2):
        wall, flow = stage_run(work, clips, workers, params)
        base = base or (wall, flow)
        print(f"| {workers} | {wall:.1f} | {flow:.1f} | {base[1] / flow:.2f}x | {base[0] / wall:.2f}x |")


def face_crops(params_path: Path, size: int) -> list[np.ndarray]:
    """Every ``ok`` crop of the sample videos at ``size`` px, (size, size, 3) uint8 RGB."""
    import pipeline.ingest.macro as im
    from pipeline.config import load_params
    from pipeline.face.video import FrameSource, HaarFaceDetector

    params = load_params(params_path).macro.model_copy(update={"image_size_px": size})
    crops = []
    for path in sorted(SAMPLE.iterdir()):
        source = FrameSource(path)
        indices, times, _ = im._frame_plan(source.info, params.max_fps, None, None, path, False)
        for batch in im._track(source, indices, times, params, HaarFaceDetector()):
            crops += list(batch.crops)
    return crops


def rate(fn, items, repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        for item in items:
            fn(item)
    return repeat * len(items) / (time.perf_counter() - start)


def storage(params_path: Path) -> dict:
    import cv2
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from pipeline.io import decode_jpeg, decode_png, encode_jpeg, encode_png

    cv2.setNumThreads(1)

    def pil_jpeg(image):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=95, subsampling=0)
        return buffer.getvalue()

    results = {}
    print("\n### Storage of real face crops (one core)\n")
    print("| format | px | bytes/frame | vs raw | encode frames/s | decode frames/s | mean abs error | max abs error |")
    print("|---|---|---|---|---|---|---|---|")
    for size in (112, 224):
        crops = face_crops(params_path, size)
        raw_bytes = size * size * 3
        change = np.mean([np.abs(a.astype(np.int16) - b).mean() for a, b in itertools.pairwise(crops)])
        formats = {
            "PNG (level 1, pipeline.io)": (encode_png, decode_png),
            "JPEG q95 4:4:4, OpenCV": (lambda im: encode_jpeg(im, 95), decode_jpeg),
            "JPEG q95 4:4:4, Pillow": (pil_jpeg, decode_png),
        }
        for name, (encode, decode) in formats.items():
            encoded = [encode(c) for c in crops]
            decoded = [decode(e) for e in encoded]
            errors = [np.abs(a.astype(np.int16) - b) for a, b in zip(crops, decoded, strict=True)]
            per_frame = float(np.mean([len(e) for e in encoded]))
            results[(name, size)] = per_frame
            print(f"| {name} | {size} | {per_frame:.0f} | {per_frame / raw_bytes:.2f} | {rate(encode, crops):.0f} | "
                  f"{rate(decode, encoded, 2):.0f} | {np.mean([e.mean() for e in errors]):.2f} | "
                  f"{max(e.max() for e in errors)} |")
        for compression in ("none", "zstd"):
            table = pa.table({"image": pa.array([c.tobytes() for c in crops], pa.binary(raw_bytes))})
            buffer = io.BytesIO()
            pq.write_table(table, buffer, compression=compression)
            data = buffer.getvalue()

            def read(blob=data, side=size):
                column = pq.read_table(pa.BufferReader(blob)).column("image").combine_chunks()
                return np.frombuffer(column.buffers()[1], np.uint8).reshape(-1, side, side, 3)

            start = time.perf_counter()
            for _ in range(5):
                read()
            decode_rate = 5 * len(crops) / (time.perf_counter() - start)
            print(f"| raw uint8, Parquet fixed_size_binary, {compression} | {size} | {len(data) / len(crops):.0f} | "
                  f"{len(data) / len(crops) / raw_bytes:.2f} | – | {decode_rate:.0f} (whole column) | 0 | 0 |")
            results[(f"raw {compression}", size)] = len(data) / len(crops)
        print(f"| *mean abs change between consecutive crops (the signal)* | {size} | | | | | {change:.2f} | |")
    return results


def dfew_estimate(speed_rows: list[dict], sizes: dict) -> None:
    clips, seconds, fps = 16_000, 2.5, 27.5
    frames = clips * seconds * fps
    per_core = speed_rows[0]["fps"]  # 720p, one worker
    print("\n### A DFEW-sized corpus (16 k clips x 2.5 s x 27.5 fps = "
          f"{frames / 1e6:.2f} M frames, all kept: max_fps 30)\n")
    print(f"- ingest: {frames / per_core / 3600:.1f} core-hours at the measured {per_core:.0f} frames/s per worker "
          f"on 720p (DFEW's clips are mostly smaller: an upper bound); {frames / per_core / 3600 / 2:.1f} h on this "
          "2-core machine, ~{:.1f} h on 16 cores".format(frames / per_core / 3600 / 16))
    for size in (112, 224):
        jpeg = sizes[("JPEG q95 4:4:4, OpenCV", size)]
        png = sizes[("PNG (level 1, pipeline.io)", size)]
        raw = sizes[("raw none", size)]
        print(f"- disk at {size} px: JPEG q95 {frames * jpeg / 1e9:.1f} GB (PNG would be {frames * png / 1e9:.1f} "
              f"GB, raw {frames * raw / 1e9:.1f} GB), plus the index (~60 B/frame: "
              f"{frames * 60 / 1e6:.0f} MB); the cache holds the same bytes (hard links, not copies)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--work", type=Path, default=REPO / ".cache" / "bench-ingest")
    parser.add_argument("--lengths", type=int, nargs="+", default=[30, 60, 120])
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--skip", nargs="*", default=[], choices=["memory", "speedup", "storage"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if shutil.which("ffmpeg") is None and not {"memory", "speedup"} <= set(args.skip):
        parser.error("ffmpeg is not on PATH (apt-get install ffmpeg), or --skip memory speedup")
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"Machine: {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} at the start")
    speed_rows = [] if "memory" in args.skip else memory_and_speed(args.work, args.params, args.lengths)
    if "speedup" not in args.skip:
        speedup(args.work, args.params, args.clips)
    sizes = {} if "storage" in args.skip else storage(args.params)
    if speed_rows and sizes:
        dfew_estimate(speed_rows, sizes)
    print(f"\nload average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
