"""Per-video results of macro ingestion, kept outside DVC's outputs so that a killed or grown ingest resumes.

Each video is ingested into its own cache entry, ``<cache_dir>/<key[:2]>/<key>/``:

- ``frames-NNNNN.parquet``: its stored frames (``video, frame_index, time_s, image``: JPEG bytes), at most
  ``shard_frames`` rows each, written as the video streams;
- ``index.parquet``: every decoded frame with its box and status;
- ``video.json``: the video's row (status, reason, counts).

The entry is built in a temporary folder and renamed into place when the video is done, so an entry either is
complete or does not exist: a killed ingest loses only the videos it was working on. The key hashes everything
that shapes the entry: the video's id and path, the sha256 of its bytes (of an image sequence: of its files' names
and bytes), its time window, the ``macro`` params that shape frames (:data:`KEY_PARAMS`), the OpenCV and decord
versions and :data:`INGEST_VERSION` — bump it when a code change alters what ingestion produces.

The stage's output folder is assembled from entries: shards are hard-linked (copied across file systems), the
index and video tables are concatenated. Entries are never modified after their rename, so a link shared with
DVC's workspace is safe. Remove ``<cache_dir>`` to reclaim its space; nothing else depends on it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import MacroParams
from pipeline.face.align import make_detector
from pipeline.face.video import IMAGE_SUFFIXES, natural_key
from pipeline.ingest.macro import INDEX_COLUMNS, VIDEO_COLUMNS, SourceItem, stream_video
from pipeline.io import atomic_dir, atomic_path, write_json

__all__ = [
    "FRAME_SCHEMA",
    "INDEX_SCHEMA",
    "INGEST_VERSION",
    "KEY_PARAMS",
    "CacheEntry",
    "ShardWriter",
    "concat_parquet",
    "content_digest",
    "entry_key",
    "ingest_cached",
    "link_or_copy",
]

log = logging.getLogger(__name__)

INGEST_VERSION = 2  # 1: PNG shards written at the end of the stage; 2: streamed, JPEG, per-video shards
KEY_PARAMS = ("detector", "detect_every_s", "smooth_window_s", "box_scale", "image_size_px", "max_fps",
              "shard_frames", "jpeg_quality")

INDEX_SCHEMA = pa.schema([("video", pa.string()), ("frame_index", pa.int64()), ("time_s", pa.float64()),
                          ("x", pa.float64()), ("y", pa.float64()), ("w", pa.float64()), ("h", pa.float64()),
                          ("status", pa.string())])
FRAME_SCHEMA = pa.schema([("video", pa.string()), ("frame_index", pa.int64()), ("time_s", pa.float64()),
                          ("image", pa.binary())])


def content_digest(item: SourceItem, chunk_bytes: int = 1 << 22) -> str:
    """Hex sha256 of a video file's bytes, or of an image sequence's image files (names and bytes, in frame order).

    Frame order is :func:`pipeline.face.video.natural_key`'s, so a result cached when frames were read in name order
    is not reused.

    ``"missing"`` when the input does not exist (its ingestion records the ``decode_error``).
    """
    digest = hashlib.sha256()
    if item.sequence_fps is not None:
        if not item.path.is_dir():
            return "missing"
        files = sorted((p for p in item.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                       key=lambda p: (natural_key(p.stem), p.name))
    else:
        if not item.path.is_file():
            return "missing"
        files = [item.path]
    for file in files:
        if item.sequence_fps is not None:
            digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as handle:
            while chunk := handle.read(chunk_bytes):
                digest.update(chunk)
    return digest.hexdigest()


def _library_versions() -> dict[str, str]:
    import cv2
    import decord

    return {"opencv": cv2.__version__, "decord": getattr(decord, "__version__", "?")}


def entry_key(item: SourceItem, params: MacroParams, digest: str) -> str:
    """Hex sha256 naming the cache entry of ``item`` ingested with ``params`` (see the module docstring)."""
    payload = {"version": INGEST_VERSION, "video": item.video, "path": str(item.path), "content": digest,
               "sequence_fps": item.sequence_fps, "start_s": item.start_s, "end_s": item.end_s,
               "params": {name: getattr(params, name) for name in KEY_PARAMS}, **_library_versions()}
    if params.detector == "mtcnn":  # a Haar track does not depend on the template's margin
        payload["params"]["align_margin"] = params.align_margin
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class ShardWriter:
    """Callable sink for :func:`pipeline.ingest.macro.stream_video` that writes frame shards as they fill.

    Buffers frames and writes ``frames-NNNNN.parquet`` of ``shard_frames`` rows (the last one shorter) into
    ``folder``, each atomically. Memory: at most one shard of encoded frames.

    Attributes:
        names: the shard file names written so far.
    """

    def __init__(self, folder: Path, shard_frames: int):
        self.folder, self.shard_frames = folder, shard_frames
        self._buffer: list[pd.DataFrame] = []
        self._rows = 0
        self.names: list[str] = []

    def __call__(self, frames: pd.DataFrame) -> None:
        """Add ``frames`` (``video, frame_index, time_s, image``); write every full shard."""
        self._buffer.append(frames)
        self._rows += len(frames)
        while self._rows >= self.shard_frames:
            self._flush(self.shard_frames)

    def close(self) -> list[str]:
        """Write the last, partial shard; return every shard's file name."""
        if self._rows:
            self._flush(self._rows)
        return self.names

    def _flush(self, n_rows: int) -> None:
        table = pd.concat(self._buffer, ignore_index=True)
        name = f"frames-{len(self.names):05d}.parquet"
        with atomic_path(self.folder / name) as tmp:
            pq.write_table(pa.Table.from_pandas(table.iloc[:n_rows], schema=FRAME_SCHEMA, preserve_index=False),
                           tmp)
        self.names.append(name)
        rest = table.iloc[n_rows:]
        self._buffer, self._rows = ([rest] if len(rest) else []), len(rest)


