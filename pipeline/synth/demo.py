"""The embedded demo (DESIGN §8): a seeded micro-expression dataset in the CASME II layout plus macro videos.

Micro: ``micro_dir/Cropped/subXX/EPxx_yy[f]/reg_img<N>.jpg`` at ``micro_fps``, each clip a few neutral frames,
then onset -> apex -> offset (< 0.5 s, sub-2-px peak displacement), then a few more; the coding sheet
``micro_dir/CASME2-coding-20140508.xlsx`` in the real sheet's layout.
Macro: ``macro_dir/demo_idXX_m<k>.mp4`` of ``macro_identities`` identities of their own (none of them is a micro
subject, as DFEW's actors are not CASME II's), the face in a 2x canvas with background, several
macro-expressions (several px) between neutral stretches.

Ground truth, which no adapter reads (it is only used to measure alignment and attention):
``micro_dir/ground_truth.csv`` (one row per clip: AUs, class, duration, peak displacement and the five landmarks
of the onset frame, px of the frame), ``micro_dir/ground_truth_au_masks/<subject>_<clip>.png`` (where the clip's
AUs move the skin by at least :data:`AU_MASK_FRACTION` of its peak displacement, at the apex; 255 inside),
``macro_dir/ground_truth.csv`` (one row per macro-expression) and ``macro_dir/landmarks.parquet`` (the five
landmarks of every frame, with the frame's expression intensity).

Randomness is keyed by ``(seed, subject, stream, item)`` (NumPy ``SeedSequence`` entropy), so a subject's face
does not change when, say, ``clips_per_class`` does, and every file is a pure function of the params.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline.config import AU_MASK_DIR, SynthesizeParams
from pipeline.io import write_parquet
from pipeline.synth.au import CLASS_PATTERNS, Expression, action_units_cell, expression_field, sample_expression
from pipeline.synth.face import Identity, Layout, landmarks, sample_identity
from pipeline.synth.render import (
    MACRO_NUISANCE,
    MICRO_NUISANCE,
    Scene,
    blink_closure,
    head_drift,
    illumination,
    make_scene,
    raised_cosine,
    render_frames,
    sampling_offsets,
)
from pipeline.synth.writers import VideoSink, write_coding_sheet, write_csv, write_jpeg, write_png

__all__ = [
    "AU_MASK_FRACTION",
    "CODING_SHEET",
    "LANDMARKS_5",
    "LANDMARK_COLUMNS",
    "MacroEvent",
    "MicroClip",
    "RenderItem",
    "apex_offsets",
    "au_mask",
    "check_params",
    "frame_landmarks",
    "macro_identity",
    "macro_identity_name",
    "plan_macro_events",
    "plan_micro_clips",
    "render_demo",
    "render_macro_identity",
    "render_subject",
    "subject_identity",
    "subject_name",
]

log = logging.getLogger(__name__)

CODING_SHEET = "CASME2-coding-20140508.xlsx"
DEMO_CLASSES = ("negative", "positive", "surprise")
MACRO_CANVAS_SCALE = 2  # macro canvas side / face box side: the face sits in background, as in real videos
FIRST_FRAME = (10, 60)  # CASME II clip folders start at img<N> with N a few tens
PRE_ONSET_FRAMES = (3, 12)  # neutral frames before the onset
POST_OFFSET_FRAMES = (0, 8)  # frames after the offset
APEX_FRACTION = (0.35, 0.6)  # (apex - onset) / (offset - onset); CASME II: onset -> apex ~ 0.15 s of ~0.33 s
MACRO_GAP_S = (0.3, 1.2)  # neutral stretch before each macro-expression
LANDMARKS_5 = ("eye_l", "eye_r", "nose_tip", "mouth_corner_l", "mouth_corner_r")  # image left first, MTCNN's order
LANDMARK_COLUMNS = [f"{name}_{axis}" for name in LANDMARKS_5 for axis in ("x", "y")]
AU_MASK_FRACTION = 0.25  # an AU region: skin moved by at least this share of the clip's peak displacement
MICRO_COLUMNS = [
    "subject", "clip", "onset_frame", "apex_frame", "offset_frame", "action_units", "emotion", "class",
    "duration_s", "peak_displacement_px", *LANDMARK_COLUMNS,
]
MACRO_COLUMNS = [
    "video", "onset_s", "apex_s", "offset_s", "action_units", "emotion", "class", "duration_s", "peak_displacement_px",
]
_STREAM_IDENTITY, _STREAM_MICRO, _STREAM_MACRO, _STREAM_MACRO_IDENTITY = 0, 1, 2, 3


@dataclass(frozen=True)
class MicroClip:
    """Plan of one micro clip; frame numbers are the ``N`` of ``reg_img<N>.jpg``."""

    subject: str  # 'sub01'
    clip: str  # 'EP02_01f'
    expression: Expression
    first_frame: int
    onset_frame: int
    apex_frame: int
    offset_frame: int
    last_frame: int
    peak_px: float  # target peak displacement at the apex, px at face_size_px


@dataclass(frozen=True)
class MacroEvent:
    """One macro-expression in a video; frame indices from 0."""

    expression: Expression
    onset_frame: int
    apex_frame: int
    offset_frame: int
    peak_px: float


def _rng(params: SynthesizeParams, subject: int, stream: int, item: int = 0) -> np.random.Generator:
    return np.random.default_rng([params.seed, subject, stream, item])


def subject_name(index: int) -> str:
    """Folder name of subject ``index`` (0-based): ``'sub01'``, ``'sub02'``, ..."""
    return f"sub{index + 1:02d}"


def subject_identity(params: SynthesizeParams, subject: int) -> Identity:
    """Return the seeded face of micro subject ``subject`` (0-based); no param but ``seed`` changes it."""
    return sample_identity(_rng(params, subject, _STREAM_IDENTITY))


def macro_identity(params: SynthesizeParams, index: int) -> Identity:
    """Return the seeded face of macro identity ``index`` (0-based).

    Drawn from a stream of its own: never a micro subject's face, and unchanged when ``n_subjects`` changes.
    """
    return sample_identity(_rng(params, index, _STREAM_MACRO_IDENTITY))


def macro_identity_name(index: int) -> str:
    """Name of macro identity ``index`` (0-based) in video names: ``'id01'``, ``'id02'``, ..."""
    return f"id{index + 1:02d}"


def frame_landmarks(identity: Identity, layout: Layout, drift: np.ndarray) -> np.ndarray:
    """The five landmarks (:data:`LANDMARKS_5`) of a neutral face under head drift, px of the frames.

    Args:
        identity: the face.
        layout: where its face box sits in the canvas.
        drift: ``(T, 2, 3)`` backward head-drift maps (:func:`pipeline.synth.render.head_drift`).

    Returns:
        ``(T, 5, 2)`` float32 ``(x, y)``. Expressions are not included: they move the mouth corners by up to the
        peak displacement at the apex (~2 px for a micro-expression), which is why alignment is measured on onset
        frames and neutral macro frames.
    """
    points = landmarks(identity)
    neutral = layout.to_px(np.stack([points[name] for name in LANDMARKS_5]))  # (5, 2)
    out = np.empty((len(drift), len(LANDMARKS_5), 2), np.float32)
    for t, backward in enumerate(drift):
        forward = cv2.invertAffineTransform(backward)  # neutral px -> frame px
        out[t] = neutral @ forward[:, :2].T + forward[:, 2]
    return out


def au_mask(field: np.ndarray, fraction: float = AU_MASK_FRACTION) -> np.ndarray:
    """Mask of an expression's region: ``(S, S) uint8``, 255 where ``field`` moves the skin enough.

    Enough: by at least ``fraction`` of the largest displacement of ``field`` ``(S, S, 2)``.
    """
    norm = np.linalg.norm(field, axis=-1)
    return np.where(norm >= fraction * norm.max(), 255, 0).astype(np.uint8)


def check_params(params: SynthesizeParams) -> None:
    """Reject params the demo cannot honour, naming the key.

    Raises:
        ValueError: negative seed; a micro-expression that is not < 0.5 s or shorter than 2 frames; non-positive
            peak displacements; a macro-expression that cannot fit in a macro video.
    """
    p = params
    problems = []
    if p.seed < 0:
        problems.append(f"seed must be >= 0, got {p.seed}")
    if not (p.micro_duration_s[0] > 0 and p.micro_duration_s[1] < 0.5):
        problems.append(f"micro_duration_s must lie in (0, 0.5) s (a micro-expression), got {p.micro_duration_s}")
    if p.micro_duration_s[0] * p.micro_fps < 2:
        problems.append(f"micro_duration_s[0] * micro_fps = {p.micro_duration_s[0] * p.micro_fps:.2f} < 2 frames")
    if p.macro_duration_s[0] * p.macro_fps < 2:
        problems.append(f"macro_duration_s[0] * macro_fps = {p.macro_duration_s[0] * p.macro_fps:.2f} < 2 frames")
    if p.macro_duration_s[1] + 2 * MACRO_GAP_S[0] > p.macro_video_duration_s:
        problems.append(
            f"macro_duration_s[1] = {p.macro_duration_s[1]} s does not fit in macro_video_duration_s = "
            f"{p.macro_video_duration_s} s with {MACRO_GAP_S[0]} s of neutral face on each side"
        )
    for key in ("micro_peak_px", "macro_peak_px"):
        if getattr(p, key)[0] <= 0:
            problems.append(f"{key} must be > 0 px, got {getattr(p, key)}")
    if problems:
        raise ValueError("synthesize params: " + "; ".join(problems))


def _clip_names(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` distinct CASME II-style clip names ``EP<episode>_<index>[f]`` (episode 1-19 as in CASME II)."""
    taken: dict[int, int] = {}
    names = []
    for _ in range(n):
        episode = int(rng.integers(1, 20))
        taken[episode] = taken.get(episode, 0) + 1
        names.append(f"EP{episode:02d}_{taken[episode]:02d}{'f' if rng.random() < 0.5 else ''}")
    return names


