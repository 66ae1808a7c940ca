"""Tests of the demo renderer (pipeline.synth) on the real ``synthesize`` params, shrunk to a few small clips."""

from __future__ import annotations

import concurrent.futures
import hashlib
import multiprocessing
from pathlib import Path

import cv2
import numpy as np
import openpyxl
import pandas as pd
import pytest

from pipeline.config import AU_MASK_DIR, SynthesizeParams, load_params
from pipeline.synth import render_demo
from pipeline.synth.au import (
    AU_BUMPS,
    CLASS_PATTERNS,
    Expression,
    action_units_cell,
    au_field,
    emotion_of,
    expression_field,
)
from pipeline.synth.demo import (
    CODING_SHEET,
    LANDMARKS_5,
    apex_offsets,
    macro_identity,
    plan_micro_clips,
    subject_identity,
)
from pipeline.synth.face import Layout, eyelid_maps, landmarks, sample_identity
from pipeline.synth.render import raised_cosine

ROOT = Path(__file__).resolve().parents[1]
CASME2_COLUMNS = [
    "Subject", "Filename", "Unnamed: 2", "OnsetFrame", "ApexFrame", "OffsetFrame", "Unnamed: 6", "Action Units",
    "Estimated Emotion",
]
# Written out here, not imported, so that a change to the module's tables fails the test.
PATTERNS = {
    "positive": {"6+12": "happiness", "12": "happiness"},
    "negative": {"4": "disgust", "9": "disgust", "10": "disgust", "14": "repression", "15+17": "repression"},
    "surprise": {"1+2": "surprise", "1+2+25": "surprise", "1+2+26": "surprise"},
}


def shrink(params: SynthesizeParams, **overrides) -> SynthesizeParams:
    """Return a validated copy of ``params`` with ``overrides``."""
    return SynthesizeParams.model_validate({**params.model_dump(), **overrides})


@pytest.fixture(scope="module")
def params() -> SynthesizeParams:
    """Load the real ``synthesize`` section, shrunk: 2 subjects, 1 clip per class, 64 px, 3 s videos at 15 fps."""
    real = load_params(ROOT / "params.yaml").synthesize
    return shrink(
        real, n_subjects=2, clips_per_class=1, face_size_px=64, macro_video_duration_s=3.0,
        macro_duration_s=(0.5, 1.5), macro_fps=15.0, macro_identities=2,
    )


@pytest.fixture()
def demo(params, tmp_path) -> tuple[pd.DataFrame, Path, Path]:
    """Render the shrunk demo into this test's own tmp_path: (micro ground truth, micro_dir, macro_dir)."""
    truth = render_demo(params, tmp_path / "micro", tmp_path / "macro", progress=False)
    return truth, tmp_path / "micro", tmp_path / "macro"


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_same_seed_same_files_other_seed_other_frames(params, tmp_path):
    a = render_demo(params, tmp_path / "a" / "micro", tmp_path / "a" / "macro", progress=False)
    b = render_demo(params, tmp_path / "b" / "micro", tmp_path / "b" / "macro", progress=False)
    pd.testing.assert_frame_equal(a, b)
    digest_a, digest_b = _tree_digest(tmp_path / "a"), _tree_digest(tmp_path / "b")
    assert len(digest_a) > 100 and digest_a == digest_b
    c = render_demo(shrink(params, seed=params.seed + 1), tmp_path / "c" / "micro", tmp_path / "c" / "macro",
                    progress=False)
    assert not a.equals(c) and _tree_digest(tmp_path / "c") != digest_a


def _in_processes_last_first(items):
    """Run the render items in 2 other processes, submitted in reverse order (results yielded in order)."""
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(fn, *args) for fn, args in reversed(items)][::-1]
        yield from (future.result() for future in futures)


def test_rendering_in_other_processes_and_order_gives_the_same_files(demo, params, tmp_path):
    """What lets stages.synthesize render subjects and identities as parallel Dask tasks."""
    serial_truth, micro_dir, _ = demo
    parallel = render_demo(params, tmp_path / "p" / "micro", tmp_path / "p" / "macro", progress=False,
                           map_items=_in_processes_last_first)
    pd.testing.assert_frame_equal(parallel, serial_truth)
    assert _tree_digest(tmp_path / "p") == {k: v for k, v in _tree_digest(micro_dir.parent).items()
                                             if k.startswith(("micro/", "macro/"))}


