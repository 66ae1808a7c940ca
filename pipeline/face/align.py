"""Five-point facial landmarks (MTCNN) and the similarity alignment of a face to a canonical template.

The field's standard (DESIGN §3): detect 2 eyes, the nose tip and the 2 mouth corners with MTCNN
(``facenet-pytorch`` 2.5.3, whose P/R/O-net weights ship inside the wheel: nothing is downloaded), then warp the
frame with the least-squares similarity (rotation + isotropic scale + translation) that maps those 5 points onto
fixed template positions. A micro clip is aligned ONCE, with the landmarks of its onset frame, and that one matrix
is applied to every frame of the clip (as MEB does): landmark jitter between frames is larger than a
micro-expression's 0.5–2 px motion.

Conventions. Frames are ``(H, W, 3) uint8 RGB``; points are ``(x, y)`` in pixels of the input frame, pixel
centres at integers (OpenCV ``warpAffine`` convention); boxes are ``(x, y, w, h)`` px as in :mod:`pipeline.face.video`.
Landmark order is MTCNN's: eye, eye, nose tip, mouth corner, mouth corner, each pair IMAGE-left first, i.e. the
subject's right eye and right mouth corner come first (:data:`LANDMARK_NAMES`). The matrices plug into
:func:`pipeline.face.video.warp_face`.

``facenet_pytorch`` (and through it torchvision) is imported only when an :class:`MtcnnDetector` is built, so
importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.config import ConfigError, MicroParams
from pipeline.face.video import Geometry, HaarFaceDetector, crop_matrix, warp_face

__all__ = [
    "ARCFACE_TEMPLATE_112",
    "DEFAULT_MARGIN",
    "DETECTORS",
    "LANDMARK_NAMES",
    "Face",
    "MtcnnDetector",
    "align_clip",
    "align_matrix",
    "apply_matrix",
    "canonical_template",
    "clip_matrix",
    "face_pose",
    "make_detector",
    "pose_box",
    "pose_geometry",
    "pose_matrix",
    "similarity_matrix",
]

LANDMARK_NAMES = ("eye_left", "eye_right", "nose_tip", "mouth_left", "mouth_right")
"""Row names of a ``(5, 2)`` landmark array; ``left``/``right`` are the IMAGE's (the subject's right is image left)."""

ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],  # eye, image left
        [73.5318, 51.5014],  # eye, image right
        [56.0252, 71.7366],  # nose tip
        [41.5493, 92.3655],  # mouth corner, image left
        [70.7299, 92.2041],  # mouth corner, image right
    ]
)
"""The standard ArcFace / InsightFace 5-point template of a 112 × 112 face crop (px)."""

DEFAULT_MARGIN = 0.25
"""Default field-of-view enlargement of :func:`canonical_template` (see there for why 0.25)."""


@dataclass(frozen=True, eq=False)
class Face:
    """One detected face.

    Attributes:
        box: ``(x, y, w, h)`` px of the input frame (MTCNN's regressed box: forehead to chin, taller than wide;
            not the Haar box that ``crop_matrix``'s ``box_scale`` was tuned on).
        probability: O-net face probability in [0, 1].
        landmarks: ``(5, 2)`` float64 ``(x, y)`` px in :data:`LANDMARK_NAMES` order.
    """

    box: tuple[float, float, float, float]
    probability: float
    landmarks: np.ndarray


class MtcnnDetector:
    """Batched MTCNN (``facenet_pytorch.MTCNN``): the largest face of each frame, with its 5 landmarks.

    Defaults, and why:

    - ``min_face_frac=0.1`` (with a floor of ``min_face_px=20``, MTCNN's own default): the smallest face searched,
      as a fraction of the (shrunk) frame's shorter side, as :class:`pipeline.face.video.HaarFaceDetector` does. In
      MER footage the face fills a large part of the frame, and P-net's image pyramid starts at
      ``12 / min_face`` of the frame, so a larger floor is also faster.
    - ``thresholds=(0.6, 0.7, 0.9)``: P- and R-net as in the MTCNN paper and facenet-pytorch; O-net raised from
      0.7 to 0.9 because we keep the *largest* face, so a large false positive would win over the real face.
      On the project's real test videos visible faces score >= 0.97; 2 frames with a hand over nose and mouth
      score 0.83 and 0.79 (rejected: their landmarks are unreliable anyway); the best candidate on
      ``no_face.mp4`` scores <= 0.66.
    - ``factor=0.709``: the standard pyramid step (√0.5, area halves per level).
    - ``max_side_px=640``: frames whose longer side exceeds this are shrunk (``INTER_AREA``) before detection,
      for speed; landmarks and boxes are mapped back to the input frame's pixels. O-net regresses landmarks on
      a 48 px resample of the face box, so shrinking a face that stays well above 48 px costs little precision
      (a frame upscaled 2x to 1280 px, then shrunk back inside, gave landmarks within 0.1 px of the original's).
    - ``batch_size=16``: frames per forward pass (bounds memory on long clips / large frames); batching 16 frames
      took 0.5–0.8x the time per frame of one call per frame (measured, ``benchmarks/detector_cost.py``).
    - ``num_threads=1``: torch's intra-op threads during detection (restored afterwards). MTCNN runs hundreds of
      tiny ops per frame (one resample per candidate box), for which thread hand-offs cost more than they save: on
      the project's 2-core CPU under load, 1 thread was 2–13x faster than 2 (``benchmarks/detector_cost.py``).
      ``torch.set_num_threads`` is process-wide, so another Python thread running torch at the same time would
      see the change; None leaves torch's setting alone.

    Construction draws no number from torch's global RNG (the nets' random initialisation, overwritten by the
    shipped weights, runs under :func:`torch.random.fork_rng`), and detection draws none either, so building
    or running a detector does not perturb seeded training. Inference runs under ``torch.no_grad``.

    Args:
        device: torch device for the three nets (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...).
        min_face_frac: smallest face side searched, fraction of the shrunk frame's shorter side.
        min_face_px: floor of the smallest face side searched, px of the shrunk frame.
        thresholds: P-, R- and O-net face-probability thresholds.
        factor: scale step of P-net's image pyramid.
        max_side_px: longer side frames are shrunk to before detection (None: never shrink).
        batch_size: frames per forward pass.
        num_threads: torch intra-op threads while detecting (None: leave torch's setting).
    """

    def __init__(self, device: str = "cpu", min_face_frac: float = 0.1, min_face_px: int = 20,
                 thresholds: Sequence[float] = (0.6, 0.7, 0.9), factor: float = 0.709,
                 max_side_px: int | None = 640, batch_size: int = 16, num_threads: int | None = 1):
        import torch
        from facenet_pytorch import MTCNN  # lazy: pulls in torchvision (seconds)

        if len(thresholds) != 3 or not all(0.0 <= t <= 1.0 for t in thresholds):
            raise ValueError(f"thresholds must be 3 probabilities (P-, R-, O-net), got {thresholds}")
        if not 0.0 < factor < 1.0:
            raise ValueError(f"factor must lie in (0, 1), got {factor}")
        if batch_size < 1 or min_face_px < 12 or (max_side_px is not None and max_side_px < 48):
            raise ValueError(f"need batch_size >= 1, min_face_px >= 12, max_side_px >= 48 or None; got "
                             f"{batch_size}, {min_face_px}, {max_side_px}")
        self.device = torch.device(device)
        self.min_face_frac, self.min_face_px = float(min_face_frac), int(min_face_px)
        self.thresholds, self.factor = tuple(float(t) for t in thresholds), float(factor)
        self.max_side_px, self.batch_size = max_side_px, int(batch_size)
        self.num_threads = None if num_threads is None else max(1, int(num_threads))
        with torch.random.fork_rng(devices=[]):  # nn.Conv2d/Linear init draws from the global CPU RNG
            self._mtcnn = MTCNN(min_face_size=self.min_face_px, thresholds=list(self.thresholds),
                                factor=self.factor, select_largest=True, keep_all=True, device=self.device)
        self._mtcnn.eval()

    def detect(self, frames: np.ndarray) -> list[Face | None]:
        """Largest face of every frame.

        Args:
            frames: ``(N, H, W, 3) uint8 RGB`` (N may be 0).

        Returns:
            N entries: a :class:`Face` in the input frame's pixels, or None where no face was found (callers
            record a ``no_face`` reason); frames smaller than ``min_face_px`` get None.

        Raises:
            ValueError: ``frames`` is not an ``(N, H, W, 3) uint8`` array with H, W >= 1 (the message names its
                shape and dtype).
        """
        well_formed = (
            isinstance(frames, np.ndarray) and frames.ndim == 4 and frames.shape[-1] == 3
            and frames.dtype == np.uint8 and frames.shape[1] >= 1 and frames.shape[2] >= 1
        )
        if not well_formed:
            shape = getattr(frames, "shape", None)
            dtype = getattr(frames, "dtype", type(frames).__name__)
            raise ValueError(f"frames must be an (N, H, W, 3) uint8 RGB array, got shape {shape} dtype {dtype}")
        import torch

        faces: list[Face | None] = []
        threads = torch.get_num_threads()
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        try:
            for start in range(0, len(frames), self.batch_size):
                faces.extend(self._detect_batch(frames[start : start + self.batch_size]))
        finally:
            torch.set_num_threads(threads)
        return faces

    def detect_one(self, frame: np.ndarray) -> Face | None:
        """:meth:`detect` for one ``(H, W, 3) uint8 RGB`` frame.

        Raises:
            ValueError: ``frame`` is not ``(H, W, 3) uint8`` (the message names its shape).
        """
        if not isinstance(frame, np.ndarray) or frame.ndim != 3:
            raise ValueError(f"frame must be an (H, W, 3) uint8 RGB array, got shape {getattr(frame, 'shape', None)}")
        return self.detect(frame[None])[0]

    def _detect_batch(self, frames: np.ndarray) -> list[Face | None]:
        height, width = frames.shape[1:3]
        shrink = 1.0 if self.max_side_px is None else min(1.0, self.max_side_px / max(height, width))
        if shrink < 1.0:
            size = (max(1, round(width * shrink)), max(1, round(height * shrink)))
            frames = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])
        # per-axis factors actually applied (rounding of the shrunk size)
        sx, sy = frames.shape[2] / width, frames.shape[1] / height
        small_side = min(frames.shape[1:3])
        min_face = max(self.min_face_px, int(self.min_face_frac * small_side))
        if small_side < min_face:  # no face this large fits (and MTCNN's empty image pyramid would raise)
            return [None] * len(frames)
        self._mtcnn.min_face_size = min_face
        boxes, probs, points = self._mtcnn.detect(np.ascontiguousarray(frames), landmarks=True)
        out: list[Face | None] = []
        for k in range(len(frames)):
            if boxes[k] is None:
                out.append(None)
                continue
            box_k = np.asarray(boxes[k], np.float64).reshape(-1, 4)  # (x1, y1, x2, y2)
            prob_k = np.asarray(probs[k], np.float64).reshape(-1)
            pts_k = np.asarray(points[k], np.float64).reshape(-1, 5, 2)
            best = int(np.argmax((box_k[:, 2] - box_k[:, 0]) * (box_k[:, 3] - box_k[:, 1])))
            x1, y1, x2, y2 = box_k[best]
            # points: pixel centres, shrunk image -> input image (INTER_AREA maps centre c to (c + .5) / s - .5)
            landmarks = (pts_k[best] + 0.5) / np.array([sx, sy]) - 0.5
            box = (float(x1 / sx), float(y1 / sy), float((x2 - x1) / sx), float((y2 - y1) / sy))
            out.append(Face(box=box, probability=float(prob_k[best]), landmarks=landmarks))
        return out


def canonical_template(image_size_px: int, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """The 5 target points of a canonical face in an ``image_size_px`` square output.

    The ArcFace 112 px template (:data:`ARCFACE_TEMPLATE_112`) crops for face *recognition*: tight, with the brows
    at the top edge and the chin cut off (seen on the project's real test videos). Micro-expressions need the
    brows (AU1/2/4), the whole mouth and the chin (AU17), so the template is shrunk towards the image centre by
    ``1 / (1 + margin)``: the crop covers ``1 + margin`` times ArcFace's field of view (side). The eye-to-mouth
    distance is 0.363 of the side in ArcFace, ``0.363 / (1 + margin)`` here. The default 0.25 (eye-to-mouth 0.29
    of the side; eye line at 0.47 and mouth corners at 0.76 of the height) is the smallest that keeps forehead to
    chin, laughing mouths included, inside the crop on the real test videos (0.2 touches the chin), so as many
    pixels as possible go to the face.

    Args:
        image_size_px: output side.
        margin: field-of-view enlargement over ArcFace (0 = the ArcFace template itself, scaled); > -0.5.

    Returns:
        ``(5, 2)`` float64 ``(x, y)`` px of the output, :data:`LANDMARK_NAMES` order.

    Raises:
        ValueError: non-positive ``image_size_px`` or ``margin <= -0.5``.
    """
    if image_size_px < 1 or not margin > -0.5:
        raise ValueError(f"need image_size_px >= 1 and margin > -0.5, got {image_size_px}, {margin}")
    centre_112 = (112 - 1) / 2.0  # pixel-centre convention: the middle of a 112 px image
    zoom = image_size_px / 112.0 / (1.0 + margin)
    return (image_size_px - 1) / 2.0 + (ARCFACE_TEMPLATE_112 - centre_112) * zoom


def similarity_matrix(landmarks: np.ndarray, template: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation + isotropic scale + translation) mapping ``landmarks`` onto ``template``.

    Umeyama's closed form (1991), written out in numpy: it minimises the sum of squared distances over ALL
    points, is deterministic and exact on noiseless points. ``cv2.estimateAffinePartial2D`` is not used because
    it is a robust estimator (RANSAC / LMedS pick a 2-point model and refine on the inliers they select), which is
    not the least-squares fit over the 5 points; scikit-image's ``SimilarityTransform`` is Umeyama too but not a
    dependency. A reflection is never returned (the best proper rotation is).

    Args:
        landmarks: ``(K, 2)`` source points px, K >= 2, not all equal.
        template: ``(K, 2)`` target points px.

    Returns:
        ``(2, 3)`` float64 matrix ``M``: ``template ≈ M[:, :2] @ p + M[:, 2]``, for
        :func:`pipeline.face.video.warp_face`.

    Raises:
        ValueError: shapes differ or are not ``(K, 2)`` with K >= 2, non-finite values, or coincident landmarks.
    """
    src, dst = np.asarray(landmarks, np.float64), np.asarray(template, np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"landmarks {src.shape} and template {dst.shape} must both be (K, 2) with K >= 2")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("landmarks or template contain non-finite values")
    mu_src, mu_dst = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - mu_src, dst - mu_dst
    var_src = float((src_c**2).sum() / len(src))
    if var_src < 1e-12:
        raise ValueError("landmarks coincide: no similarity transform is defined")
    u, s, vt = np.linalg.svd(dst_c.T @ src_c / len(src))
    d = np.array([1.0, 1.0 if np.linalg.det(u) * np.linalg.det(vt) >= 0 else -1.0])
    rotation = u @ np.diag(d) @ vt
    scale = float((s * d).sum() / var_src)
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = mu_dst - scale * rotation @ mu_src
    return matrix


def align_matrix(face: Face, image_size_px: int, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """``(2, 3)`` similarity mapping ``face``'s landmarks onto :func:`canonical_template` (for ``warp_face``)."""
    return similarity_matrix(face.landmarks, canonical_template(image_size_px, margin))


def face_pose(face: Face, image_size_px: int, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """The row of a macro video's MTCNN track: ``(4,) float64 (a, b, tx, ty)``, the inverse of :func:`align_matrix`.

    It maps output px ``(u, v)`` to frame px ``x = a u - b v + tx``, ``y = b u + a v + ty``. A similarity is
    linear in these four numbers, so :class:`pipeline.face.video.BoxTracker` interpolates and averages them like box
    coordinates and the result is still a similarity; in this direction ``(tx, ty)`` is where the output's
    corner lies in the frame, which moves with the head (the forward matrix's translation mixes in the rotation).
    """
    inverse = cv2.invertAffineTransform(align_matrix(face, image_size_px, margin))
    return np.array([inverse[0, 0], inverse[1, 0], inverse[0, 2], inverse[1, 2]])


def pose_matrix(pose: np.ndarray) -> np.ndarray:
    """``(2, 3)`` float64 frame → output similarity of a :func:`face_pose` row (for ``warp_face``)."""
    a, b, tx, ty = (float(v) for v in pose)
    return cv2.invertAffineTransform(np.array([[a, -b, tx], [b, a, ty]]))


def pose_geometry(image_size_px: int) -> Geometry:
    """The :data:`pipeline.face.video.Geometry` of :func:`face_pose` rows, for ``confirm_detections``.

    Centre: the frame px under the output's centre; side: the frame px that the output's side spans.
    """
    centre = (image_size_px - 1) / 2.0

    def geometry(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, b, tx, ty = np.asarray(rows, np.float64).T
        centres = np.stack([(a - b) * centre + tx, (b + a) * centre + ty], axis=1)
        return centres, np.hypot(a, b) * image_size_px

    return geometry


def pose_box(poses: np.ndarray, image_size_px: int) -> np.ndarray:
    """``(n, 4)`` float64 ``(x, y, w, h)`` px: the frame square each :func:`face_pose` row's crop covers.

    Its rotation aside (for the frame index); NaN rows stay NaN.
    """
    centres, sides = pose_geometry(image_size_px)(np.asarray(poses, np.float64).reshape(-1, 4))
    return np.column_stack([centres - sides[:, None] / 2, sides, sides])


def apply_matrix(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map ``(K, 2)`` points px through a ``(2, 3)`` affine ``matrix``; returns ``(K, 2)`` float64."""
    points = np.asarray(points, np.float64)
    return points @ np.asarray(matrix, np.float64)[:, :2].T + np.asarray(matrix, np.float64)[:, 2]


def _haar() -> HaarFaceDetector:
    return HaarFaceDetector()


DETECTORS: dict[str, Callable[[], object] | None] = {  # micro.detector / macro.detector -> detector factory
    "none": None,  # the frames are faces already (e.g. CASME II Cropped): the centred square
    "haar": _haar,  # OpenCV's frontal-face cascade: a box, no rotation (fast fallback)
    "mtcnn": MtcnnDetector,  # five landmarks, similarity alignment to canonical_template
}


def make_detector(name: str, key: str = "micro.detector") -> object | None:
    """A fresh detector of ``name`` (None for ``'none'``).

    Raises:
        ConfigError: ``name`` is not a key of :data:`DETECTORS` (the message names ``key`` and the known names).
    """
    if name not in DETECTORS:
        raise ConfigError(f"{key}: {name!r} is not a face detector; known: {', '.join(DETECTORS)}")
    factory = DETECTORS[name]
    return None if factory is None else factory()


def clip_matrix(frame: np.ndarray, detector: object | None, image_size_px: int, box_scale: float,
                margin: float) -> np.ndarray:
    """The one crop / alignment transform of a micro clip, from its onset ``frame`` ``(H, W, 3) uint8 RGB``.

    Args:
        frame: the onset frame.
        detector: from :func:`make_detector`: None (the centred square of the frame, for pre-cropped faces),
            a :class:`~pipeline.face.video.HaarFaceDetector` (a square of ``box_scale`` times the box, no rotation) or
            an :class:`MtcnnDetector` (the similarity onto :func:`canonical_template` with ``margin``).
        image_size_px: side of the aligned crop.
        box_scale: Haar only.
        margin: MTCNN only.

    Returns:
        ``(2, 3)`` float64 for :func:`pipeline.face.video.warp_face`.

    Raises:
        ValueError: no face found (the caller records the reason).
    """
    height, width = frame.shape[:2]
    if detector is None:
        side = float(min(height, width))
        return crop_matrix(((width - side) / 2, (height - side) / 2, side, side), 1.0, image_size_px)
    if isinstance(detector, MtcnnDetector):
        face = detector.detect_one(frame)
        if face is None:
            raise ValueError("no face found on the onset frame (mtcnn)")
        return align_matrix(face, image_size_px, margin)
    box = detector.detect(frame)
    if box is None:
        raise ValueError("no face found on the onset frame (haar)")
    return crop_matrix(box, box_scale, image_size_px)


def align_clip(onset: np.ndarray, apex: np.ndarray, params: MicroParams,
               detector: object | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop onset and apex with one transform computed on the onset frame (:func:`pipeline.face.align.clip_matrix`).

    Args:
        onset: ``(H, W, 3) uint8 RGB`` onset frame of the clip.
        apex: ``(H, W, 3) uint8 RGB`` apex frame of the same clip (same size as ``onset``).
        params: the ``micro`` section (``image_size_px``, ``box_scale``, ``align_margin``).
        detector: from :func:`pipeline.face.align.make_detector` (None for pre-cropped faces).

    Returns:
        ``(onset_crop, apex_crop, matrix)``: the crops ``(image_size_px, image_size_px, 3) uint8 RGB`` and the
        ``(2, 3)`` float64 transform from frame px to crop px.

    Raises:
        ValueError: frames of different sizes, or no face found on the onset frame.
    """
    if onset.shape != apex.shape:
        raise ValueError(f"onset {onset.shape} and apex {apex.shape} frames differ in size")
    matrix = clip_matrix(onset, detector, params.image_size_px, params.box_scale, params.align_margin)
    return warp_face(onset, matrix, params.image_size_px), warp_face(apex, matrix, params.image_size_px), matrix
