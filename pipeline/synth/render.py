"""Frames of one subject over time: AU warps with their temporal profile, plus the nuisances real footage has.

A frame at time ``t`` is the neutral face ``N`` (eyes blended towards closed during a blink) sampled through a
backward map (``cv2.remap``, bilinear)::

    q = H_t^-1(p)                      # head drift: a small similarity transform, p in canvas px
    frame_t(p) = N(q + sum_k a_k(t) * U_k(q))

``U_k`` is expression ``k``'s sampling offset at its apex (px), the backward map of the skin motion
(:func:`sampling_offsets`), and ``a_k(t)`` its onset -> apex -> offset profile. Then illumination (a slow global
gain and a left-right gradient), Gaussian sensor noise, and rounding to uint8; the caller compresses (JPEG /
MPEG-4).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.synth.face import Identity, Layout, eyelid_maps, render_face

__all__ = [
    "MACRO_NUISANCE",
    "MICRO_NUISANCE",
    "Nuisance",
    "Scene",
    "blink_closure",
    "head_drift",
    "illumination",
    "make_scene",
    "raised_cosine",
    "render_frames",
    "sampling_offsets",
]


@dataclass(frozen=True)
class Nuisance:
    """Amplitudes of the nuisances, per kind of footage."""

    drift_px: float  # peak head translation per axis, px
    drift_deg: float  # peak head roll, degrees
    drift_period_s: tuple[float, float]  # period range of the slow drift sinusoids
    gain: float  # peak relative change of the global illumination gain
    gradient: float  # peak left-right illumination gradient (relative, edge to edge / 2)
    blink_rate_hz: float  # mean blinks per second (spontaneous blinking: ~15-20 per minute)
    blink_duration_s: tuple[float, float]  # closing + reopening


# CASME II frames are registered crops (the ``reg_img`` files), so the residual head motion within a clip is small;
# the macro videos are free-moving heads under changing light.
MICRO_NUISANCE = Nuisance(0.25, 0.15, (2.0, 6.0), 0.01, 0.01, 0.3, (0.15, 0.3))
MACRO_NUISANCE = Nuisance(4.0, 2.5, (3.0, 10.0), 0.08, 0.06, 0.3, (0.15, 0.35))


@dataclass(frozen=True)
class Scene:
    """One subject in one layout: what stays fixed while the frames of a clip are rendered."""

    layout: Layout
    open_rgb: np.ndarray  # (S, S, 3) float32 RGB in [0, 255], neutral face, eyes open
    closed_rgb: np.ndarray  # (S, S, 3) float32, eyes closed
    lid_top_px: np.ndarray  # (S, S) float32, upper-lid y (see face.eyelid_maps)
    lid_travel_px: np.ndarray  # (S, S) float32
    lid_columns: np.ndarray  # (S, S) float32 in {0, 1}
    x_px: np.ndarray  # (S, S) float32 pixel x
    y_px: np.ndarray  # (S, S) float32 pixel y


def make_scene(identity: Identity, layout: Layout) -> Scene:
    """Render ``identity`` neutral in ``layout`` (eyes open and closed) and precompute the pixel grids."""
    open_rgb, closed_rgb = render_face(identity, layout)
    top, travel, cols = eyelid_maps(identity, layout)
    coords = np.arange(layout.canvas_px, dtype=np.float32)
    x, y = np.meshgrid(coords, coords)
    return Scene(layout, open_rgb, closed_rgb, top, travel, cols, x, y)


def sampling_offsets(velocity: np.ndarray, steps: int = 6) -> np.ndarray:
    """Backward map of a skin motion, by scaling and squaring (Arsigny et al., MICCAI 2006).

    The skin moves by the flow ``exp(v)`` of the stationary velocity field ``v``; a frame samples the neutral face
    at ``p + u(p)`` with ``u`` the displacement of ``exp(-v)``. Unlike the first-order ``p - v(p)``, this never
    folds, even for macro amplitudes on narrow AU bumps or where AU25 pulls the lips apart (the dark mouth line
    is stretched into a gap, not mirrored). ``p + a * u(p)`` for ``a`` in [0, 1] stays fold-free too (the
    eigenvalues of the Jacobian of ``u`` are > -1), so the temporal profile scales ``u`` linearly.

    Args:
        velocity: ``(S, S, 2)`` float32 forward motion field, px (e.g. peak * :func:`au.expression_field`).
        steps: number of squarings; the field is integrated in ``2**steps`` sub-steps.

    Returns:
        ``(S, S, 2)`` float32 sampling offsets ``(dx, dy)``, px.
    """
    h, w = velocity.shape[:2]
    x, y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    u = (-velocity / 2**steps).astype(np.float32)
    for _ in range(steps):  # exp(-v) = (exp(-v / 2^n)) composed with itself 2^n times
        u = u + cv2.remap(u, x + u[..., 0], y + u[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return u


def raised_cosine(n_frames: int, onset: int, apex: int, offset: int) -> np.ndarray:
    """Onset -> apex -> offset intensity profile: half-cosine rise and fall, 0 outside, exactly 1 at the apex.

    Smooth (C1) at onset, apex and offset, like the facial muscle twitch profiles of Yan et al. (CASME II, 2014).

    Args:
        n_frames: length T of the clip.
        onset: frame index where the profile leaves 0; may be < 0 (a profile cut by the clip start, e.g. a
            blink already under way at the first frame).
        apex: frame index of the peak (value exactly 1), ``onset < apex < offset``.
        offset: frame index where the profile is back to 0; may be >= T.

    Returns:
        ``(T,)`` float32 in [0, 1].
    """
    if not onset < apex < offset:
        raise ValueError(f"need onset < apex < offset, got {onset}, {apex}, {offset}")
    t = np.arange(n_frames, dtype=np.float64)
    rise = 0.5 - 0.5 * np.cos(np.pi * (t - onset) / (apex - onset))
    fall = 0.5 + 0.5 * np.cos(np.pi * (t - apex) / (offset - apex))
    out = np.where(t <= apex, rise, fall)
    out[(t < onset) | (t > offset)] = 0.0
    return out.astype(np.float32)


def blink_closure(n_frames: int, fps: float, rng: np.random.Generator, nuisance: Nuisance) -> np.ndarray:
    """Lid closure over time: spontaneous blinks at Poisson times, each a fast close and a slower reopening.

    Returns:
        ``(T,)`` float32 in [0, 1] (0 open, 1 closed).
    """
    closure = np.zeros(n_frames, np.float32)
    duration_s = n_frames / fps
    t_s = rng.uniform(-0.3, 0.0)  # a blink may already be under way at the first frame
    while True:
        t_s += rng.exponential(1.0 / nuisance.blink_rate_hz)
        if t_s >= duration_s:
            return closure
        length = max(3, round(rng.uniform(*nuisance.blink_duration_s) * fps))
        onset = round(t_s * fps)
        profile = raised_cosine(n_frames, onset, onset + max(1, length // 3), onset + length)
        closure = np.maximum(closure, profile)


def _slow_wave(n_frames: int, fps: float, rng: np.random.Generator, period_s: tuple[float, float]) -> np.ndarray:
    """Sum of two sinusoids with random periods and phases, scaled to peak |1|: (T,) float64."""
    t = np.arange(n_frames) / fps
    wave = sum(np.sin(2 * np.pi * t / rng.uniform(*period_s) + rng.uniform(0, 2 * np.pi)) for _ in range(2))
    return wave / 2.0


def head_drift(n_frames: int, fps: float, rng: np.random.Generator, nuisance: Nuisance, layout: Layout) -> np.ndarray:
    """Slow head motion as backward affine maps (output px -> neutral-face px), rotation about the face centre.

    Returns:
        ``(T, 2, 3)`` float32; ``[A | b]`` such that ``q = A @ p + b``.
    """
    tx, ty = (nuisance.drift_px * _slow_wave(n_frames, fps, rng, nuisance.drift_period_s) for _ in range(2))
    roll = nuisance.drift_deg * _slow_wave(n_frames, fps, rng, nuisance.drift_period_s)
    centre = (layout.canvas_px - 1) / 2.0
    maps = np.empty((n_frames, 2, 3), np.float32)
    for k in range(n_frames):
        forward = cv2.getRotationMatrix2D((centre, centre), float(roll[k]), 1.0)
        forward[:, 2] += (tx[k], ty[k])
        maps[k] = cv2.invertAffineTransform(forward)
    return maps


def illumination(n_frames: int, fps: float, rng: np.random.Generator, nuisance: Nuisance) -> np.ndarray:
    """Slow illumination change: per-frame global gain and left-right gradient.

    Returns:
        ``(T, 2)`` float32: column 0 the gain (around 1), column 1 the gradient (around 0; brightness is
        multiplied by ``1 + gradient * x`` with x in [-1, 1] across the canvas).
    """
    gain = 1.0 + nuisance.gain * _slow_wave(n_frames, fps, rng, (4.0, 12.0))
    gradient = nuisance.gradient * _slow_wave(n_frames, fps, rng, (4.0, 12.0))
    return np.stack([gain, gradient], axis=1).astype(np.float32)


def _eyes(scene: Scene, closure: float) -> np.ndarray:
    """Neutral face with both upper lids lowered by ``closure`` of their travel, lash line at the lid edge."""
    if closure <= 0.01:
        return scene.open_rgb
    lid_y = scene.lid_top_px + closure * scene.lid_travel_px
    covered = np.clip(lid_y - scene.y_px + 0.5, 0.0, 1.0) * scene.lid_columns * (scene.y_px > scene.lid_top_px - 1.5)
    img = scene.open_rgb + covered[..., None] * (scene.closed_rgb - scene.open_rgb)
    inside = (scene.lid_travel_px > 0) & (scene.y_px < scene.lid_top_px + scene.lid_travel_px + 1.0)
    edge = scene.lid_columns * inside * np.exp(-0.5 * ((scene.y_px - lid_y) / 0.8) ** 2)
    return img * (1.0 - 0.6 * edge)[..., None]


def render_frames(
    scene: Scene,
    fields: Sequence[np.ndarray],
    amplitudes: np.ndarray,
    closure: np.ndarray,
    drift: np.ndarray,
    light: np.ndarray,
    noise_std: float,
    rng: np.random.Generator,
) -> Iterator[np.ndarray]:
    """Render T frames of ``scene``.

    Args:
        scene: the subject in its layout.
        fields: K expression fields, each ``(S, S, 2)`` float32 sampling offsets at the apex, px
            (:func:`sampling_offsets`).
        amplitudes: ``(K, T)`` float32 temporal profiles in [0, 1] (field k is applied ``amplitudes[k, t]`` times).
        closure: ``(T,)`` lid closure in [0, 1] (:func:`blink_closure`).
        drift: ``(T, 2, 3)`` backward head-drift maps (:func:`head_drift`).
        light: ``(T, 2)`` gain and gradient (:func:`illumination`).
        noise_std: sensor noise standard deviation, grey levels (0-255).
        rng: noise generator.

    Yields:
        ``(S, S, 3)`` uint8 RGB frames.
    """
    n_frames = len(closure)
    if amplitudes.shape != (len(fields), n_frames) or drift.shape != (n_frames, 2, 3) or light.shape != (n_frames, 2):
        raise ValueError(
            f"inconsistent inputs: {len(fields)} fields, amplitudes {amplitudes.shape}, closure ({n_frames},), "
            f"drift {drift.shape}, light {light.shape}"
        )
    x, y = scene.x_px, scene.y_px
    x_norm = (2.0 * x / (scene.layout.canvas_px - 1) - 1.0)[..., None]  # (S, S, 1) in [-1, 1]
    for t in range(n_frames):
        (a00, a01, b0), (a10, a11, b1) = drift[t]
        qx = a00 * x + a01 * y + b0  # (S, S) neutral-face px
        qy = a10 * x + a11 * y + b1
        mx, my = qx, qy
        for field, amp in zip(fields, amplitudes[:, t], strict=True):
            if amp > 0:
                d = cv2.remap(field, qx, qy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)  # (S, S, 2)
                mx, my = mx + amp * d[..., 0], my + amp * d[..., 1]
        frame = cv2.remap(_eyes(scene, float(closure[t])), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        frame *= light[t, 0] * (1.0 + light[t, 1] * x_norm)
        if noise_std > 0:
            frame += noise_std * rng.standard_normal(frame.shape, dtype=np.float32)
        yield np.clip(frame + 0.5, 0, 255).astype(np.uint8)
