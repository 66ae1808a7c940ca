"""FACS action units as smooth displacement fields, and expressions as AU combinations with an intensity.

Each AU is a sum of anisotropic Gaussian bumps, each anchored on a facial landmark of the subject
(:func:`pipeline.synth.face.landmarks`) and pushing skin in the direction the muscle pulls it in a frontal view.
The directions follow the FACS appearance changes (Ekman, Friesen & Hager, *Facial Action Coding System*, 2002):
AU1 raises the inner brow, AU2 the outer brow, AU4 lowers and draws the brows together, AU6 lifts the cheek and
the lower lid, AU9 wrinkles the nose (wings and upper lip up, inner brows down), AU10 raises the upper lip,
AU12 pulls the lip corners up and out, AU14 tightens them sideways (dimpler), AU15 pulls them down, AU17 pushes
the chin boss and lower lip up, AU25 parts the lips, AU26 drops the jaw.

The classes and their AU patterns are the MEGC2019 3-class grouping of CASME II emotions: positive (happiness:
AU6+AU12, AU12), negative (disgust: AU4, AU9, AU10; repression: AU14, AU15+AU17) and surprise (AU1+AU2, with or
without AU25/AU26), matching the AU codes those emotions carry in the real CASME II coding sheet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.synth.face import Identity, Layout, landmarks

__all__ = [
    "AU_BUMPS",
    "CLASS_PATTERNS",
    "Bump",
    "Expression",
    "action_units_cell",
    "au_field",
    "emotion_of",
    "expression_field",
    "sample_expression",
]


@dataclass(frozen=True)
class Bump:
    """One Gaussian push of skin, written for the image-right side and mirrored (x -> -x) when ``bilateral``."""

    anchor: str  # landmark name, without the _l/_r suffix when bilateral
    direction: tuple[float, float]  # (dx, dy) of the push on the image-right side, relative weight
    sigma: tuple[float, float]  # (sx, sy) extent in face units
    offset: tuple[float, float] = (0.0, 0.0)  # anchor shift in face units (x mirrored with the side)
    bilateral: bool = True


AU_BUMPS: dict[int, tuple[Bump, ...]] = {
    1: (Bump("brow_inner", (0.0, -1.0), (0.09, 0.07)), Bump("brow_inner", (0.0, -0.5), (0.1, 0.1), (0.0, -0.12))),
    2: (Bump("brow_outer", (0.0, -1.0), (0.1, 0.07)), Bump("brow_mid", (0.0, -0.5), (0.08, 0.07))),
    4: (Bump("brow_inner", (-0.6, 0.8), (0.09, 0.07)), Bump("brow_mid", (-0.2, 0.6), (0.1, 0.07))),
    6: (  # the lower lid and the skin below it rise (the eye narrows from below), crow's-feet corner lifts
        Bump("lower_lid", (0.0, -1.0), (0.1, 0.04)),
        Bump("cheek", (0.1, -0.8), (0.12, 0.09)),
        Bump("eye_outer", (0.0, -0.5), (0.06, 0.06), (0.05, 0.0)),
    ),
    9: (
        Bump("nose_wing", (-0.1, -1.0), (0.06, 0.07)),
        Bump("glabella", (0.0, 0.5), (0.07, 0.06), bilateral=False),
        Bump("brow_inner", (0.0, 0.4), (0.07, 0.06)),
        Bump("lip_upper", (0.0, -0.4), (0.1, 0.05), bilateral=False),
    ),
    10: (
        Bump("lip_upper", (0.0, -1.0), (0.08, 0.05)),
        Bump("lip_upper", (0.0, -0.6), (0.06, 0.05), bilateral=False),
        Bump("nose_wing", (0.0, -0.3), (0.06, 0.06)),
    ),
    12: (Bump("mouth_corner", (0.7, -0.7), (0.09, 0.07)), Bump("cheek", (0.2, -0.3), (0.12, 0.1))),
    14: (Bump("mouth_corner", (0.8, -0.1), (0.06, 0.05), (0.02, 0.0)),),
    15: (Bump("mouth_corner", (0.15, 1.0), (0.08, 0.07)), Bump("jaw", (0.0, 0.3), (0.12, 0.1))),
    17: (Bump("chin", (0.0, -1.0), (0.12, 0.08), bilateral=False),
         Bump("lip_lower", (0.0, -0.7), (0.1, 0.05), bilateral=False)),
    25: (  # equal and opposite pushes either side of the mouth line: the dark line opens into a gap
        Bump("mouth_centre", (0.0, 1.0), (0.16, 0.045), (0.0, 0.045), bilateral=False),
        Bump("mouth_centre", (0.0, -1.0), (0.16, 0.045), (0.0, -0.045), bilateral=False),
        Bump("lip_lower", (0.0, 0.4), (0.12, 0.06), bilateral=False),
    ),
    26: (
        Bump("chin", (0.0, 1.0), (0.3, 0.15), bilateral=False),
        Bump("lip_lower", (0.0, 0.9), (0.2, 0.06), bilateral=False),
        Bump("jaw", (0.0, 0.8), (0.15, 0.15)),
    ),
}

# class -> AU patterns (MEGC2019 3-class grouping of CASME II emotions); the emotion each pattern is coded with.
CLASS_PATTERNS: dict[str, tuple[tuple[int, ...], ...]] = {
    "negative": ((4,), (9,), (10,), (14,), (15, 17)),
    "positive": ((6, 12), (12,)),
    "surprise": ((1, 2), (1, 2, 25), (1, 2, 26)),
}
_EMOTIONS: dict[tuple[int, ...], str] = {
    (4,): "disgust", (9,): "disgust", (10,): "disgust", (14,): "repression", (15, 17): "repression",
    (6, 12): "happiness", (12,): "happiness",
    (1, 2): "surprise", (1, 2, 25): "surprise", (1, 2, 26): "surprise",
}


@dataclass(frozen=True)
class Expression:
    """An AU combination: ``aus`` (sorted AU numbers), their relative ``weights`` in (0, 1], class and emotion."""

    aus: tuple[int, ...]
    weights: tuple[float, ...]
    cls: str  # negative | positive | surprise
    emotion: str  # CASME II vocabulary: happiness | disgust | repression | surprise


def emotion_of(aus: tuple[int, ...]) -> str:
    """CASME II ``Estimated Emotion`` of an AU pattern from :data:`CLASS_PATTERNS`; KeyError for others."""
    return _EMOTIONS[tuple(sorted(aus))]


def action_units_cell(aus: tuple[int, ...]) -> int | str:
    """Format the ``Action Units`` cell as CASME II stores it: an int for one AU (``12``), else ``'6+12'``."""
    if len(aus) == 1:
        return int(aus[0])
    return "+".join(str(a) for a in sorted(aus))


def sample_expression(rng: np.random.Generator, cls: str, pattern: tuple[int, ...] | None = None) -> Expression:
    """Draw an expression of class ``cls``: a pattern (random unless given) and per-AU weights in [0.6, 1].

    Raises:
        ValueError: unknown class, or a pattern that is not one of the class's.
    """
    if cls not in CLASS_PATTERNS:
        raise ValueError(f"unknown class {cls!r}; expected one of {sorted(CLASS_PATTERNS)}")
    patterns = CLASS_PATTERNS[cls]
    if pattern is None:
        pattern = patterns[int(rng.integers(len(patterns)))]
    if pattern not in patterns:
        raise ValueError(f"AU pattern {pattern} is not a {cls} pattern {patterns}")
    weights = tuple(float(w) for w in rng.uniform(0.6, 1.0, len(pattern)))
    return Expression(tuple(pattern), weights, cls, emotion_of(pattern))


def _bump_field(bump: Bump, pts: dict[str, np.ndarray], layout: Layout, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    out = np.zeros((*x.shape, 2), np.float32)
    sides = (("l", -1.0), ("r", 1.0)) if bump.bilateral else (("", 1.0),)
    for side, s in sides:
        name = f"{bump.anchor}_{side}" if side else bump.anchor
        centre = layout.to_px(pts[name] + np.array([s * bump.offset[0], bump.offset[1]], np.float32))
        sx, sy = (sig * layout.px_per_unit for sig in bump.sigma)
        g = np.exp(-0.5 * (((x - centre[0]) / sx) ** 2 + ((y - centre[1]) / sy) ** 2))
        out[..., 0] += s * bump.direction[0] * g
        out[..., 1] += bump.direction[1] * g
    return out


def au_field(au: int, identity: Identity, layout: Layout) -> np.ndarray:
    """Displacement field of one AU on the canvas, normalised to a peak of 1 px.

    Args:
        au: AU number, a key of :data:`AU_BUMPS`.
        identity: the subject (its landmarks anchor the bumps).
        layout: the canvas.

    Returns:
        ``(canvas_px, canvas_px, 2)`` float32 forward displacement ``(dx, dy)``; max over pixels of its norm is 1.

    Raises:
        ValueError: an AU this renderer does not model.
    """
    if au not in AU_BUMPS:
        raise ValueError(f"AU{au} is not modelled; modelled AUs: {sorted(AU_BUMPS)}")
    pts = landmarks(identity)
    coords = np.arange(layout.canvas_px, dtype=np.float32)
    x, y = np.meshgrid(coords, coords)
    field = sum(_bump_field(b, pts, layout, x, y) for b in AU_BUMPS[au])
    return field / np.linalg.norm(field, axis=-1).max()


def expression_field(expression: Expression, identity: Identity, layout: Layout) -> np.ndarray:
    """Displacement field of an expression: the weighted sum of its AU fields, normalised to a peak of 1 px.

    Multiply by the wanted peak displacement (px at the face box side) and by the temporal profile
    (onset 0 -> apex 1 -> offset 0) to get the field applied to a frame.

    Returns:
        ``(canvas_px, canvas_px, 2)`` float32 forward displacement ``(dx, dy)``; max of its norm is exactly 1.
    """
    field = sum(w * au_field(au, identity, layout) for au, w in zip(expression.aus, expression.weights, strict=True))
    return (field / np.linalg.norm(field, axis=-1).max()).astype(np.float32)
