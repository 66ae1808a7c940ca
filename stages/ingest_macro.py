"""DVC stage ``ingest_macro@<source>``: one ``macro.sources`` entry → aligned face frames in Parquet shards.

Outputs under ``paths.macro_dir/<source>/``: ``frames-NNNNN.parquet`` (``video, frame_index, time_s, image`` PNG
bytes), ``index.parquet`` (every decoded frame with its box and status), ``videos.parquet`` (one row per video:
status ``ok``, ``no_face`` or ``decode_error``, and the reason) and ``summary.json``. Video ids are
``<source>/<name>``. Run: ``python -m stages.ingest_macro --source samples``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from pipeline.config import MacroParams, load_params
from pipeline.ingest_macro import MacroVideoResult, SourceItem, ingest_video, list_source
from pipeline.io import atomic_dir, write_json, write_parquet
from pipeline.orchestration import flow, get_run_logger, run_stage, stage_task
from pipeline.video import HaarFaceDetector


@stage_task(name="ingest-video")
def ingest_one(item: SourceItem, params: MacroParams) -> MacroVideoResult:
    detector = HaarFaceDetector() if params.detector == "haar" else None
    return ingest_video(item.path, params, detector, video=item.video, sequence_fps=item.sequence_fps,
                        start_s=item.start_s, end_s=item.end_s)


def _write_shards(frames: list[pd.DataFrame], out: Path, shard_frames: int) -> int:
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    n_shards = 0
    for start in range(0, len(table), shard_frames):
        write_parquet(table.iloc[start : start + shard_frames], out / f"frames-{n_shards:05d}.parquet")
        n_shards += 1
    return n_shards


@flow(name="ingest-macro")
def ingest_macro_flow(source: str, params_path: str = "params.yaml") -> dict:
    """Ingest every video of ``macro.sources[source]``."""
    params = load_params(params_path)
    if source not in params.macro.sources:
        raise ValueError(f"no macro source {source!r}; params.yaml has {sorted(params.macro.sources)}")
    logger = get_run_logger()
    items = list_source(source, params.macro.sources[source], params.macro.video_suffixes)
    if not items:
        raise ValueError(f"macro source {source!r} has no video under {params.macro.sources[source].root}")
    results = [ingest_one(item, params.macro) for item in tqdm(items, desc=f"ingest {source}", disable=None)]
    table = pd.DataFrame([r.video for r in results])
    with atomic_dir(params.paths.macro_dir / source) as out:
        n_shards = _write_shards([r.frames for r in results if len(r.frames)], out, params.macro.shard_frames)
        indexes = [r.index for r in results if len(r.index)]
        write_parquet(pd.concat(indexes, ignore_index=True) if indexes else pd.DataFrame(), out / "index.parquet")
        write_parquet(table, out / "videos.parquet")
        summary = {"videos": table["status"].value_counts().to_dict(), "frames_ok": int(table["n_ok"].sum()),
                   "frames_decoded": int(table["n_frames"].sum()), "shards": n_shards,
                   "skipped": table.loc[table["status"] != "ok", ["video", "status", "reason"]].to_dict("records")}
        write_json(summary, out / "summary.json")
    for row in summary["skipped"]:
        logger.warning("video %s recorded as %s: %s", row["video"], row["status"], row["reason"])
    logger.info("%s: %d videos, %d of %d frames with a face, %d shards", source, len(table), summary["frames_ok"],
                summary["frames_decoded"], n_shards)
    if summary["frames_ok"] == 0:
        raise ValueError(f"macro source {source!r} yielded no face frame; see its videos.parquet for the reasons")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="a key of macro.sources in params.yaml")
    args = parser.parse_args(argv)
    run_stage(ingest_macro_flow, source=args.source)


if __name__ == "__main__":
    main()
