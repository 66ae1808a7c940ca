"""Synthetic identities: seeded face geometry, colours and skin texture, their landmarks, and the neutral render.

Coordinates. Every face is described in *face units*: the face box (the tight crop a CASME II ``Cropped`` frame
shows, brows to chin, cheek to cheek) is the square ``[-1, 1] x [-1, 1]``, x to the image right, y down.
A :class:`Layout` places that box in a canvas: the micro frames are the box itself (canvas = box), the macro
videos put the box in the middle of a larger canvas with background around it. Because the box has the same
side in pixels (``face_size_px``) in both, an AU displacement in px means the same thing in both.

The render is a stack of soft-edged shapes (anti-aliased by supersampling, then area-downsampled) chosen to
carry the cues a frontal-face detector and a motion model need: a skin-toned oval with edge shading and a side
light, hair and a darker background around it, dark brows above darker eye sockets with sclera, iris and lid
line, nose-side shading with nostrils, nasolabial folds, and lips split by a dark mouth line. A multi-scale
skin texture (defined in face units, so a subject looks the same in every layout) gives the warp something to
move on flat skin, as pores and shading do in real footage.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["Identity", "Layout", "eyelid_maps", "landmarks", "render_face", "sample_identity"]

SUPERSAMPLE = 2  # render at 2x, then INTER_AREA down: anti-aliased edges
TEXTURE_EXTENT = 2.0  # texture covers face units [-2, 2]^2 (the whole 2x macro canvas)
MOUTH_LINE_SAG = 0.012  # the line between the lips dips this much (face units) at the midline
TEXTURE_SAMPLES = 512  # texture grid side; 0.5 px per sample at a 128 px face box

# Skin tones (RGB, 0-255) from light to dark; a subject's tone is a random blend of two neighbours.
_SKIN_TONES = np.array(
    [[236, 201, 176], [224, 180, 150], [205, 155, 120], [176, 125, 90], [141, 96, 66], [110, 74, 52]],
    dtype=np.float32,
)
_HAIR_COLOURS = np.array([[25, 20, 18], [50, 35, 25], [85, 60, 40], [110, 85, 60], [40, 40, 42]], np.float32)
_IRIS_COLOURS = np.array([[60, 40, 25], [90, 65, 40], [70, 90, 110], [80, 95, 70]], np.float32)


@dataclass(frozen=True)
class Identity:
    """One synthetic subject. Lengths are in face units (face box = [-1, 1]^2), colours RGB in [0, 255]."""

    face_rx: float  # half-width of the face oval
    face_ry: float  # half-height of the face oval
    face_cy: float  # y of the oval centre
    eye_dx: float  # |x| of each eye centre
    eye_y: float  # y of the eye centres
    eye_rx: float  # eye half-width (corner to centre)
    eye_ry: float  # eye half-height when open
    brow_gap: float  # brow centre line height above the eye centre
    brow_arch: float  # extra height of the brow's middle over its ends
    brow_thickness: float
    nose_y: float  # y of the nose tip
    nose_w: float  # |x| of each nose wing
    mouth_y: float  # y of the mouth line
    mouth_w: float  # |x| of each lip corner
    lip_h: float  # lip half-thickness
    hairline_y: float  # y of the hairline at the midline
    skin_rgb: tuple[float, float, float]
    hair_rgb: tuple[float, float, float]
    iris_rgb: tuple[float, float, float]
    lip_rgb: tuple[float, float, float]
    background_rgb: tuple[float, float, float]
    clothes_rgb: tuple[float, float, float]
    light_x: float  # side-light gradient across the face, fraction of brightness per face unit
    texture_seed: int


@dataclass(frozen=True)
class Layout:
    """Where the face box sits: a square canvas of ``canvas_px`` with the box (side ``face_px``) centred."""

    canvas_px: int
    face_px: int

    def __post_init__(self) -> None:
        if self.face_px < 16 or self.canvas_px < self.face_px:
            raise ValueError(f"Layout needs 16 <= face_px <= canvas_px, got {self.face_px}, {self.canvas_px}")

    @property
    def px_per_unit(self) -> float:
        """Pixels per face unit (half the face box side)."""
        return self.face_px / 2.0

    def to_px(self, uv: np.ndarray) -> np.ndarray:
        """Face units -> canvas pixel coordinates (pixel centres, OpenCV ``remap`` convention); shape kept."""
        return (self.canvas_px - 1) / 2.0 + np.asarray(uv, np.float32) * self.px_per_unit

    def grid(self, supersample: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Face-unit coordinates of every (sub)pixel centre.

        Returns:
            ``(U, V)``, each ``(S, S)`` float32 with ``S = canvas_px * supersample``; a ``supersample`` x
            ``supersample`` block averages (``cv2.INTER_AREA``) to one canvas pixel.
        """
        n = self.canvas_px * supersample
        px = (np.arange(n, dtype=np.float32) + 0.5) / supersample - 0.5  # sub-pixel centres, canvas px
        u = (px - (self.canvas_px - 1) / 2.0) / self.px_per_unit
        return np.meshgrid(u, u)


