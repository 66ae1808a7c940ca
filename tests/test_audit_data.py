"""Audit of 34752a0, data side (issue 19, items 5 and 6): pre-training read leftover folders and removed sources,
and image sequences were read in name order. Each case gave a silent wrong result before."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.data.macro import MacroFrames, macro_shards
from pipeline.face.video import FrameSource, VideoDecodeError, natural_key, open_sequence
from pipeline.ingest.macro import SourceItem
from pipeline.ingest.macro_cache import content_digest
from tests.test_resume import write_macro_shards


def _copy_shards(source, target):
    target.mkdir(parents=True)
    for shard in source.glob("frames-*.parquet"):
        (target / shard.name).write_bytes(shard.read_bytes())


def test_pretraining_reads_only_the_sources_of_macro_sources(tmp_path):
    """Before: ``*/frames-*.parquet`` also matched a killed stage's ``.src.partial-*`` / ``.src.old-*`` and the
    folder of a source removed from ``macro.sources``: with one leftover, 605 (video, frame) rows were duplicated."""
    macro = tmp_path / "macro"
    write_macro_shards(macro, videos=("a", "b"), frames_per_video=12)
    _copy_shards(macro / "src", macro / ".src.partial-1234")  # io.atomic_dir's leftovers of a killed stage
    _copy_shards(macro / "src", macro / ".src.old-5678")
    write_macro_shards(tmp_path / "removed", videos=("z",), frames_per_video=12)
    _copy_shards(tmp_path / "removed" / "src", macro / "removed")  # a source since taken out of macro.sources
    assert len(list(macro.glob("*/frames-*.parquet"))) == 7  # what the old glob read: 2 + 2 + 2 + 1
    frames = MacroFrames(macro_shards(macro, ["src"]), 32)
    assert len(frames) == 24 and not frames.index.duplicated(["video", "frame_index"]).any()
    assert set(frames.index["video"]) == {"a", "b"}
    assert [p.parent.name for p in frames.shards] == ["src", "src"]


def test_a_source_that_was_not_ingested_is_named(tmp_path):
    write_macro_shards(tmp_path / "macro")
    with pytest.raises(FileNotFoundError, match=r"no folder of the macro source 'ckplus'; run `dvc repro "
                                                r"ingest_macro@ckplus`"):
        macro_shards(tmp_path / "macro", ["src", "ckplus"])
    (tmp_path / "macro" / "ckplus").mkdir()  # ingested, every video skipped: no shard, and that is no error
    assert len(macro_shards(tmp_path / "macro", ["src", "ckplus"])) == 2


def _sequence(folder, names):
    """One grey PNG per name, its grey level = its frame number x 10 (so the order read is visible)."""
    folder.mkdir(parents=True)
    for name in names:
        number = int("".join(c for c in name if c.isdigit()))
        cv2.imwrite(str(folder / f"{name}.png"), np.full((16, 16, 3), number * 10, np.uint8))


def test_an_image_sequence_is_read_in_frame_order_not_name_order(tmp_path):
    """Before: ``img1, img10, img11, img12, img2, …`` (sorted names): every CK+-style pair in the wrong order."""
    names = [f"img{n}" for n in range(1, 13)]
    _sequence(tmp_path / "seq", names)
    files, info = open_sequence(tmp_path / "seq", fps=30.0)
    assert [p.stem for p in files] == names and info.n_frames == 12
    source = FrameSource(tmp_path / "seq", sequence_fps=30.0)
    levels = [int(frame[0, 0, 0]) for _, frames in source.chunks(np.arange(12)) for frame in frames]
    source.close()
    assert levels == [10 * n for n in range(1, 13)]


def test_ckplus_names_sort_by_their_frame_number():
    names = ["S005_001_00000010", "S005_001_00000009", "S005_001_00000011"]
    assert sorted(names, key=natural_key) == ["S005_001_00000009", "S005_001_00000010", "S005_001_00000011"]


@pytest.mark.parametrize("names", [["img1.png", "img01.png"], ["img1.png", "img1.jpg"]])
def test_two_files_of_one_frame_number_are_refused_naming_both(tmp_path, names):
    folder = tmp_path / "seq"
    folder.mkdir()
    for name in [*names, "img2.png"]:
        cv2.imwrite(str(folder / name), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(VideoDecodeError, match="have the same frame number") as err:
        open_sequence(folder, fps=30.0)
    assert all(name in str(err.value) for name in names)


def test_a_sequence_cached_in_name_order_is_not_reused(tmp_path):
    """The ingest cache keys a sequence by its files in frame order: a result cached by the old reader (same files,
    name order) has another digest, so a resumed ingest reads the sequence again instead of reusing wrong pairs."""
    import hashlib

    names = [f"img{n}" for n in range(1, 12)]
    _sequence(tmp_path / "seq", names)
    digest = content_digest(SourceItem("ckplus/seq", tmp_path / "seq", sequence_fps=30.0))
    old = hashlib.sha256()
    for file in sorted((tmp_path / "seq").iterdir()):  # the old order
        old.update(file.name.encode() + b"\0" + file.read_bytes())
    assert digest != old.hexdigest()