def plan_micro_clips(params: SynthesizeParams, subject: int) -> list[MicroClip]:
    """Plan the ``3 * clips_per_class`` micro clips of subject ``subject`` (0-based).

    Each class cycles through its AU patterns (continuing from subject to subject), so every pattern appears
    once there are enough clips.
    Durations (onset -> offset) are drawn from ``micro_duration_s``, apex at 35-60 % of the way, peak
    displacement from ``micro_peak_px``.
    """
    rng = _rng(params, subject, _STREAM_MICRO)
    n_clips = len(DEMO_CLASSES) * params.clips_per_class
    names = _clip_names(rng, n_clips)
    clips = []
    for k in range(n_clips):
        cls = DEMO_CLASSES[k // params.clips_per_class]
        patterns = CLASS_PATTERNS[cls]
        pattern = patterns[(subject * params.clips_per_class + k % params.clips_per_class) % len(patterns)]
        n_active = max(2, int(rng.uniform(*params.micro_duration_s) * params.micro_fps))
        first = int(rng.integers(*FIRST_FRAME))
        onset = first + int(rng.integers(*PRE_ONSET_FRAMES))
        apex = onset + int(np.clip(round(rng.uniform(*APEX_FRACTION) * n_active), 1, n_active - 1))
        offset = onset + n_active
        clips.append(MicroClip(
            subject_name(subject), names[k], sample_expression(rng, cls, pattern), first, onset, apex, offset,
            offset + int(rng.integers(*POST_OFFSET_FRAMES)), float(rng.uniform(*params.micro_peak_px)),
        ))
    return clips


def plan_macro_events(params: SynthesizeParams, rng: np.random.Generator) -> list[MacroEvent]:
    """Macro-expressions of one video: neutral gap, expression, neutral gap, ... until the video is full.

    Classes and patterns are random; durations from ``macro_duration_s``, peaks from ``macro_peak_px``. At least
    one event (guaranteed by :func:`check_params`); events never overlap.
    """
    fps, total_s = params.macro_fps, params.macro_video_duration_s
    events: list[MacroEvent] = []
    t_s = rng.uniform(*MACRO_GAP_S)
    while True:
        duration_s = rng.uniform(*params.macro_duration_s)
        if t_s + duration_s + MACRO_GAP_S[0] > total_s:
            if events:
                return events
            t_s, duration_s = MACRO_GAP_S[0], min(duration_s, total_s - 2 * MACRO_GAP_S[0])
        onset, offset = round(t_s * fps), round((t_s + duration_s) * fps)
        apex = onset + int(np.clip(round(rng.uniform(*APEX_FRACTION) * (offset - onset)), 1, offset - onset - 1))
        expression = sample_expression(rng, DEMO_CLASSES[int(rng.integers(len(DEMO_CLASSES)))])
        events.append(MacroEvent(expression, onset, apex, offset, float(rng.uniform(*params.macro_peak_px))))
        t_s += duration_s + rng.uniform(*MACRO_GAP_S)


def _peak_norm(field: np.ndarray) -> float:
    """Max over pixels of the displacement norm of a ``(S, S, 2)`` field, px."""
    return float(np.linalg.norm(field, axis=-1).max())


def apex_offsets(expression: Expression, identity: Identity, layout: Layout, peak_px: float) -> np.ndarray:
    """Compute the sampling offsets of ``expression`` at its apex, largest displacement ``peak_px``.

    Skin carried by the flow leaves the bump's core, so the displacement of ``exp(v)`` falls short of
    ``max |v|`` (by up to a third at macro amplitudes on narrow bumps): the velocity scale is found by a few
    fixed-point steps (``max |u|`` grows monotonically with it), and the last ~0.1 % is a plain rescale, which
    keeps the map fold-free.

    Returns:
        ``(S, S, 2)`` float32, px (:func:`pipeline.synth.render.sampling_offsets`).
    """
    unit = expression_field(expression, identity, layout)  # (S, S, 2), max norm 1
    scale = peak_px
    for _ in range(4):
        offsets = sampling_offsets(scale * unit)
        scale *= peak_px / _peak_norm(offsets)
    return offsets * np.float32(peak_px / _peak_norm(offsets))


def render_micro_clip(
    clip: MicroClip, identity: Identity, scene: Scene, params: SynthesizeParams, rng: np.random.Generator, root: Path,
    mask_dir: Path,
) -> dict:
    """Render and write one clip's ``reg_img<N>.jpg`` frames under ``root/subXX/<clip>/``.

    Also writes the clip's AU mask (:func:`au_mask` of the apex field) as ``mask_dir/<subject>_<clip>.png``.

    Returns:
        The clip's ground-truth row (:data:`MICRO_COLUMNS`); ``peak_displacement_px`` is measured on the field
        applied at the apex frame, the landmarks are the onset frame's.
    """
    field = apex_offsets(clip.expression, identity, scene.layout, clip.peak_px)  # (S, S, 2) px
    n_frames = clip.last_frame - clip.first_frame + 1
    f0 = clip.first_frame
    amplitude = raised_cosine(n_frames, clip.onset_frame - f0, clip.apex_frame - f0, clip.offset_frame - f0)
    fps = params.micro_fps
    closure = blink_closure(n_frames, fps, rng, MICRO_NUISANCE)  # the draws in this order: closure, drift, light
    drift = head_drift(n_frames, fps, rng, MICRO_NUISANCE, scene.layout)
    frames = render_frames(scene, [field], amplitude[None], closure, drift,
                           illumination(n_frames, fps, rng, MICRO_NUISANCE), params.noise_std, rng)
    folder = root / clip.subject / clip.clip
    folder.mkdir(parents=True, exist_ok=True)
    for k, frame in enumerate(frames):
        write_jpeg(folder / f"reg_img{f0 + k}.jpg", frame, params.jpeg_quality)
    mask_dir.mkdir(parents=True, exist_ok=True)
    write_png(mask_dir / f"{clip.subject}_{clip.clip}.png", au_mask(field))
    onset_landmarks = frame_landmarks(identity, scene.layout, drift[clip.onset_frame - f0: clip.onset_frame - f0 + 1])
    return {
        "subject": clip.subject, "clip": clip.clip, "onset_frame": clip.onset_frame, "apex_frame": clip.apex_frame,
        "offset_frame": clip.offset_frame, "action_units": str(action_units_cell(clip.expression.aus)),
        "emotion": clip.expression.emotion, "class": clip.expression.cls,
        "duration_s": (clip.offset_frame - clip.onset_frame) / fps,
        "peak_displacement_px": _peak_norm(amplitude[clip.apex_frame - f0] * field),
        **dict(zip(LANDMARK_COLUMNS, onset_landmarks[0].ravel().tolist(), strict=True)),
    }


def render_macro_video(
    name: str, identity: Identity, scene: Scene, params: SynthesizeParams, rng: np.random.Generator, path: Path
) -> tuple[list[dict], pd.DataFrame]:
    """Render and write one macro video (``mp4v``).

    Returns:
        One ground-truth row per macro-expression, and the video's landmark table: one row per frame with
        ``video, frame_index, time_s, expression`` (the largest expression intensity in [0, 1] at that frame) and
        :data:`LANDMARK_COLUMNS` (px of the frame).
    """
    fps = params.macro_fps
    n_frames = round(params.macro_video_duration_s * fps)
    events = plan_macro_events(params, rng)
    fields = [apex_offsets(e.expression, identity, scene.layout, e.peak_px) for e in events]
    amplitudes = np.stack([raised_cosine(n_frames, e.onset_frame, e.apex_frame, e.offset_frame) for e in events])
    closure = blink_closure(n_frames, fps, rng, MACRO_NUISANCE)  # the draws in this order: closure, drift, light
    drift = head_drift(n_frames, fps, rng, MACRO_NUISANCE, scene.layout)
    frames = render_frames(scene, fields, amplitudes, closure, drift,
                           illumination(n_frames, fps, rng, MACRO_NUISANCE), params.noise_std, rng)
    with VideoSink(path, fps, scene.layout.canvas_px) as sink:
        for frame in frames:
            sink.write(frame)
    points = frame_landmarks(identity, scene.layout, drift).reshape(n_frames, -1)  # (T, 10)
    table = pd.DataFrame(points, columns=LANDMARK_COLUMNS)
    table.insert(0, "expression", amplitudes.max(axis=0))
    table.insert(0, "time_s", np.arange(n_frames) / fps)
    table.insert(0, "frame_index", np.arange(n_frames))
    table.insert(0, "video", name)
    return [
        {
            "video": name, "onset_s": e.onset_frame / fps, "apex_s": e.apex_frame / fps,
            "offset_s": e.offset_frame / fps,
            "action_units": str(action_units_cell(e.expression.aus)), "emotion": e.expression.emotion,
            "class": e.expression.cls, "duration_s": (e.offset_frame - e.onset_frame) / fps,
            "peak_displacement_px": _peak_norm(amplitudes[k, e.apex_frame] * fields[k]),
        }
        for k, e in enumerate(events)
    ], table


def coding_sheet_rows(truth: pd.DataFrame) -> pd.DataFrame:
    """Ground truth -> CASME II coding-sheet rows (``Subject`` '01', ``Action Units`` int or '6+12')."""
    return pd.DataFrame({
        "Subject": truth["subject"].str.removeprefix("sub"),
        "Filename": truth["clip"],
        "OnsetFrame": truth["onset_frame"],
        "ApexFrame": truth["apex_frame"],
        "OffsetFrame": truth["offset_frame"],
        "Action Units": [int(a) if a.isdigit() else a for a in truth["action_units"]],
        "Estimated Emotion": truth["emotion"],
    })


def _clear_previous(micro_dir: Path, macro_dir: Path) -> None:
    """Remove frames and videos of an earlier run (only the paths this module writes), so none go stale."""
    cropped = micro_dir / "Cropped"
    if cropped.exists():
        log.info("removing the previous demo frames in %s", cropped)
        shutil.rmtree(cropped)
    masks = micro_dir / AU_MASK_DIR
    if masks.exists():
        shutil.rmtree(masks)
    for old in sorted(macro_dir.glob("demo_*_m*.mp4")):
        old.unlink()


def render_subject(params: SynthesizeParams, subject: int, micro_dir: Path) -> list[list]:
    """Render micro subject ``subject`` (0-based): every clip's frames and AU masks under ``micro_dir``.

    Returns its ground-truth rows (columns :data:`MICRO_COLUMNS`). Depends on nothing but ``params`` and
    ``subject``: subjects render in any order or process with the same bytes.
    """
    identity = subject_identity(params, subject)
    scene = make_scene(identity, Layout(params.face_size_px, params.face_size_px))
    return [render_micro_clip(clip, identity, scene, params, _rng(params, subject, _STREAM_MICRO, k + 1),
                              Path(micro_dir) / "Cropped", Path(micro_dir) / AU_MASK_DIR)
            for k, clip in enumerate(plan_micro_clips(params, subject))]


def render_macro_identity(params: SynthesizeParams, index: int, macro_dir: Path) -> tuple[list[list], pd.DataFrame]:
    """Render the macro videos of identity ``index`` (0-based) into ``macro_dir``.

    Returns their ground-truth rows (columns :data:`MACRO_COLUMNS`) and landmark table. Depends on nothing but
    ``params`` and ``index``, like :func:`render_subject`.
    """
    identity = macro_identity(params, index)
    scene = make_scene(identity, Layout(MACRO_CANVAS_SCALE * params.face_size_px, params.face_size_px))
    rows, tables = [], []
    for m in range(params.macro_videos_per_identity):
        name = f"demo_{macro_identity_name(index)}_m{m}"
        video_rows, table = render_macro_video(name, identity, scene, params, _rng(params, index, _STREAM_MACRO, m),
                                               Path(macro_dir) / f"{name}.mp4")
        rows += video_rows
        tables.append(table)
    return rows, pd.concat(tables, ignore_index=True)


RenderItem = tuple[Callable[..., Any], tuple]  # a function of this module and its arguments


def _map_in_order(items: list[RenderItem]) -> Iterator[Any]:
    return (fn(*args) for fn, args in items)


def render_demo(params: SynthesizeParams, micro_dir: Path, macro_dir: Path, progress: bool = True,
                map_items: Callable[[list[RenderItem]], Iterable[Any]] = _map_in_order) -> pd.DataFrame:
    """Render the whole demo: the micro dataset (CASME II layout) and the macro videos.

    Args:
        params: the ``synthesize`` section.
        micro_dir: root of the micro dataset (``Cropped/``, the coding sheet, ``ground_truth.csv``).
        macro_dir: folder of the macro videos and their ``ground_truth.csv``.
        progress: show a tqdm bar (only on a terminal).
        map_items: runs the independent render items (``(function, args)``: one per micro subject, then one per
            macro identity) and yields their results in the items' order; by default one after the other here.
            ``stages.synthesize`` runs them as Dask tasks; the files are the same either way.

    Returns:
        The micro ground truth, one row per clip, columns :data:`MICRO_COLUMNS` (also written to
        ``micro_dir/ground_truth.csv``), sorted by subject and clip.

    Raises:
        ValueError: params the demo cannot honour (:func:`check_params`).
    """
    check_params(params)
    micro_dir, macro_dir = Path(micro_dir), Path(macro_dir)
    _clear_previous(micro_dir, macro_dir)
    items: list[RenderItem] = [(render_subject, (params, s, micro_dir)) for s in range(params.n_subjects)]
    items += [(render_macro_identity, (params, i, macro_dir)) for i in range(params.macro_identities)]
    results = list(tqdm(map_items(items), total=len(items), desc="synthesize", unit="identity",
                        disable=None if progress else True))
    micro_rows = [row for rows in results[:params.n_subjects] for row in rows]
    macro_rows = [row for rows, _ in results[params.n_subjects:] for row in rows]
    macro_landmarks = [table for _, table in results[params.n_subjects:]]
    truth = pd.DataFrame(micro_rows, columns=MICRO_COLUMNS).sort_values(["subject", "clip"], ignore_index=True)
    write_coding_sheet(coding_sheet_rows(truth), micro_dir / CODING_SHEET)
    write_csv(truth, micro_dir / "ground_truth.csv")
    write_csv(pd.DataFrame(macro_rows, columns=MACRO_COLUMNS), macro_dir / "ground_truth.csv")
    write_parquet(pd.concat(macro_landmarks, ignore_index=True), macro_dir / "landmarks.parquet")
    log.info("wrote %d micro clips of %d subjects to %s and %d macro videos of %d other identities to %s",
             len(truth), params.n_subjects, micro_dir, params.macro_identities * params.macro_videos_per_identity,
             params.macro_identities, macro_dir)
    return truth