def test_coding_sheet_has_casme2_layout_and_every_frame_exists(demo, params):
    truth, micro_dir, _ = demo
    sheet = pd.read_excel(micro_dir / CODING_SHEET, sheet_name="Sheet1")
    assert list(sheet.columns) == CASME2_COLUMNS
    assert len(sheet) == len(truth) == params.n_subjects * 3 * params.clips_per_class
    assert sheet["Unnamed: 2"].isna().all() and sheet["Unnamed: 6"].isna().all()
    book = openpyxl.load_workbook(micro_dir / CODING_SHEET)
    rows = list(book["Sheet1"].iter_rows(min_row=2, values_only=True))
    assert {r[0] for r in rows} == {"01", "02"}  # Subject stored as text, as in CASME II
    for subject, clip, _, onset, apex, offset, _, aus, _ in rows:
        assert all(isinstance(f, int) for f in (onset, apex, offset))
        assert isinstance(aus, int) if "+" not in str(aus) else isinstance(aus, str)
        folder = micro_dir / "Cropped" / f"sub{subject}" / clip
        numbers = sorted(int(p.stem.removeprefix("reg_img")) for p in folder.glob("reg_img*.jpg"))
        assert numbers == list(range(numbers[0], numbers[-1] + 1)), f"{folder}: frame numbers not consecutive"
        assert numbers[0] < onset < apex < offset <= numbers[-1], f"{folder}: no neutral frames before the onset"
        image = cv2.imread(str(folder / f"reg_img{apex}.jpg"))
        assert image.shape == (params.face_size_px, params.face_size_px, 3)


def test_coding_sheet_cells_typed_like_the_real_casme2_sheet(demo, shared_annotations):
    _, micro_dir, _ = demo
    real = openpyxl.load_workbook(shared_annotations / "casme2" / CODING_SHEET)["Sheet1"]
    ours = openpyxl.load_workbook(micro_dir / CODING_SHEET)["Sheet1"]
    assert [c.value for c in ours[1]] == [c.value for c in real[1]]
    assert [c.data_type for c in ours[2]][:7] == [c.data_type for c in real[2]][:7]
    assert ours["A2"].number_format == real["A2"].number_format == "@"


def test_micro_durations_and_measured_peaks_are_micro(demo, params):
    truth, _, _ = demo
    lo, hi = params.micro_peak_px
    assert truth["peak_displacement_px"].between(lo - 1e-4, hi + 1e-4).all()
    assert (truth["duration_s"] < 0.5).all()
    frame_s = 1 / params.micro_fps
    assert truth["duration_s"].between(params.micro_duration_s[0] - frame_s, params.micro_duration_s[1]).all()
    assert np.allclose(truth["duration_s"], (truth["offset_frame"] - truth["onset_frame"]) / params.micro_fps)


def test_classes_carry_their_au_patterns_and_emotions(demo, params):
    truth, _, _ = demo
    for row in truth.to_dict("records"):
        patterns = PATTERNS[row["class"]]
        assert row["action_units"] in patterns, f"{row['subject']}/{row['clip']}: {row['action_units']}"
        assert patterns[row["action_units"]] == row["emotion"]
    per_class = params.n_subjects * params.clips_per_class
    assert truth["class"].value_counts().to_dict() == dict.fromkeys(PATTERNS, per_class)


def test_pattern_table_is_megc2019_grouping():
    for cls, patterns in PATTERNS.items():
        assert {"+".join(map(str, p)) for p in CLASS_PATTERNS[cls]} == set(patterns)
        for aus, emotion in patterns.items():
            assert emotion_of(tuple(int(a) for a in aus.split("+"))) == emotion
    assert action_units_cell((12,)) == 12 and action_units_cell((12, 6)) == "6+12"


def _eye_openings(identity, layout: Layout) -> np.ndarray:
    """(S, S) bool: the eye openings, 2 px margin, where a blink changes the image."""
    top, travel, columns = eyelid_maps(identity, layout)
    y = np.arange(layout.canvas_px, dtype=np.float32)[:, None]
    return (columns > 0) & (y > top - 2) & (y < top + travel + 2)


