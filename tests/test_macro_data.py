"""Streaming pre-training data: frames read from shards on demand, pairs drawn in the main process."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.data.macro import EpochPairs, MacroFrames, macro_shards, pair_loader
from pipeline.data.tensors import images_to_tensor
from tests.test_resume import write_macro_shards


@pytest.fixture()
def frames(tmp_path) -> MacroFrames:
    write_macro_shards(tmp_path / "macro", videos=("a", "b", "c"), frames_per_video=20)
    # a 4 KB cache: shards are read again and again
    return MacroFrames(macro_shards(tmp_path / "macro", ["src"]), 32, cache_mb=0.004)


def test_frames_equal_the_in_memory_decode_and_the_cache_stays_bounded(frames):
    import pandas as pd

    table = pd.concat([pd.read_parquet(shard) for shard in frames.shards], ignore_index=True)
    in_memory = images_to_tensor(table["image"].tolist(), 32)  # what pre-training held in RAM before
    order = np.random.default_rng(0).permutation(len(frames))
    for position in order:
        assert torch.equal(frames.image(int(position)), in_memory[position])
        assert len(frames._cache) == 1  # never more than the budget (at least one shard)
    assert frames.index[["video", "frame_index"]].equals(table[["video", "frame_index"]])


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_follow_the_drawn_pairs_whatever_the_workers(frames, workers):
    pairs = EpochPairs(frames.index, np.arange(len(frames)), (0.05, 0.3))
    pairs.draw(24, np.random.default_rng(1))
    pairs.shuffle(torch.Generator().manual_seed(0))
    expected = list(pairs)
    loaded = list(pair_loader(frames, pairs, batch_size=8, workers=workers, pin_memory=False))
    assert len(loaded) == 3
    sources = torch.cat([source for source, _ in loaded])
    futures = torch.cat([future for _, future in loaded])
    for k, (source, future) in enumerate(expected):
        assert torch.equal(sources[k], frames.image(source)) and torch.equal(futures[k], frames.image(future))
        assert frames.index["video"][source] == frames.index["video"][future]  # one video per pair


def test_ranks_draw_sources_from_disjoint_parts(frames):
    parts = [EpochPairs(frames.index, np.arange(len(frames)), (0.05, 0.3), rank, 3) for rank in range(3)]
    sources = [set(part.sources().tolist()) for part in parts]
    assert not (sources[0] & sources[1]) and not (sources[0] & sources[2]) and not (sources[1] & sources[2])
    whole = set(EpochPairs(frames.index, np.arange(len(frames)), (0.05, 0.3)).sources().tolist())
    assert set.union(*sources) == whole
    for rank, part in enumerate(parts):
        part.draw(50, np.random.default_rng(rank))
        assert {source for source, _ in part} <= sources[rank]
