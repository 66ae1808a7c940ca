"""DVC stage ``ingest_macro@<source>``: one ``macro.sources`` entry → aligned face frames in Parquet shards.

Outputs under ``paths.macro_dir/<source>/``: ``frames-<name>-NNNNN.parquet`` (per video ``<source>/<name>``, at
most ``macro.shard_frames`` rows each: ``video, frame_index, time_s, image`` JPEG bytes), ``index.parquet`` (every
decoded frame with its box and status), ``videos.parquet`` (one row per video: status ``ok``, ``no_face`` or
``decode_error``, and the reason) and ``summary.json``.

Each video is one Prefect task run (``ingest <video id>``), streamed into the per-video cache
(``paths.macro_cache_dir``, :mod:`pipeline.ingest.macro_cache`): a killed run resumes, a grown source ingests only its
new videos. Tasks run on a Dask cluster through prefect-dask: a local one of ``macro.workers`` single-threaded
processes (0 = one per core), the scheduler at ``macro.cluster``, or the one in ``DASK_SCHEDULER_ADDRESS``
(:func:`pipeline.orchestration.stage.dask_task_runner`). Neither is a DVC param: the outputs do not
depend on them. Run: ``python -m stages.ingest_macro --source samples``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pandas as pd

from pipeline.config import MacroParams, load_params
from pipeline.ingest.macro import SourceItem, list_source
from pipeline.ingest.macro_cache import INDEX_SCHEMA, CacheEntry, concat_parquet, ingest_cached, link_or_copy
from pipeline.io import atomic_dir, write_json, write_parquet
from pipeline.orchestration.stage import dask_task_runner, enter_workdir, flow, get_run_logger, run_stage, stage_task


@stage_task(name="ingest-video", task_run_name="ingest {item.video}")
def ingest_one(item: SourceItem, params: MacroParams, cache_dir: Path, workdir: str, threads: int) -> CacheEntry:
    enter_workdir(workdir)  # a worker of an existing cluster: paths are relative to the project's folder
    if threads:
        import cv2

        cv2.setNumThreads(threads)
    entry = ingest_cached(item, params, cache_dir, num_threads=threads)
    row = entry.row
    get_run_logger().info("%s %s: %s, %d of %d frames with a face, %.1f s%s", "reused" if entry.reused else
                          "ingested", item.video, row["status"], row["n_ok"], row["n_frames"], entry.seconds,
                          f" ({row['reason']})" if row["reason"] else "")
    return entry


def assemble(entries: list[CacheEntry], source: str, out: Path) -> dict:
    """Write the stage's output folder ``out`` from the cache entries (in the source's order); return the
    summary."""
    n_shards = 0
    for entry in entries:
        name = entry.row["video"].split("/", 1)[-1]
        for k, shard in enumerate(entry.shards):
            link_or_copy(entry.folder / shard, out / f"frames-{name}-{k:05d}.parquet")
            n_shards += 1
    concat_parquet([entry.folder / "index.parquet" for entry in entries], out / "index.parquet", INDEX_SCHEMA)
    table = pd.DataFrame([entry.row for entry in entries])
    write_parquet(table, out / "videos.parquet")
    summary = {"videos": table["status"].value_counts().to_dict(), "frames_ok": int(table["n_ok"].sum()),
               "frames_decoded": int(table["n_frames"].sum()), "shards": n_shards,
               "skipped": table.loc[table["status"] != "ok", ["video", "status", "reason"]].to_dict("records"),
               "partial": table.loc[(table["status"] == "ok") & (table["reason"] != ""),
                                    ["video", "reason"]].to_dict("records")}
    write_json(summary, out / "summary.json")
    return summary


@flow(name="ingest-macro")
def ingest_macro_flow(source: str, params_path: str = "params.yaml") -> dict:
    """Ingest every video of ``macro.sources[source]``; return the summary plus ``ingested``/``reused`` counts."""
    params = load_params(params_path)
    if source not in params.macro.sources:
        raise ValueError(f"no macro source {source!r}; params.yaml has {sorted(params.macro.sources)}")
    logger = get_run_logger()
    items = list_source(source, params.macro.sources[source], params.macro.video_suffixes)
    if not items:
        raise ValueError(f"macro source {source!r} has no video under {params.macro.sources[source].root}")
    runner = dask_task_runner(params.macro.workers, params.macro.cluster, len(items))
    start = time.perf_counter()
    entries: dict[str, CacheEntry] = {}
    failures: list[str] = []
    with runner:
        futures = {runner.submit(ingest_one, {"item": item, "params": params.macro,
                                              "cache_dir": params.paths.macro_cache_dir, "workdir": os.getcwd(),
                                              "threads": 1}): item for item in items}
        for future, item in futures.items():
            try:
                entries[item.video] = future.result()
            except Exception as err:  # the others finish (and stay cached); the stage fails naming each video
                failures.append(f"{item.video} ({item.path}): {type(err).__name__}: {err}")
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(items)} videos failed (the rest are cached; rerun to resume): "
                           + "; ".join(failures))
    ordered = [entries[item.video] for item in items]
    with atomic_dir(params.paths.macro_dir / source) as out:
        summary = assemble(ordered, source, out)
    for row in summary["skipped"]:
        logger.warning("video %s recorded as %s: %s", row["video"], row["status"], row["reason"])
    for row in summary["partial"]:
        logger.warning("video %s kept its frames before a break: %s", row["video"], row["reason"])
    reused = sum(entry.reused for entry in ordered)
    logger.info("%s: %d videos (%d ingested, %d reused from %s) in %.1f s, %d of %d frames with a face, %d shards",
                source, len(ordered), len(ordered) - reused, reused, params.paths.macro_cache_dir,
                time.perf_counter() - start, summary["frames_ok"], summary["frames_decoded"], summary["shards"])
    if summary["frames_ok"] == 0:
        raise ValueError(f"macro source {source!r} yielded no face frame; see its videos.parquet for the reasons")
    return {**summary, "ingested": len(ordered) - reused, "reused": reused}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="a key of macro.sources in params.yaml")
    parser.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    args = parser.parse_args(argv)
    run_stage(ingest_macro_flow, source=args.source, params_path=args.params)


if __name__ == "__main__":
    main()
