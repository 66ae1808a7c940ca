"""Macro frames for pre-training, streamed from the ``ingest_macro`` shards (DESIGN §7, "Scale").

Only the frame index (``video, frame_index, time_s`` and where each frame is stored: about 40 bytes a frame) is
held for the whole corpus. Images are read from their Parquet shard when a pair needs them: a shard's JPEG bytes
stay in a least-recently-used cache of ``cache_mb`` megabytes per process, and each frame is decoded when it is
used. Memory is therefore bounded by the cache, whatever the corpus size: with a cache larger than the corpus'
JPEG bytes (the demo) each shard is read once per process; with a corpus far larger (DFEW and beyond), shards
are read again as pairs need them.

Pairs are drawn in the main process (:class:`EpochPairs`, the future-frame sampler with horizons in seconds,
from a seeded stream that a resumed run restores), so the pairs and their order do not depend on the number of
DataLoader workers; workers only read and decode. Under DDP each rank draws its pairs' SOURCE frames from its own
disjoint part of the training frames (every ``world_size``-th valid source frame, starting at its rank).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from pipeline.io import decode_jpeg

__all__ = ["EpochPairs", "FuturePairSampler", "MacroFrames", "PairDataset", "macro_shards", "pair_loader"]

PAIR_INDEX_COLUMNS = ["video", "frame_index", "time_s"]  # what pre-training reads of a shard's index


def macro_shards(macro_dir: Path, sources: Iterable[str]) -> list[Path]:
    """The frame shards of the macro sources named ``sources`` (``macro.sources``), source by source in name order.

    A source's shards are ``<macro_dir>/<source>/frames-*.parquet``, in name order.

    Only the named sources' folders are read: not the folder of a source since removed from ``macro.sources``,
    nor ``pipeline.io``'s leftovers of a killed stage (``.<name>.partial-*``, ``.<name>.old-*``), whose shards
    would otherwise be read twice.

    A source folder without shards is kept as it is (every video of it was skipped: its ``index.parquet`` says
    why); :class:`MacroFrames` refuses an empty list.

    Raises:
        FileNotFoundError: a source has no folder (naming it and the stage that writes it).
    """
    shards = []
    for source in sorted(sources):
        folder = Path(macro_dir) / source
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no folder of the macro source {source!r}; run "
                                    f"`dvc repro ingest_macro@{source}`")
        shards += sorted(folder.glob("frames-*.parquet"))
    return shards


class MacroFrames:
    """Every stored frame of the given macro shards, read on demand.

    Args:
        shards: the ``frames-*.parquet`` shards to read (:func:`macro_shards`): ``video, frame_index, time_s,
            image`` columns; ``image`` JPEG or PNG bytes of an RGB face crop.
        size_px: the side frames are returned at (resized, bilinear with antialiasing, when stored otherwise).
        cache_mb: the per-process budget of the shard cache, megabytes of JPEG bytes (at least one shard is kept).

    Attributes:
        index: one row per stored frame, in shard order: ``video, frame_index, time_s``.

    Raises:
        FileNotFoundError: ``shards`` is empty.
    """

    def __init__(self, shards: Sequence[Path], size_px: int, cache_mb: float = 512.0) -> None:
        self.shards = list(shards)
        if not self.shards:
            raise FileNotFoundError("no macro frame shard to read; run the ingest_macro stages")
        parts, shard_of, row_of = [], [], []
        for number, shard in enumerate(self.shards):
            table = pq.read_table(shard, columns=PAIR_INDEX_COLUMNS).to_pandas()
            parts.append(table)
            shard_of.append(np.full(len(table), number, np.int32))
            row_of.append(np.arange(len(table), dtype=np.int32))
        self.index = pd.concat(parts, ignore_index=True)
        self._shard, self._row = np.concatenate(shard_of), np.concatenate(row_of)
        self.size_px = size_px
        self.cache_bytes = int(cache_mb * 2**20)
        self._cache: OrderedDict[int, list] = OrderedDict()
        self._cached_bytes = 0

    def __len__(self) -> int:
        return len(self.index)

    def _shard_images(self, number: int) -> list:
        """The JPEG bytes of shard ``number``, through the LRU cache."""
        if number in self._cache:
            self._cache.move_to_end(number)
            return self._cache[number]
        column = pq.read_table(self.shards[number], columns=["image"]).column("image")
        images = column.to_pylist()
        size = sum(len(data) for data in images)
        while self._cache and self._cached_bytes + size > self.cache_bytes:
            _, evicted = self._cache.popitem(last=False)
            self._cached_bytes -= sum(len(data) for data in evicted)
        self._cache[number] = images
        self._cached_bytes += size
        return images

    def image(self, position: int) -> torch.Tensor:
        """Frame ``position`` (a row of :attr:`index`) as ``(3, size_px, size_px) uint8`` RGB."""
        data = self._shard_images(int(self._shard[position]))[int(self._row[position])]
        image = torch.from_numpy(decode_jpeg(data)).permute(2, 0, 1)  # (3, H, W)
        if image.shape[-2:] != (self.size_px, self.size_px):
            resized = F.interpolate(image[None].float(), size=(self.size_px, self.size_px), mode="bilinear",
                                    antialias=True)
            image = resized[0].round().clamp(0, 255).to(torch.uint8)
        return image.contiguous()


class PairDataset(Dataset):
    """``dataset[(source, future)]`` → the two frames, ``(3, S, S) uint8`` each.

    ``source`` and ``future`` are positions in :attr:`MacroFrames.index`.
    """

    def __init__(self, frames: MacroFrames) -> None:
        self.frames = frames

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, pair: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        source, future = pair
        return self.frames.image(source), self.frames.image(future)


class FuturePairSampler:
    """Samples (source frame, future frame) index pairs of the same video with a horizon in seconds (DESIGN §4).

    Args:
        index: one row per stored frame, in storage order, with columns ``video`` and ``time_s``.
        horizon_s: ``(min, max)`` seconds between source and future; converted per video through its real
            frame times, so 30 fps and 200 fps footage mean the same thing.
        part: ``(k, n)``: draw sources only from the k-th of n disjoint parts of the valid source frames (every
            n-th, from the k-th): data-parallel ranks read disjoint parts of the corpus.

    Raises:
        ValueError: no frame has a future frame within the horizon.
    """

    def __init__(self, index: pd.DataFrame, horizon_s: tuple[float, float], part: tuple[int, int] = (0, 1)):
        times = index["time_s"].to_numpy(dtype=float)
        video_rank = pd.factorize(index["video"], sort=True)[0]
        order = np.lexsort((times, video_rank))  # by video, then time
        # one increasing time axis: each video starts after the previous one ends plus more than the horizon,
        # so searchsorted is valid over the concatenation and a future frame never comes from another video
        spacing = np.ptp(times) + horizon_s[1] + 1.0
        axis = times[order] + video_rank[order] * spacing
        first = np.searchsorted(axis, axis + horizon_s[0] - 1e-9, side="left")
        last = np.searchsorted(axis, axis + horizon_s[1] + 1e-9, side="right")
        first = np.maximum(first, np.arange(len(axis)) + 1)  # the future frame is strictly later
        valid = first < last
        if not valid.any():
            raise ValueError(f"no frame has a future frame {horizon_s} s ahead in the same video")
        self._order, self._first, self._last = order, first, last
        rank, world_size = part
        self._sources = np.flatnonzero(valid)[rank::world_size]  # this part's sources: disjoint between parts
        if not len(self._sources):
            raise ValueError(f"part {rank} of {world_size} has no source frame ({valid.sum()} in all)")

    def source_rows(self) -> np.ndarray:
        """Row positions into ``index`` of the frames this part may draw as sources."""
        return self._order[self._sources]

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(source, future)`` row positions into ``index``, each ``(n,) int64``."""
        sources = rng.choice(self._sources, size=n)
        futures = rng.integers(self._first[sources], self._last[sources])
        return self._order[sources], self._order[futures]