@dataclass(frozen=True)
class CacheEntry:
    """A finished video in the cache.

    Attributes:
        folder: the entry's folder.
        row: its row of the video table (``VIDEO_COLUMNS``).
        shards: its shard file names, in frame order.
        reused: True when it was there already (this run did not ingest it).
        seconds: wall time this run spent on it (hashing included).
    """

    folder: Path
    row: dict
    shards: list[str]
    reused: bool
    seconds: float


def ingest_cached(item: SourceItem, params: MacroParams, cache_dir: Path, num_threads: int = 0) -> CacheEntry:
    """The cache entry of ``item``: reused if present, else ingested (streamed) and committed atomically.

    Args:
        item: the video.
        params: the ``macro`` section.
        cache_dir: the cache's root (``paths.macro_cache_dir``).
        num_threads: decoding threads (0: the decoder's choice; 1: one worker per core).

    Returns:
        The :class:`CacheEntry`. Bad input is recorded in its row (``decode_error``, ``no_face``), not raised.
    """
    start = time.perf_counter()
    key = entry_key(item, params, content_digest(item))
    folder = cache_dir / key[:2] / key
    if (folder / "video.json").is_file():
        meta = json.loads((folder / "video.json").read_text())
        return CacheEntry(folder, meta["row"], meta["shards"], True, time.perf_counter() - start)
    detector = make_detector(params.detector, "macro.detector")
    with atomic_dir(folder) as tmp:
        writer = ShardWriter(tmp, params.shard_frames)
        row, index = stream_video(item.path, params, detector, writer, video=item.video,
                                  sequence_fps=item.sequence_fps, start_s=item.start_s, end_s=item.end_s,
                                  num_threads=num_threads)
        shards = writer.close()
        with atomic_path(tmp / "index.parquet") as part:
            pq.write_table(pa.Table.from_pandas(index[INDEX_COLUMNS], schema=INDEX_SCHEMA, preserve_index=False),
                           part)
        write_json({"row": {c: row[c] for c in VIDEO_COLUMNS}, "shards": shards, "item": {
            "video": item.video, "path": str(item.path)}}, tmp / "video.json")
    meta = json.loads((folder / "video.json").read_text())  # the row as a reused entry gives it
    return CacheEntry(folder, meta["row"], shards, False, time.perf_counter() - start)


def link_or_copy(source: Path, destination: Path) -> None:
    """Hard-link ``source`` to ``destination`` (a copy where links are impossible, e.g. across file systems).

    Raises:
        FileExistsError: ``destination`` exists.
    """
    try:
        os.link(source, destination)
    except OSError as err:
        if isinstance(err, FileExistsError):
            raise
        shutil.copyfile(source, destination)


def concat_parquet(files: list[Path], destination: Path, schema: pa.Schema) -> int:
    """Concatenate Parquet ``files`` (each cast to ``schema``) into ``destination``, atomically.

    One file at a time: memory holds one input.

    Returns:
        The number of rows written.
    """
    rows = 0
    with atomic_path(destination) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for file in files:
            table = pq.read_table(file).select(schema.names).cast(schema)
            if table.num_rows:
                writer.write_table(table)
                rows += table.num_rows
    return rows
