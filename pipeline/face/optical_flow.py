"""Optical flow onset → apex: TV-L1 flow, optical strain, and the (u, v, strain) input of the shallow MER models.

Most published micro-expression recognisers (STSTNet, OFF-ApexNet, HTNet, the optical-flow networks of MEB's
toolkit) do not see frames but the dense motion between a clip's onset and apex frames (DESIGN §3):

- :func:`tvl1_flow`: TV-L1 optical flow (Zach, Pock & Bischof, DAGM 2007, in the duality-based form of
  Sánchez, Meinhardt-Llopis & Facciolo, "TV-L1 Optical Flow Estimation", IPOL 2013, the implementation STSTNet's
  authors used) via OpenCV contrib's ``cv2.optflow.DualTVL1OpticalFlow`` (``opencv-contrib-python-headless`` 4.x);
- :func:`optical_strain`: the magnitude of the infinitesimal strain tensor of that flow;
- :func:`flow_features`: (u, v, strain) resized to the models' 28 x 28 grid.

Sign convention (OpenCV's, checked by ``tests/test_flow.py``): ``flow[y, x] = (u, v)`` says that the onset pixel
at ``(x, y)`` is found at ``(x + u, y + v)`` in the apex, i.e. ``onset(x, y) ≈ apex(x + u, y + v)``; u is
positive to the right, v positive *downwards* (image rows), both in pixels of the input frames.

The STSTNet preprocessing is only partly public. The paper (Liong et al., FG 2019, §II) computes TV-L1 flow from
the onset and apex crops (170 x 140 px in its Table II), optical strain from it, "concatenated to form a single 3D
image, then resize[d] to 28×28×3"; the reference repository (github.com/christy1206/STSTNet) ships only the result
(folders ``norm_u_v_os`` of 28 x 28 3-channel 8-bit images, read with ``cv2.imread`` and fed to the network as
0-255 floats) and a download link, not the code that made them: the interpolation and the normalisation ("norm")
are not public. HTNet (github.com/wangzhifengharrison/HTNet) reuses STSTNet's images (``STSNet_whole_norm_u_v_os``)
and publishes no flow code either. MEB's public tool (github.com/tvaranka/meb, ``tools/extract_optical_flow.py``)
min-max normalises each channel of each sample to [0, 1] and then anti-alias-resizes (scikit-image). Our choice
(:func:`flow_features`): flow and strain at the crop's own resolution, area-averaged down to the grid, u and v
rescaled to pixels of the output grid (so they keep their physical meaning and their size across samples);
``normalize="minmax"`` gives MEB's per-sample [0, 1] scaling instead.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> onset = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    >>> tvl1_flow(onset, onset).shape
    (64, 64, 2)
    >>> flow_features(onset, onset).shape
    (3, 28, 28)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import torch

__all__ = ["FLOW_GRID_PX", "TVL1Params", "flow_features", "optical_strain", "resize_flow", "tvl1_flow"]

FLOW_GRID_PX = 28  # STSTNet's (and OFF-ApexNet's) input side: the paper's Table I, the reference's Linear(5*5*16)


@dataclass(frozen=True)
class TVL1Params:
    """Parameters of OpenCV's Dual TV-L1 solver; the defaults are OpenCV's own (``tvl1flow.cpp``).

    The first five are also the published defaults of the IPOL implementation STSTNet used (Sánchez et al. 2013:
    tau 0.25, lambda 0.15, theta 0.3, 5 warps, epsilon 0.01), so the defaults reproduce the reference's algorithm
    as far as it is known. They differ from IPOL's in the pyramid (OpenCV: 5 scales, step 0.8; IPOL: halving down
    to about 16 px), in capping the iterations (OpenCV: 10 outer x 30 inner per warp; IPOL: up to 300), in
    OpenCV's 5 x 5 median filter of the flow after each warp, and IPOL pre-smooths the frames (Gaussian, sigma
    0.8 px; measured: no change in accuracy here, so we do not). On a 112 px face, warped with known sub-pixel fields,
    they give a mean endpoint error of about 0.03-0.04 px (``tests/test_flow.py``), and a global (0.3, -0.2) px
    shift comes out within 0.02 px. Known bias: TV-L1's regularisation shrinks small *local* motions: where a
    1 px Gaussian bump (sigma 12 px) moves > 0.5 px, the flow is about 30 % too small at the defaults
    (``theta=0.1`` brings that to about 17 % and converges faster, but is not what the reference used).

    Attributes:
        tau: time step of the primal-dual numerical scheme (stable for <= 0.25).
        lambda_: weight of the L1 data (brightness-constancy) term against the TV regulariser; larger = less smooth.
        theta: coupling between the flow and its auxiliary variable; smaller = tighter coupling.
        n_scales: pyramid levels.
        n_warps: warps of the second frame (re-linearisations of the data term) per level.
        epsilon: stopping threshold on the flow's update, in px.
        inner_iterations: iterations per outer iteration.
        outer_iterations: outer iterations per warp.
        scale_step: size ratio between consecutive pyramid levels, in (0, 1).
        median_filtering: side of the median filter applied to the flow after each warp (1 disables it).
    """

    tau: float = 0.25
    lambda_: float = 0.15
    theta: float = 0.3
    n_scales: int = 5
    n_warps: int = 5
    epsilon: float = 0.01
    inner_iterations: int = 30
    outer_iterations: int = 10
    scale_step: float = 0.8
    median_filtering: int = 5

    def create(self) -> cv2.optflow.DualTVL1OpticalFlow:
        """A fresh OpenCV solver with these parameters (one per call: the solver keeps per-image buffers).

        Raises:
            RuntimeError: OpenCV without its contrib modules (``opencv-python-headless`` instead of
                ``opencv-contrib-python-headless``), which has no ``cv2.optflow``.
        """
        if not hasattr(cv2, "optflow"):
            raise RuntimeError(
                f"cv2.optflow is missing from OpenCV {cv2.__version__}: TV-L1 needs the contrib build; replace "
                "opencv-python-headless with 'opencv-contrib-python-headless>=4.8,<5' (same cv2 package, Haar "
                "cascades included)"
            )
        return cv2.optflow.DualTVL1OpticalFlow_create(
            tau=self.tau, lambda_=self.lambda_, theta=self.theta, nscales=self.n_scales, warps=self.n_warps,
            epsilon=self.epsilon, innnerIterations=self.inner_iterations, outerIterations=self.outer_iterations,
            scaleStep=self.scale_step, gamma=0.0, medianFiltering=self.median_filtering, useInitialFlow=False,
        )


def _check_frames(onset: np.ndarray, apex: np.ndarray) -> None:
    for name, frame in (("onset", onset), ("apex", apex)):
        if not isinstance(frame, np.ndarray):
            raise ValueError(f"{name} must be a numpy array (H, W, 3) uint8 RGB, got {type(frame).__name__}")
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"{name} must be (H, W, 3) uint8 RGB, got shape {frame.shape}")
        if frame.dtype != np.uint8:
            raise ValueError(f"{name} must be uint8 RGB (0-255), got dtype {frame.dtype}")
        if min(frame.shape[:2]) < 2:
            raise ValueError(f"{name} must be at least 2 x 2 px, got shape {frame.shape}")
    if onset.shape != apex.shape:
        raise ValueError(f"onset and apex must have the same shape, got {onset.shape} and {apex.shape}")


def _grey(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) float32 luma in [0, 1] (BT.601 weights, as ``COLOR_RGB2GRAY``).

    Kept in float so that sub-grey-level differences survive (OpenCV's TV-L1 scales float input by 255).
    """
    return cv2.cvtColor(np.ascontiguousarray(frame, dtype=np.float32) / 255.0, cv2.COLOR_RGB2GRAY)