def test_apex_differs_from_onset_more_than_neutral_frames_in_the_au_region(demo, params):
    truth, micro_dir, _ = demo
    layout = Layout(params.face_size_px, params.face_size_px)
    ratios = []
    for s in range(params.n_subjects):
        identity = subject_identity(params, s)
        for clip in plan_micro_clips(params, s):
            region = np.linalg.norm(expression_field(clip.expression, identity, layout), axis=-1) > 0.3
            region &= ~_eye_openings(identity, layout)  # blinks are a nuisance, not the AU signal
            folder = micro_dir / "Cropped" / clip.subject / clip.clip

            def grey(n: int, folder: Path = folder) -> np.ndarray:
                return cv2.imread(str(folder / f"reg_img{n}.jpg"), cv2.IMREAD_GRAYSCALE).astype(np.float32)

            onset = grey(clip.onset_frame)
            signal = np.abs(grey(clip.apex_frame) - onset)[region].mean()
            neutral = np.abs(grey(clip.first_frame) - onset)[region].mean()
            ratios.append(signal / neutral)
    assert len(ratios) == len(truth)
    assert min(ratios) > 1.2 and np.mean(ratios) > 2.0, ratios


def test_au_fields_push_the_way_facs_says():
    identity = sample_identity(np.random.default_rng(0))
    layout = Layout(128, 128)
    pts = landmarks(identity)

    def at(field: np.ndarray, name: str) -> np.ndarray:
        x, y = np.round(layout.to_px(pts[name])).astype(int)
        return field[y, x]

    assert at(au_field(1, identity, layout), "brow_inner_r")[1] < -0.5  # inner brow up
    assert at(au_field(4, identity, layout), "brow_inner_r")[1] > 0.3  # brow down ...
    assert at(au_field(4, identity, layout), "brow_inner_r")[0] < -0.2  # ... and towards the midline
    smile = at(au_field(12, identity, layout), "mouth_corner_r")
    assert smile[1] < -0.3 and smile[0] > 0.3  # lip corner up and out
    assert at(au_field(12, identity, layout), "mouth_corner_l")[0] < -0.3  # mirrored on the other side
    assert at(au_field(15, identity, layout), "mouth_corner_r")[1] > 0.5  # lip corner down
    assert at(au_field(26, identity, layout), "chin")[1] > 0.5  # jaw drops
    assert np.linalg.norm(at(au_field(12, identity, layout), "brow_inner_r")) < 0.01  # local
    assert {1, 2, 4, 6, 9, 10, 12, 14, 15, 17, 25, 26} <= set(AU_BUMPS)
    combo = expression_field(Expression((6, 12), (0.7, 1.0), "positive", "happiness"), identity, layout)
    assert combo.shape == (128, 128, 2) and combo.dtype == np.float32
    assert np.linalg.norm(combo, axis=-1).max() == pytest.approx(1.0)


def test_apex_warps_reach_their_peak_without_folding():
    identity = sample_identity(np.random.default_rng(1))
    layout = Layout(128, 128)
    for cls, patterns in CLASS_PATTERNS.items():
        for aus in patterns:
            expression = Expression(aus, (1.0,) * len(aus), cls, emotion_of(aus))
            offsets = apex_offsets(expression, identity, layout, peak_px=8.0)  # the top of macro_peak_px
            assert np.linalg.norm(offsets, axis=-1).max() == pytest.approx(8.0, abs=1e-3)
            (dxx, dxy), (dyx, dyy) = (np.gradient(offsets[..., c], axis=(1, 0)) for c in (0, 1))
            jacobian_det = (1 + dxx) * (1 + dyy) - dxy * dyx  # of the sampling map p -> p + offsets(p)
            assert jacobian_det.min() > 0, f"AU {aus}: the warp folds"


def test_subjects_differ_in_geometry_skin_and_texture(params):
    a, b = subject_identity(params, 0), subject_identity(params, 1)
    assert a.skin_rgb != b.skin_rgb and a.texture_seed != b.texture_seed
    assert np.abs(np.array([a.eye_dx, a.mouth_w, a.face_rx]) - np.array([b.eye_dx, b.mouth_w, b.face_rx])).max() > 1e-3


def test_raised_cosine_profile():
    profile = raised_cosine(20, 3, 8, 15)
    assert profile.shape == (20,) and profile.dtype == np.float32
    assert profile[8] == 1.0 and profile[:4].max() == 0.0 and profile[15:].max() == 0.0
    assert (np.diff(profile[3:9]) > 0).all() and (np.diff(profile[8:16]) < 0).all()
    with pytest.raises(ValueError, match="onset < apex < offset"):
        raised_cosine(20, 8, 8, 15)