def _pick(rng: np.random.Generator, palette: np.ndarray, jitter: float) -> tuple[float, float, float]:
    i = rng.uniform(0, len(palette) - 1)
    lo = int(np.floor(i))
    rgb = palette[lo] + (i - lo) * (palette[min(lo + 1, len(palette) - 1)] - palette[lo])
    rgb = np.clip(rgb * rng.uniform(1 - jitter, 1 + jitter, 3), 0, 255)
    return tuple(float(c) for c in rgb)


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw one subject's geometry, colours and texture seed.

    Ranges follow adult face proportions (eyes near mid-height of the head, inter-ocular distance about one eye
    width, mouth about as wide as the inter-pupil distance) with enough spread that subjects are told apart by
    shape as well as by skin tone and texture.

    Args:
        rng: the subject's own generator (seeded per subject by the caller).

    Returns:
        A frozen :class:`Identity`.
    """
    u = rng.uniform
    eye_y = u(-0.30, -0.20)
    nose_y = eye_y + u(0.40, 0.48)
    skin = _pick(rng, _SKIN_TONES, 0.04)
    lip = tuple(float(c) for c in np.asarray(skin) * np.array([0.80, 0.55, 0.58]) + np.array([25.0, 0.0, 5.0]))
    return Identity(
        face_rx=u(0.74, 0.84), face_ry=u(1.02, 1.10), face_cy=u(-0.10, -0.04),
        eye_dx=u(0.31, 0.37), eye_y=eye_y, eye_rx=u(0.13, 0.155), eye_ry=u(0.050, 0.062),
        brow_gap=u(0.15, 0.19), brow_arch=u(0.015, 0.05), brow_thickness=u(0.05, 0.075),
        nose_y=nose_y, nose_w=u(0.11, 0.14), mouth_y=nose_y + u(0.25, 0.30), mouth_w=u(0.22, 0.28),
        lip_h=u(0.035, 0.05), hairline_y=u(-0.98, -0.82),
        skin_rgb=skin, hair_rgb=_pick(rng, _HAIR_COLOURS, 0.15), iris_rgb=_pick(rng, _IRIS_COLOURS, 0.1),
        lip_rgb=lip, background_rgb=tuple(float(c) for c in u(110, 215, 3)),
        clothes_rgb=tuple(float(c) for c in u(30, 200, 3)), light_x=u(-0.12, 0.12),
        texture_seed=int(rng.integers(2**31)),
    )


def landmarks(identity: Identity) -> dict[str, np.ndarray]:
    """Named facial landmarks of a neutral face, the anchors of the AU displacement fields.

    Side suffixes ``_l`` / ``_r`` are *image* left / right (the subject's right / left), as in the frame.

    Args:
        identity: the subject.

    Returns:
        ``name -> (2,) float32 (x, y)`` in face units (face box = [-1, 1]^2, y down).
    """
    i = identity
    brow_half = 1.25 * i.eye_rx
    chin_y = i.face_cy + i.face_ry
    pts: dict[str, tuple[float, float]] = {
        "nose_root": (0.0, i.eye_y),
        "nose_tip": (0.0, i.nose_y),
        "mouth_centre": (0.0, i.mouth_y + MOUTH_LINE_SAG),  # middle of the dark line between the lips
        "lip_upper": (0.0, i.mouth_y - 1.5 * i.lip_h),
        "lip_lower": (0.0, i.mouth_y + 2.0 * i.lip_h),
        "chin": (0.0, chin_y - 0.13),
        "glabella": (0.0, i.eye_y - i.brow_gap),
    }
    for side, s in (("l", -1.0), ("r", 1.0)):
        ex = s * i.eye_dx
        pts[f"eye_{side}"] = (ex, i.eye_y)
        pts[f"eye_inner_{side}"] = (ex - s * i.eye_rx, i.eye_y)
        pts[f"eye_outer_{side}"] = (ex + s * i.eye_rx, i.eye_y)
        pts[f"lower_lid_{side}"] = (ex, i.eye_y + i.eye_ry)
        pts[f"brow_inner_{side}"] = (ex - s * 0.85 * brow_half, _brow_y(i, -0.85))
        pts[f"brow_mid_{side}"] = (ex, _brow_y(i, 0.0))
        pts[f"brow_outer_{side}"] = (ex + s * 0.85 * brow_half, _brow_y(i, 0.85))
        pts[f"cheek_{side}"] = (ex + s * 0.04, i.eye_y + 0.27)
        pts[f"nose_wing_{side}"] = (s * i.nose_w, i.nose_y - 0.01)
        pts[f"mouth_corner_{side}"] = (s * i.mouth_w, i.mouth_y)
        pts[f"lip_upper_{side}"] = (s * 0.5 * i.mouth_w, i.mouth_y - 1.3 * i.lip_h)
        pts[f"lip_lower_{side}"] = (s * 0.5 * i.mouth_w, i.mouth_y + 1.8 * i.lip_h)
        pts[f"jaw_{side}"] = (s * 0.45 * i.face_rx, chin_y - 0.2)
    return {name: np.array(xy, np.float32) for name, xy in pts.items()}


def _brow_y(i: Identity, t: np.ndarray | float) -> np.ndarray | float:
    """Brow centre line at normalised position ``t`` (-1 inner end, +1 outer end): an arch, inner end lower."""
    return i.eye_y - i.brow_gap - i.brow_arch * (1 - t**2) + 0.012 * (-t)


def _soft(d: np.ndarray, width: float) -> np.ndarray:
    """Soft step: 0 for ``d << 0``, 1 for ``d >> 0``, ramp ``width`` wide (same units as ``d``)."""
    return 0.5 + 0.5 * np.tanh(d / width)


def _ellipse(u: np.ndarray, v: np.ndarray, c: tuple[float, float], r: tuple[float, float], w: float) -> np.ndarray:
    d = 1.0 - np.sqrt(((u - c[0]) / r[0]) ** 2 + ((v - c[1]) / r[1]) ** 2)
    return _soft(d * min(r), w)


def _blend(img: np.ndarray, alpha: np.ndarray, rgb) -> None:
    img += alpha[..., None] * (np.asarray(rgb, np.float32) - img)


def _shade(img: np.ndarray, alpha: np.ndarray, factor: float) -> None:
    img *= 1.0 + (factor - 1.0) * alpha[..., None]


def _texture(identity: Identity, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Multiplicative skin/scene texture at face-unit points ``(u, v)``: (H, W) float32 around 1.

    Three octaves of blurred Gaussian noise (pores ~0.75 px, blotches ~2 px, shading ~8 px at a 128 px box)
    on a fixed face-unit grid, so the same subject gets the same texture in every layout.
    """
    rng = np.random.default_rng(identity.texture_seed)
    n = TEXTURE_SAMPLES
    tex = np.zeros((n, n), np.float32)
    for sigma, amp in ((1.5, 0.035), (4.0, 0.04), (16.0, 0.05)):
        octave = cv2.GaussianBlur(rng.standard_normal((n, n), dtype=np.float32), (0, 0), sigma)
        tex += amp * octave / (octave.std() + 1e-8)
    scale = n / (2 * TEXTURE_EXTENT)
    mx = ((u + TEXTURE_EXTENT) * scale - 0.5).astype(np.float32)
    my = ((v + TEXTURE_EXTENT) * scale - 0.5).astype(np.float32)
    return 1.0 + cv2.remap(tex, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _draw_scene(img: np.ndarray, i: Identity, u: np.ndarray, v: np.ndarray, w: float) -> np.ndarray:
    """Background, clothes, neck, hair, ears and the face oval; returns the face-oval alpha (H, W)."""
    _blend(img, np.ones_like(u), i.background_rgb)
    img *= (1.12 - 0.06 * (v + 2.0))[..., None]  # wall lit from above
    chin_y = i.face_cy + i.face_ry
    _blend(img, _ellipse(u, v, (0.0, chin_y + 0.95), (1.7, 0.75), w), i.clothes_rgb)
    neck = _soft(0.38 * i.face_rx - np.abs(u), w) * _soft(v - i.face_cy, w) * _soft(chin_y + 0.4 - v, 2 * w)
    _blend(img, neck, np.asarray(i.skin_rgb) * 0.72)
    hair_back = _ellipse(u, v, (0.0, i.face_cy - 0.08), (i.face_rx + 0.15, i.face_ry + 0.1), w)
    _blend(img, hair_back * _soft(i.face_cy + 0.3 - v, 0.08), i.hair_rgb)
    for s in (-1.0, 1.0):
        _blend(img, _ellipse(u, v, (s * (i.face_rx - 0.03), i.eye_y + 0.15), (0.09, 0.17), w),
               np.asarray(i.skin_rgb) * 0.85)
    taper = 1.0 - 0.16 * np.clip((v - i.face_cy) / i.face_ry, 0.0, 1.0) ** 1.5  # narrower towards the chin
    r = np.sqrt((u / (i.face_rx * taper)) ** 2 + ((v - i.face_cy) / i.face_ry) ** 2)
    face = _soft((1.0 - r) * i.face_rx, w)
    shading = (1.0 - 0.32 * np.clip(r, 0, 1) ** 4) * (1.0 + i.light_x * u)  # darker towards the rim, side light
    skin = np.asarray(i.skin_rgb, np.float32) * shading[..., None]
    img += face[..., None] * (skin - img)
    hairline = i.hairline_y + 0.4 * (u / i.face_rx) ** 2
    _blend(img, face * _soft(hairline - v, 2 * w), i.hair_rgb)
    return face


def _draw_nose_and_cheeks(img: np.ndarray, i: Identity, u: np.ndarray, v: np.ndarray, w: float) -> None:
    """Eye sockets, cheeks, nose shading with nostrils, nasolabial folds (multiplicative shading)."""
    for s in (-1.0, 1.0):
        ex = s * i.eye_dx
        _shade(img, _ellipse(u, v, (ex, i.eye_y - 0.015), (1.55 * i.eye_rx, 2.7 * i.eye_ry), 0.05), 0.78)
        _blend(img, 0.15 * _ellipse(u, v, (ex + s * 0.03, i.eye_y + 0.3), (0.16, 0.1), 0.08), i.lip_rgb)
        _shade(img, _ellipse(u, v, (s * 0.85 * i.nose_w, i.nose_y - 0.015), (0.05, 0.045), 0.03), 0.82)
        _shade(img, _ellipse(u, v, (s * 0.055, i.nose_y + 0.02), (0.035, 0.018), 1.5 * w), 0.4)
        along = np.clip((v - i.nose_y) / (i.mouth_y + 0.07 - i.nose_y), 0.0, 1.0)
        fold_x = s * (i.nose_w + 0.03 + along * (i.mouth_w - i.nose_w + 0.03))
        fold = _soft(0.012 - np.abs(u - fold_x), 0.012) * _soft(v - i.nose_y, 0.02) * _soft(i.mouth_y + 0.07 - v, 0.03)
        _shade(img, fold, 0.86)
    bridge = _soft(v - (i.eye_y + 0.03), 0.03) * _soft(i.nose_y - 0.03 - v, 0.03)
    for s in (-1.0, 1.0):
        _shade(img, bridge * np.exp(-0.5 * ((u - s * 0.075) / 0.028) ** 2), 0.84)
    _shade(img, bridge * np.exp(-0.5 * (u / 0.025) ** 2), 1.07)
    _shade(img, _ellipse(u, v, (0.0, i.nose_y - 0.035), (0.065, 0.055), 0.04), 1.06)
    _shade(img, _ellipse(u, v, (0.0, i.nose_y + 0.045), (0.8 * i.nose_w, 0.03), 0.02), 0.8)


def _draw_mouth_and_brows(img: np.ndarray, i: Identity, u: np.ndarray, v: np.ndarray, w: float) -> None:
    """Lips with the dark mouth line, shadow under the lower lip, chin highlight, and the brows."""
    lips = _ellipse(u, v, (0.0, i.mouth_y + 0.25 * i.lip_h), (i.mouth_w, 2.3 * i.lip_h), w)
    _blend(img, 0.9 * lips, i.lip_rgb)
    _shade(img, lips * _soft(i.mouth_y - v, w), 0.88)  # upper lip faces down: darker
    t = np.clip(u / i.mouth_w, -1.0, 1.0)
    line_y = i.mouth_y + MOUTH_LINE_SAG * (1.0 - t**2)
    line = _soft(0.013 - np.abs(v - line_y), w) * _soft(1.03 * i.mouth_w - np.abs(u), w)
    _blend(img, 0.9 * line, (35.0, 15.0, 15.0))
    _shade(img, _ellipse(u, v, (0.0, i.mouth_y + 3.0 * i.lip_h), (0.6 * i.mouth_w, 0.035), 0.03), 0.84)
    _shade(img, _ellipse(u, v, (0.0, i.face_cy + i.face_ry - 0.12), (0.15, 0.08), 0.05), 1.04)
    brow_half = 1.25 * i.eye_rx
    for s in (-1.0, 1.0):
        tb = (u - s * i.eye_dx) * s / brow_half  # -1 inner end, +1 outer end
        half = 0.5 * i.brow_thickness * (1.0 - 0.35 * np.clip(tb, -1, 1))
        band = _soft(half - np.abs(v - _brow_y(i, tb)), w) * _soft(1.0 - np.abs(tb), 0.08)
        _blend(img, 0.92 * band, np.asarray(i.hair_rgb) * 0.85)


def _eye_extent(i: Identity, u: np.ndarray, ex: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Upper and lower lid y and the almond's column mask for the eye at ``ex`` (all (H, W), face units)."""
    t = (u - ex) / i.eye_rx
    h = i.eye_ry * np.clip(1.0 - t**2, 0.0, 1.0) ** 0.8
    return i.eye_y - 1.1 * h, i.eye_y + 0.8 * h, (np.abs(t) < 1.0).astype(np.float32)


def _draw_eyes(img: np.ndarray, i: Identity, u: np.ndarray, v: np.ndarray, w: float, closed: bool) -> None:
    """Open eyes (sclera, iris, pupil, lid line, crease) or closed lids with a lash line, in place."""
    for s in (-1.0, 1.0):
        ex = s * i.eye_dx
        top, bottom, cols = _eye_extent(i, u, ex)
        almond = _soft(np.minimum(v - top, bottom - v), w) * cols
        if closed:
            _blend(img, almond, np.asarray(i.skin_rgb) * 0.8)
            lash = _soft(0.012 - np.abs(v - (i.eye_y + 0.5 * (bottom - i.eye_y))), w) * cols
            _blend(img, 0.9 * lash, (25.0, 18.0, 16.0))
            continue
        _blend(img, almond, (215.0, 208.0, 200.0))
        iris = _ellipse(u, v, (ex, i.eye_y + 0.004), (1.05 * i.eye_ry, 1.05 * i.eye_ry), w) * almond
        _blend(img, iris, i.iris_rgb)
        _blend(img, _ellipse(u, v, (ex, i.eye_y + 0.004), (0.45 * i.eye_ry, 0.45 * i.eye_ry), w) * almond,
               (12.0, 10.0, 10.0))
        lid = _soft(0.014 - np.abs(v - top + 0.004), w) * _soft(1.08 - np.abs((u - ex) / i.eye_rx), 0.05)
        _blend(img, 0.95 * lid, (20.0, 15.0, 14.0))
        _shade(img, _soft(0.01 - np.abs(v - top + 0.05), 0.01) * cols, 0.85)


def render_face(identity: Identity, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """Render the neutral face of ``identity`` in ``layout``, eyes open and eyes closed.

    The two renders differ only inside the eye almonds; :mod:`pipeline.synth.render` blends them under a moving
    lid line to draw blinks.

    Args:
        identity: the subject.
        layout: canvas size and face box.

    Returns:
        ``(open, closed)``, each ``(canvas_px, canvas_px, 3)`` float32 RGB in [0, 255].
    """
    u, v = layout.grid(SUPERSAMPLE)
    w = 0.6 / layout.px_per_unit  # edge ramp ~0.6 output px, in face units
    img = np.zeros((*u.shape, 3), np.float32)
    _draw_scene(img, identity, u, v, w)
    _draw_nose_and_cheeks(img, identity, u, v, w)
    _draw_mouth_and_brows(img, identity, u, v, w)
    img *= _texture(identity, u, v)[..., None]
    out = []
    for closed in (False, True):
        eyes = img.copy()
        _draw_eyes(eyes, identity, u, v, w, closed)
        small = cv2.resize(eyes, (layout.canvas_px, layout.canvas_px), interpolation=cv2.INTER_AREA)
        out.append(np.clip(small, 0.0, 255.0).astype(np.float32))
    return out[0], out[1]


def eyelid_maps(identity: Identity, layout: Layout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel upper-lid position and lid travel of both eyes, for blinks.

    A blink of closure ``c`` in [0, 1] shows the closed-eye render wherever ``y_px < top_px + c * travel_px``
    inside ``columns``.

    Returns:
        ``(top_px, travel_px, columns)``, each ``(canvas_px, canvas_px)`` float32: upper-lid y (canvas px),
        upper-to-lower lid distance (px, > 0 inside an eye), and 1 inside an eye's column range, else 0.
    """
    u, v = layout.grid(1)
    top = np.zeros_like(u)
    travel = np.zeros_like(u)
    cols = np.zeros_like(u)
    for s in (-1.0, 1.0):
        t, b, c = _eye_extent(identity, u, s * identity.eye_dx)
        near = c * (np.abs(v - identity.eye_y) < 3 * identity.eye_ry)
        top = np.where(near > 0, t, top)
        travel = np.where(near > 0, b - t, travel)
        cols = np.maximum(cols, near)
    to_px = layout.to_px
    return to_px(top).astype(np.float32), (travel * layout.px_per_unit).astype(np.float32), cols.astype(np.float32)