class EpochPairs(Sampler):
    """The (source, future) pairs of one epoch, in order: what a DataLoader asks its workers to read.

    Args:
        index: the frame index (``video``, ``time_s``) of the frames pairs may use (e.g. the training videos').
        positions: ``(len(index),)`` the positions in :attr:`MacroFrames.index` of those frames.
        horizon_s: ``(min, max)`` seconds between source and future (:class:`pipeline.data.macro.FuturePairSampler`).
        rank: this process's rank and ``world_size`` the number of ranks: the rank's sources are every
            ``world_size``-th valid source frame from ``rank`` (disjoint between ranks).
        world_size: see ``rank``.
    """

    def __init__(self, index: pd.DataFrame, positions: np.ndarray, horizon_s: tuple[float, float],
                 rank: int = 0, world_size: int = 1) -> None:
        self._sampler = FuturePairSampler(index, horizon_s, part=(rank, world_size))
        self._positions = positions
        self._pairs: list[tuple[int, int]] = []

    def draw(self, n: int, rng: np.random.Generator) -> None:
        """Draw this epoch's ``n`` pairs from ``rng`` (the pair sampler's stream)."""
        source, future = self._sampler.sample(n, rng)
        self._pairs = list(zip(self._positions[source].tolist(), self._positions[future].tolist(), strict=True))

    def shuffle(self, generator: torch.Generator) -> None:
        """Put this epoch's pairs in a random order drawn from ``generator`` (the batch stream)."""
        order = torch.randperm(len(self._pairs), generator=generator).tolist()
        self._pairs = [self._pairs[i] for i in order]

    def sources(self) -> np.ndarray:
        """Positions of the frames this rank may draw as sources."""
        return self._positions[self._sampler.source_rows()]

    def __len__(self) -> int:
        return len(self._pairs)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self._pairs)


def pair_loader(frames: MacroFrames, pairs: Sampler, batch_size: int, workers: int,
                pin_memory: bool) -> DataLoader:
    """A DataLoader of ``(source, future)`` batches, each ``(B, 3, S, S) uint8``, in the order ``pairs`` gives.

    ``workers`` > 0 read and decode in that many processes (persistent across epochs, each with its own shard
    cache); 0 reads in this process. ``pin_memory`` on CUDA, for asynchronous copies.
    """
    return DataLoader(PairDataset(frames), batch_size=batch_size, sampler=pairs, num_workers=workers,
                      pin_memory=pin_memory, persistent_workers=workers > 0, drop_last=False)
