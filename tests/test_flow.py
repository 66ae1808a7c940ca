"""Tests of pipeline.face.optical_flow: TV-L1 accuracy on a real face warped by known sub-pixel fields, the sign
convention,
the optical strain against analytic fields, and the 28 px (u, v, strain) features.

The ground-truth apex is rendered so that the flow is known exactly at every *onset* pixel: the field f is defined
on the onset grid (onset pixel x moves to x + f(x)), and apex(y) = onset(g(y)) with g the inverse map, g(y) + f(g(y))
= y, solved by fixed-point iteration. Rendering apex(y) = onset(y - f(y)) instead would be off by about |∇f|·|f|
(0.05 px for the local field here), half the tolerance. The face is cut from a larger canvas so that content
really moves in across the crop's border, and resampled with bicubic interpolation: bilinear resampling low-pass
filters the apex alone, by an amount that depends on the sub-pixel phase, and biases TV-L1 (measured: a
(0.3, -0.2) px shift came out as (0.27, -0.14) with bilinear rendering, (0.32, -0.18) with bicubic).
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.face.optical_flow import FLOW_GRID_PX, TVL1Params, flow_features, optical_strain, tvl1_flow

SIZE = 112  # crop side the flow is computed at (the pipeline's micro.image_size_px)
MARGIN = 16  # extra canvas around the crop, so the warp moves real content in across its border
BORDER = 4  # px excluded from the error statistics (TV-L1's boundary handling)
EPE_TOLERANCE_PX = 0.1
SHIFT = (0.3, -0.2)  # (u, v) px: content moves right and up


@pytest.fixture(scope="module")
def face_canvas(shared_videos: Path) -> np.ndarray:
    """(SIZE + 2 MARGIN)² uint8 RGB canvas centred on the face of frame 0 of single_face.mp4 (decord)."""
    import decord

    from pipeline.face.video import HaarFaceDetector, crop_matrix, warp_face

    frame = decord.VideoReader(str(shared_videos / "single_face.mp4"))[0].asnumpy()  # (H, W, 3) uint8 RGB
    box = HaarFaceDetector().detect(frame)
    if box is None:  # the central square of the frame
        side = min(frame.shape[:2])
        box = ((frame.shape[1] - side) / 2, (frame.shape[0] - side) / 2, side, side)
    matrix = crop_matrix(box, 1.2, SIZE)
    matrix[:, 2] += MARGIN  # the same crop, with MARGIN px of context on every side
    return warp_face(frame, matrix, SIZE + 2 * MARGIN)


def canvas_grid() -> tuple[np.ndarray, np.ndarray]:
    side = SIZE + 2 * MARGIN
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    return xx, yy


def render_apex(canvas: np.ndarray, fx: np.ndarray, fy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(onset, apex) crops, (SIZE, SIZE, 3) uint8, where onset pixel x moves to x + (fx, fy)(x) in the apex."""
    xx, yy = canvas_grid()
    gx, gy = xx - fx, yy - fy
    for _ in range(30):  # g = y - f(g): converges since |∇f| << 1
        f_at_g = [cv2.remap(f, gx, gy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) for f in (fx, fy)]
        gx, gy = xx - f_at_g[0], yy - f_at_g[1]
    apex = cv2.remap(canvas.astype(np.float32), gx, gy, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    apex = np.clip(np.rint(apex), 0, 255).astype(np.uint8)
    crop = slice(MARGIN, MARGIN + SIZE)
    return np.ascontiguousarray(canvas[crop, crop]), np.ascontiguousarray(apex[crop, crop])


def crop_field(field: np.ndarray) -> np.ndarray:
    return field[MARGIN : MARGIN + SIZE, MARGIN : MARGIN + SIZE]


def interior(a: np.ndarray) -> np.ndarray:
    return a[BORDER:-BORDER, BORDER:-BORDER]


def local_field() -> tuple[np.ndarray, np.ndarray]:
    """Two smooth bumps like muscle movements: 1.0 px at (70, 40) (sigma 12 px), 0.86 px at (40, 80) (sigma 10)."""
    xx, yy = canvas_grid()
    x, y = xx - MARGIN, yy - MARGIN  # crop coordinates
    brow = np.exp(-((x - 70) ** 2 + (y - 40) ** 2) / (2 * 12.0**2))
    mouth = np.exp(-((x - 40) ** 2 + (y - 80) ** 2) / (2 * 10.0**2))
    fx = (0.8 * brow - 0.5 * mouth).astype(np.float32)
    fy = (-0.6 * brow + 0.7 * mouth).astype(np.float32)
    return fx, fy


# --- TV-L1 accuracy and sign ---------------------------------------------------------------------------------


def test_tvl1_recovers_a_global_subpixel_shift(face_canvas: np.ndarray) -> None:
    xx, _ = canvas_grid()
    fx, fy = np.full_like(xx, SHIFT[0]), np.full_like(xx, SHIFT[1])
    onset, apex = render_apex(face_canvas, fx, fy)
    flow = tvl1_flow(onset, apex)
    assert flow.shape == (SIZE, SIZE, 2) and flow.dtype == np.float32
    error = np.hypot(flow[..., 0] - SHIFT[0], flow[..., 1] - SHIFT[1])
    assert interior(error).mean() < EPE_TOLERANCE_PX, interior(error).mean()  # measured ~0.04 px
    # the sign convention: onset pixels map to their apex positions (content moved right and up)
    mean_u, mean_v = interior(flow).reshape(-1, 2).mean(axis=0)
    assert mean_u == pytest.approx(SHIFT[0], abs=0.05) and mean_v == pytest.approx(SHIFT[1], abs=0.05)
    # and apex -> onset is the reverse motion
    back = interior(tvl1_flow(apex, onset)).reshape(-1, 2).mean(axis=0)
    np.testing.assert_allclose(back, [-SHIFT[0], -SHIFT[1]], atol=0.05)


def test_tvl1_recovers_a_local_micro_movement(face_canvas: np.ndarray) -> None:
    fx, fy = local_field()
    onset, apex = render_apex(face_canvas, fx, fy)
    flow = tvl1_flow(onset, apex)
    true_u, true_v = crop_field(fx), crop_field(fy)
    error = np.hypot(flow[..., 0] - true_u, flow[..., 1] - true_v)
    assert interior(error).mean() < EPE_TOLERANCE_PX, interior(error).mean()  # measured ~0.04 px
    # the known bias of TV-L1 at its defaults: a local bump is found where it is, pointing the right way, but
    # shrunk (measured: 0.70 of its size where it moves > 0.5 px)
    true_norm = np.hypot(true_u, true_v)
    moving, still = true_norm > 0.5, true_norm < 0.05
    est_norm = np.hypot(flow[..., 0], flow[..., 1])
    cosine = (flow[..., 0] * true_u + flow[..., 1] * true_v)[moving] / (est_norm * true_norm)[moving]
    assert np.median(cosine) > 0.95
    assert 0.5 < est_norm[moving].mean() / true_norm[moving].mean() < 1.05
    assert interior(est_norm)[interior(still)].mean() < 0.05


def test_tvl1_of_identical_frames_is_zero(face_canvas: np.ndarray) -> None:
    onset = np.ascontiguousarray(face_canvas[MARGIN : MARGIN + SIZE, MARGIN : MARGIN + SIZE])
    assert np.abs(tvl1_flow(onset, onset.copy())).max() < 1e-3


def test_tvl1_params_reach_the_solver() -> None:
    solver = TVL1Params(theta=0.1, n_warps=3, inner_iterations=7, median_filtering=1).create()
    assert solver.getTheta() == pytest.approx(0.1) and solver.getWarpingsNumber() == 3
    assert solver.getInnerIterations() == 7 and solver.getMedianFiltering() == 1
    default = TVL1Params().create()  # OpenCV's defaults, spelled out in TVL1Params
    assert (default.getTau(), default.getLambda(), default.getTheta()) == pytest.approx((0.25, 0.15, 0.3))
    assert (default.getScalesNumber(), default.getWarpingsNumber(), default.getEpsilon()) == pytest.approx(
        (5, 5, 0.01))


def test_tvl1_without_opencv_contrib_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(cv2, "optflow")
    frame = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(RuntimeError, match="opencv-contrib-python-headless"):
        tvl1_flow(frame, frame)


@pytest.mark.parametrize(
    ("onset", "apex", "match"),
    [
        (np.zeros((32, 32, 3), np.float32), np.zeros((32, 32, 3), np.float32), "onset must be uint8"),
        (np.zeros((32, 32), np.uint8), np.zeros((32, 32), np.uint8), r"onset must be \(H, W, 3\).*\(32, 32\)"),
        (np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32, 4), np.uint8), r"apex must be \(H, W, 3\)"),
        (np.zeros((32, 32, 3), np.uint8), np.zeros((32, 30, 3), np.uint8), "same shape"),
        (np.zeros((1, 32, 3), np.uint8), np.zeros((1, 32, 3), np.uint8), "at least 2 x 2"),
        ([[0]], np.zeros((32, 32, 3), np.uint8), "numpy array"),
    ],
)
def test_tvl1_rejects_bad_frames(onset, apex, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tvl1_flow(onset, apex)
    with pytest.raises(ValueError, match=match):
        flow_features(onset, apex)


# --- optical strain -----------------------------------------------------------------------------------------


def linear_flow(a: float, b: float, c: float, d: float, shape: tuple[int, int] = (20, 30)) -> np.ndarray:
    """u = a·x + b·y, v = c·x + d·y (+ a translation, which has no strain)."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    return np.dstack([a * xx + b * yy + 0.7, c * xx + d * yy - 1.3]).astype(np.float32)


@pytest.mark.parametrize(
    ("a", "b", "c", "d", "expected"),
    [
        (0.02, 0.0, 0.0, 0.0, 0.02),  # u = a·x: stretch along x -> |a|
        (-0.05, 0.0, 0.0, 0.0, 0.05),  # compression -> |a|
        (0.0, 0.0, 0.0, 0.03, 0.03),  # v = d·y
        (0.0, 0.0, 0.04, 0.0, 0.04 / math.sqrt(2)),  # simple shear v = c·x: εxy = c/2 -> sqrt(2·(c/2)²)
        (0.0, -0.03, 0.03, 0.0, 0.0),  # infinitesimal rotation: no strain
        (0.0, 0.0, 0.0, 0.0, 0.0),  # pure translation
        (0.01, 0.02, 0.03, -0.04, math.sqrt(0.01**2 + 0.04**2 + 0.5 * 0.05**2)),  # the general formula
    ],
)
def test_optical_strain_of_linear_fields(a: float, b: float, c: float, d: float, expected: float) -> None:
    strain = optical_strain(linear_flow(a, b, c, d))
    assert strain.shape == (20, 30) and strain.dtype == np.float32
    np.testing.assert_allclose(strain, expected, atol=1e-6)  # everywhere, border included


def test_optical_strain_is_local() -> None:
    flow = np.zeros((30, 30, 2), np.float32)
    flow[:, 15:, 0] = np.arange(15, dtype=np.float32) * 0.1  # u = 0.1·(x - 15) on the right half only
    strain = optical_strain(flow)
    np.testing.assert_allclose(strain[:, :14], 0.0)
    np.testing.assert_allclose(strain[:, 16:], 0.1, atol=1e-6)


@pytest.mark.parametrize(
    ("flow", "match"),
    [
        (np.zeros((10, 10), np.float32), r"\(H, W, 2\)"),
        (np.zeros((10, 10, 3), np.float32), r"\(H, W, 2\)"),
        (np.zeros((10, 10, 2), np.int32), "must be float"),
        (np.zeros((1, 10, 2), np.float32), "at least 2 x 2"),
        (np.full((10, 10, 2), np.nan, np.float32), "non-finite"),
    ],
)
def test_optical_strain_rejects_bad_flow(flow: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        optical_strain(flow)


# --- the 28 px features -------------------------------------------------------------------------------------


def test_flow_features_of_a_shift(face_canvas: np.ndarray) -> None:
    xx, _ = canvas_grid()
    onset, apex = render_apex(face_canvas, np.full_like(xx, SHIFT[0]), np.full_like(xx, SHIFT[1]))
    features = flow_features(onset, apex)
    assert features.shape == (3, FLOW_GRID_PX, FLOW_GRID_PX) == (3, 28, 28) and features.dtype == np.float32
    assert features.flags.c_contiguous and np.isfinite(features).all()
    scale = FLOW_GRID_PX / SIZE  # u, v in px of the 28 px grid
    inner = features[:, 1:-1, 1:-1]
    assert inner[0].mean() == pytest.approx(SHIFT[0] * scale, abs=0.05 * scale)
    assert inner[1].mean() == pytest.approx(SHIFT[1] * scale, abs=0.05 * scale)
    assert (features[2] >= 0).all() and inner[2].mean() < 0.05  # a translation has (almost) no strain
    normalised = flow_features(onset, apex, normalize="minmax")
    assert normalised.shape == (3, 28, 28)
    np.testing.assert_allclose(normalised.min(axis=(1, 2)), 0.0)
    np.testing.assert_allclose(normalised.max(axis=(1, 2)), 1.0, rtol=1e-6)


def test_flow_features_of_a_local_movement_has_strain_where_it_moves(face_canvas: np.ndarray) -> None:
    onset, apex = render_apex(face_canvas, *local_field())
    strain = flow_features(onset, apex, size_px=14)[2]  # 8 px cells
    assert strain.shape == (14, 14)
    # the bumps' flanks at crop (70 ± 12, 40) and (40 ± 10, 80) strain; the still corner (x, y > 100) does not
    assert strain[40 // 8, 56 // 8 : 88 // 8].max() > 5 * strain[13, 13]


def test_flow_features_sizes_and_non_square_crops() -> None:
    rng = np.random.default_rng(0)
    onset = cv2.GaussianBlur(rng.integers(0, 256, (96, 80, 3), dtype=np.uint8), (0, 0), 1.5)
    apex = np.roll(onset, 1, axis=1)  # content moves 1 px right
    features = flow_features(onset, apex, size_px=20)
    assert features.shape == (3, 20, 20)
    assert np.median(features[0]) == pytest.approx(20 / 80, abs=0.05)  # 1 px of 80 -> 0.25 px of 20
    assert abs(np.median(features[1])) < 0.05
    constant = flow_features(onset, onset.copy(), normalize="minmax")
    assert constant.shape == (3, 28, 28) and np.isfinite(constant).all()  # constant channels -> 0, not NaN


@pytest.mark.parametrize(("kwargs", "match"), [({"size_px": 0}, "size_px"), ({"size_px": 2.5}, "size_px"),
                                               ({"normalize": "zscore"}, "normalize")])
def test_flow_features_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    frame = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match=match):
        flow_features(frame, frame, **kwargs)
