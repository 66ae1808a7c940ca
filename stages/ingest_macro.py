"""DVC stage ``ingest_macro``: macro-expression videos → aligned face frames in Parquet shards.

Outputs under ``paths.macro_dir``: ``frames-NNNNN.parquet`` (``video, frame_index, time_s, image`` PNG bytes),
``index.parquet`` (every decoded frame with its box and status), ``videos.parquet`` (one row per video with its
status and reason: ``ok``, ``no_face``, ``decode_error``). Run: ``python -m stages.ingest_macro``.
"""

from __future__ import annotations

from pipeline.orchestration import flow, get_run_logger, run_stage, stage_task  # first: sets Prefect defaults

from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from pipeline.config import MacroParams, load_params
from pipeline.ingest_macro import MacroVideoResult, find_videos, ingest_video
from pipeline.io import atomic_dir, write_json, write_parquet
from pipeline.video import HaarFaceDetector


@stage_task(name="ingest-video")
def ingest_one(path: Path, params: MacroParams) -> MacroVideoResult:
    detector = HaarFaceDetector() if params.detector == "haar" else None
    return ingest_video(path, params, detector)


def _write_shards(frames: list[pd.DataFrame], out: Path, shard_frames: int) -> int:
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    n_shards = 0
    for start in range(0, len(table), shard_frames):
        write_parquet(table.iloc[start : start + shard_frames], out / f"frames-{n_shards:05d}.parquet")
        n_shards += 1
    return n_shards


@flow(name="ingest-macro")
def ingest_macro_flow(params_path: str = "params.yaml") -> dict:
    """Ingest every video in ``paths.samples_dir`` and ``paths.demo_macro_dir``."""
    params = load_params(params_path)
    logger = get_run_logger()
    videos = find_videos([params.paths.samples_dir, params.paths.demo_macro_dir], params.macro.video_suffixes)
    results = [ingest_one(path, params.macro) for path in tqdm(videos, desc="ingest videos", disable=None)]
    table = pd.DataFrame([r.video for r in results])
    with atomic_dir(params.paths.macro_dir) as out:
        n_shards = _write_shards([r.frames for r in results if len(r.frames)], out, params.macro.shard_frames)
        write_parquet(pd.concat([r.index for r in results if len(r.index)], ignore_index=True),
                      out / "index.parquet")
        write_parquet(table, out / "videos.parquet")
        summary = {"videos": table["status"].value_counts().to_dict(), "frames_ok": int(table["n_ok"].sum()),
                   "frames_decoded": int(table["n_frames"].sum()), "shards": n_shards,
                   "skipped": table.loc[table["status"] != "ok", ["video", "status", "reason"]].to_dict("records")}
        write_json(summary, out / "summary.json")
    for row in summary["skipped"]:
        logger.warning("video %s recorded as %s: %s", row["video"], row["status"], row["reason"])
    logger.info("%d videos: %d of %d frames with a face, %d shards", len(table), summary["frames_ok"],
                summary["frames_decoded"], n_shards)
    if summary["frames_ok"] == 0:
        raise ValueError("no video yielded a face frame; see videos.parquet for the reasons")
    return summary


def main() -> None:
    run_stage(ingest_macro_flow)


if __name__ == "__main__":
    main()