def tvl1_flow(onset: np.ndarray, apex: np.ndarray, params: TVL1Params | None = None) -> np.ndarray:
    """Dense TV-L1 optical flow from ``onset`` to ``apex``, on their grey levels.

    Args:
        onset: (H, W, 3) uint8 RGB, the clip's onset frame (e.g. an aligned face crop).
        apex: (H, W, 3) uint8 RGB, the apex frame, aligned with the same transform as ``onset`` (DESIGN §3).
        params: solver parameters; ``None`` gives :class:`TVL1Params`'s defaults (OpenCV's).

    Returns:
        (H, W, 2) float32 ``(u, v)`` in pixels of the input: ``onset(x, y) ≈ apex(x + u, y + v)``; u points right,
        v down.

    Raises:
        ValueError: a frame that is not a (H, W, 3) uint8 array of at least 2 x 2 px, or frames of different shapes.
        RuntimeError: OpenCV without ``cv2.optflow`` (see :meth:`TVL1Params.create`).
    """
    _check_frames(onset, apex)
    solver = (params or TVL1Params()).create()
    flow = solver.calc(_grey(onset), _grey(apex), None)  # (H, W, 2) float32
    return np.ascontiguousarray(flow, dtype=np.float32)


def optical_strain(flow: np.ndarray) -> np.ndarray:
    """Per-pixel magnitude of the infinitesimal strain tensor of a displacement field.

    With ε = ½(∇u + ∇uᵀ) for the displacement u = (u, v): εxx = ∂u/∂x, εyy = ∂v/∂y,
    εxy = εyx = ½(∂u/∂y + ∂v/∂x), and the magnitude is its Frobenius norm

        |ε| = sqrt(εxx² + εyy² + 2·εxy²) = sqrt((∂u/∂x)² + (∂v/∂y)² + ½(∂u/∂y + ∂v/∂x)²),

    the optical strain of Liong et al., "Shallow triple stream three-dimensional CNN (STSTNet) for
    micro-expression recognition", FG 2019, eqs. 5-7 (eq. 7 as printed has a typo, ∂u/∂x twice in the shear
    term; eq. 6 defines εxy as used here), also HTNet's third input channel. The STSTNet paper and code do not
    say how the derivatives are taken; we use central differences (one-sided at the border: ``np.gradient``),
    exact for linear fields. Note that MEB's public tool computes a different quantity (Sobel derivatives,
    ``sqrt(ux² + vy² + ½(uy² + vx²))`` with its x and y axes swapped), which is not the strain magnitude.

    Properties: rigid translations and infinitesimal rotations (u = -ω·y, v = ω·x) have zero strain; u = a·x
    gives |a|; v = b·x (simple shear) gives |b|/√2.

    Args:
        flow: (H, W, 2) float ``(u, v)`` in px, H, W >= 2, finite (e.g. :func:`tvl1_flow`'s output).

    Returns:
        (H, W) float32, dimensionless (px of displacement per px of position), >= 0.

    Raises:
        ValueError: ``flow`` is not a finite float array of shape (H, W, 2) with H, W >= 2.
    """
    if not isinstance(flow, np.ndarray) or flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow must be a (H, W, 2) float array, got {getattr(flow, 'shape', type(flow).__name__)}")
    if not np.issubdtype(flow.dtype, np.floating):
        raise ValueError(f"flow must be float, got dtype {flow.dtype}")
    if min(flow.shape[:2]) < 2:
        raise ValueError(f"flow must be at least 2 x 2 px to take derivatives, got shape {flow.shape}")
    if not np.isfinite(flow).all():
        raise ValueError("flow has non-finite values")
    u, v = flow[..., 0].astype(np.float64), flow[..., 1].astype(np.float64)
    du_dy, du_dx = np.gradient(u)  # axis 0 = rows = y, axis 1 = columns = x
    dv_dy, dv_dx = np.gradient(v)
    e_xy = 0.5 * (du_dy + dv_dx)
    return np.sqrt(du_dx**2 + dv_dy**2 + 2.0 * e_xy**2).astype(np.float32)