def test_macro_videos_decode_with_decord_and_match_their_ground_truth(demo, params):
    decord = pytest.importorskip("decord")
    _, _, macro_dir = demo
    videos = sorted(macro_dir.glob("demo_id*_m*.mp4"))
    assert [v.stem for v in videos] == [f"demo_id{i + 1:02d}_m{m}" for i in range(params.macro_identities)
                                        for m in range(params.macro_videos_per_identity)]
    reader = decord.VideoReader(str(videos[0]))
    assert len(reader) == round(params.macro_video_duration_s * params.macro_fps)
    assert reader.get_avg_fps() == pytest.approx(params.macro_fps, rel=1e-3)
    side_px = 2 * params.face_size_px  # the face box sits in a 2x canvas
    assert reader.get_batch([0, len(reader) - 1]).asnumpy().shape == (2, side_px, side_px, 3)
    truth = pd.read_csv(macro_dir / "ground_truth.csv")
    assert set(truth["video"]) == {v.stem for v in videos}
    assert ((truth["onset_s"] < truth["apex_s"]) & (truth["apex_s"] < truth["offset_s"])).all()
    assert (truth["offset_s"] <= params.macro_video_duration_s).all()
    lo, hi = params.macro_peak_px
    assert truth["peak_displacement_px"].between(lo - 1e-4, hi + 1e-4).all()
    assert truth["duration_s"].between(params.macro_duration_s[0] - 1 / params.macro_fps,
                                       params.macro_duration_s[1] + 1 / params.macro_fps).all()


def test_haar_finds_the_face_in_most_macro_frames(demo):
    decord = pytest.importorskip("decord")
    _, _, macro_dir = demo
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    found = total = 0
    for video in sorted(macro_dir.glob("*.mp4")):
        reader = decord.VideoReader(str(video))
        for frame in reader.get_batch(list(range(len(reader)))).asnumpy():
            grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
            found += len(cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5)) > 0
            total += 1
    assert total > 0 and found / total > 0.9, f"Haar found the face in {found}/{total} frames"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"micro_duration_s": (0.3, 0.6)}, "micro_duration_s"),
        ({"macro_duration_s": (0.5, 7.9)}, "macro_duration_s"),
        ({"micro_peak_px": (0.0, 1.0)}, "micro_peak_px"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_params_are_refused_by_name(params, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        render_demo(shrink(params, **overrides), tmp_path / "micro", tmp_path / "macro", progress=False)
    assert not (tmp_path / "micro").exists()


def test_macro_identities_are_not_micro_subjects(params):
    """MA2MI's premise: the macro videos come from other people than the micro-expression subjects."""
    micro = [subject_identity(params, s) for s in range(params.n_subjects)]
    macro = [macro_identity(params, i) for i in range(params.macro_identities)]
    assert not {m.texture_seed for m in macro} & {m.texture_seed for m in micro}
    assert macro_identity(params, 0) == macro_identity(shrink(params, n_subjects=5), 0)  # independent of n_subjects


def test_ground_truth_landmarks_sit_on_the_rendered_face(demo, params):
    """The onset landmarks of the ground truth lie where the face shows them: the eyes on dark pixels (iris),
    level with each other, the nose between them and the mouth below; the AU masks cover part of the face."""
    truth, micro_dir, macro_dir = demo
    row = truth.iloc[0]
    onset = cv2.imread(str(micro_dir / "Cropped" / row["subject"] / row["clip"] / f"reg_img{row['onset_frame']}.jpg"),
                       cv2.IMREAD_GRAYSCALE).astype(float)
    points = {name: (row[f"{name}_x"], row[f"{name}_y"]) for name in LANDMARKS_5}
    for eye in ("eye_l", "eye_r"):
        x, y = (round(v) for v in points[eye])
        assert onset[y, x] < np.median(onset), f"{eye} at ({x}, {y}) is not on the dark iris"
    assert points["eye_l"][0] < points["nose_tip"][0] < points["eye_r"][0]
    assert abs(points["eye_l"][1] - points["eye_r"][1]) < 1.0
    assert points["mouth_corner_l"][1] > points["nose_tip"][1] > points["eye_l"][1]
    for row in truth.itertuples():
        mask = cv2.imread(str(micro_dir / AU_MASK_DIR / f"{row.subject}_{row.clip}.png"), cv2.IMREAD_GRAYSCALE)
        assert mask.shape == (params.face_size_px, params.face_size_px)
        assert 0.002 < (mask > 0).mean() < 0.5, row.clip
    landmarks = pd.read_parquet(macro_dir / "landmarks.parquet")
    assert set(landmarks["video"]) == {v.stem for v in macro_dir.glob("*.mp4")}
    assert landmarks["expression"].between(0, 1).all() and (landmarks["expression"] == 0).any()