def flow_features(
    onset: np.ndarray,
    apex: np.ndarray,
    size_px: int = FLOW_GRID_PX,
    normalize: Literal["none", "minmax"] = "none",
    params: TVL1Params | None = None,
) -> np.ndarray:
    """STSTNet's input: (u, v, optical strain) of the onset → apex flow on a ``size_px`` square grid.

    Flow (:func:`tvl1_flow`) and strain (:func:`optical_strain`) are computed at the frames' own resolution (as in
    the STSTNet paper, resized only afterwards), then each channel is area-averaged to ``size_px`` x ``size_px``
    (``cv2.INTER_AREA``: a box filter, no aliasing when shrinking; bilinear-like if the grid is larger than the
    frame). u is multiplied by ``size_px / W`` and v by ``size_px / H`` so that they stay displacements in pixels of
    the output grid; strain is a ratio of lengths and is not rescaled. The reference's own resizing and
    normalisation are not public (see the module docstring).

    Args:
        onset: (H, W, 3) uint8 RGB onset frame (an aligned face crop; need not be square).
        apex: (H, W, 3) uint8 RGB apex frame, aligned like ``onset``.
        size_px: side of the output grid (28 for STSTNet), >= 1.
        normalize: ``"none"`` (default): channels in the units above. ``"minmax"``: each channel of this sample
            mapped affinely to [0, 1] (min -> 0, max -> 1; a constant channel -> 0), as MEB's tool does (MEB
            normalises before resizing; we do it after, so the output spans exactly [0, 1]). Min-max discards the
            motion's amplitude and sign, so that a still clip's noise looks as strong as a real movement.
        params: TV-L1 parameters (``None``: :class:`TVL1Params`'s defaults).

    Returns:
        (3, size_px, size_px) float32: channel 0 = u (px of the grid, + right), 1 = v (px of the grid, + down),
        2 = strain (dimensionless, >= 0); with ``"minmax"`` all in [0, 1].

    Raises:
        ValueError: bad frames (see :func:`tvl1_flow`), ``size_px`` < 1, or an unknown ``normalize``.
        RuntimeError: OpenCV without ``cv2.optflow`` (see :meth:`TVL1Params.create`).
    """
    if isinstance(size_px, bool) or not isinstance(size_px, int | np.integer) or size_px < 1:
        raise ValueError(f"size_px must be an int >= 1, got {size_px!r}")
    if normalize not in ("none", "minmax"):
        raise ValueError(f"normalize must be 'none' or 'minmax', got {normalize!r}")
    flow = tvl1_flow(onset, apex, params)  # (H, W, 2) px of the input; validates the frames
    height, width = flow.shape[:2]
    stack = np.dstack([flow, optical_strain(flow)])  # (H, W, 3) float32
    size = int(size_px)
    grid = cv2.resize(stack, (size, size), interpolation=cv2.INTER_AREA).reshape(size, size, 3)
    grid = grid.transpose(2, 0, 1).astype(np.float32)  # (3, size, size)
    grid[0] *= size / width
    grid[1] *= size / height
    if normalize == "minmax":
        low = grid.min(axis=(1, 2), keepdims=True)
        span = grid.max(axis=(1, 2), keepdims=True) - low
        grid = np.where(span > 0, (grid - low) / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)
    return np.ascontiguousarray(grid)


def resize_flow(flow: torch.Tensor, size_px: int) -> torch.Tensor:
    """Bring ``(N, 3, H, W)`` (u, v, strain) flow to a ``size_px`` square grid, as :func:`flow_features` does.

    Each channel is area-averaged (torch's ``area`` mode: a box filter when shrinking); u is scaled by
    ``size_px / W`` and v by ``size_px / H`` so that they stay displacements in px of the new grid; the strain
    (a ratio of lengths) is not rescaled.

    Returns:
        ``(N, 3, size_px, size_px)`` float32; ``flow`` itself when it already has that size.
    """
    height, width = flow.shape[-2:]
    if (height, width) == (size_px, size_px):
        return flow
    resized = torch.nn.functional.interpolate(flow.float(), size=(size_px, size_px), mode="area")
    scale = torch.tensor([size_px / width, size_px / height, 1.0], dtype=resized.dtype).view(1, 3, 1, 1)
    return resized * scale
