"""MTCNN 5-point landmarks and similarity alignment (pipeline.face.align) on real video frames and known transforms.

The real-frame tests decode ../shared/datasets/videos with decord and are skipped where that folder is absent.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.face.align import (
    ARCFACE_TEMPLATE_112,
    DEFAULT_MARGIN,
    MtcnnDetector,
    align_matrix,
    apply_matrix,
    canonical_template,
    similarity_matrix,
)
from pipeline.face.video import warp_face

FACE_VIDEOS = ["single_face.mp4", "WolfgangLanger_Pexels.mp4"]
N_CONSECUTIVE = 8  # consecutive frames from the start of each video


@pytest.fixture(scope="module")
def detector() -> MtcnnDetector:
    pytest.importorskip("facenet_pytorch")
    return MtcnnDetector()


def _frames(path, indices) -> np.ndarray:
    import decord

    return decord.VideoReader(str(path), ctx=decord.cpu(0)).get_batch(list(indices)).asnumpy()


@pytest.fixture(scope="module")
def real_faces(shared_videos, detector) -> dict:
    """name -> (frames (8, H, W, 3), faces): the first 8 consecutive frames of each face video, detected once."""
    out = {}
    for name in FACE_VIDEOS:
        frames = _frames(shared_videos / name, range(N_CONSECUTIVE))
        out[name] = frames, detector.detect(frames)
    return out


# ------------------------------------------------------------------ similarity / template (no detector needed)


def test_similarity_matrix_recovers_a_known_transform_exactly():
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 300, size=(5, 2))
    angle, scale, shift = math.radians(17.0), 0.43, np.array([-31.5, 12.25])
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    expected = np.hstack([scale * rotation, shift[:, None]])
    matrix = similarity_matrix(points, apply_matrix(expected, points))
    assert matrix.shape == (2, 3) and matrix.dtype == np.float64
    np.testing.assert_allclose(matrix, expected, atol=1e-10)
    # and it is the least-squares fit: with noise, no other similarity nearby does better
    noisy = apply_matrix(expected, points) + rng.normal(0, 2.0, size=(5, 2))
    best = similarity_matrix(points, noisy)
    sse = ((apply_matrix(best, points) - noisy) ** 2).sum()
    for _ in range(200):
        d_angle, d_log_scale, d_shift = rng.normal(0, 0.01), rng.normal(0, 0.01), rng.normal(0, 0.2, size=2)
        a = math.atan2(best[1, 0], best[0, 0]) + d_angle
        s = math.hypot(best[0, 0], best[1, 0]) * math.exp(d_log_scale)
        other = np.array([[s * math.cos(a), -s * math.sin(a), 0.0], [s * math.sin(a), s * math.cos(a), 0.0]])
        other[:, 2] = best[:, 2] + d_shift
        assert ((apply_matrix(other, points) - noisy) ** 2).sum() >= sse - 1e-9


def test_similarity_matrix_rejects_bad_input():
    with pytest.raises(ValueError, match="must both be"):
        similarity_matrix(np.zeros((5, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="coincide"):
        similarity_matrix(np.ones((5, 2)), ARCFACE_TEMPLATE_112)
    with pytest.raises(ValueError, match="non-finite"):
        similarity_matrix(np.full((5, 2), np.nan), ARCFACE_TEMPLATE_112)


def test_canonical_template_is_arcface_shrunk_about_the_centre():
    np.testing.assert_allclose(canonical_template(112, 0.0), ARCFACE_TEMPLATE_112, atol=1e-12)
    template = canonical_template(112, DEFAULT_MARGIN)
    eye_to_mouth = np.linalg.norm(template[3:].mean(0) - template[:2].mean(0)) / 112
    assert eye_to_mouth == pytest.approx(0.363 / (1 + DEFAULT_MARGIN), abs=1e-3)
    # scaling the output side scales the template about the image centre
    np.testing.assert_allclose((canonical_template(224, 0.3) + 0.5) / 2 - 0.5, canonical_template(112, 0.3), atol=1e-12)
    eyes, nose, mouth = template[:2], template[2], template[3:]
    assert eyes[0, 0] < eyes[1, 0] and mouth[0, 0] < mouth[1, 0]
    assert eyes[:, 1].max() < nose[1] < mouth[:, 1].min()
    with pytest.raises(ValueError):
        canonical_template(112, -0.6)


# ------------------------------------------------------------------ detector


def test_detect_rejects_malformed_frames(detector):
    with pytest.raises(ValueError, match=r"\(120, 160, 3\)"):
        detector.detect(np.zeros((120, 160, 3), np.uint8))  # one frame without the batch axis
    with pytest.raises(ValueError, match="float32"):
        detector.detect(np.zeros((1, 120, 160, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(1, 120, 160, 4\)"):
        detector.detect(np.zeros((1, 120, 160, 4), np.uint8))
    with pytest.raises(ValueError, match=r"\(120, 160\)"):
        detector.detect_one(np.zeros((120, 160), np.uint8))
    assert detector.detect(np.zeros((0, 120, 160, 3), np.uint8)) == []
    assert detector.detect(np.zeros((2, 10, 16, 3), np.uint8)) == [None, None]  # smaller than any face searched


def test_detector_leaves_torch_rng_and_threads_alone():
    pytest.importorskip("facenet_pytorch")
    import torch

    threads = torch.get_num_threads()
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    det = MtcnnDetector(num_threads=1)
    det.detect(np.full((2, 96, 96, 3), 128, np.uint8))
    assert torch.equal(torch.rand(4), expected)
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("name", FACE_VIDEOS)
def test_real_faces_have_five_ordered_landmarks(real_faces, name):
    frames, faces = real_faces[name]
    assert all(face is not None for face in faces), f"{name}: a frontal face was missed"
    for face in faces:
        assert face.landmarks.shape == (5, 2) and face.landmarks.dtype == np.float64
        assert face.probability > 0.9
        x, y, w, h = face.box
        assert 0 < w < frames.shape[2] and 0 < h < frames.shape[1]
        inside = (face.landmarks >= [x, y]) & (face.landmarks <= [x + w, y + h])
        assert inside.all(), f"{name}: landmarks {face.landmarks} outside box {face.box}"
        eyes, nose, mouth = face.landmarks[:2], face.landmarks[2], face.landmarks[3:]
        assert eyes[:, 1].max() < nose[1] < mouth[:, 1].min(), f"{name}: eyes, nose, mouth not top to bottom"
        assert eyes[0, 0] < eyes[1, 0] and mouth[0, 0] < mouth[1, 0], f"{name}: not image-left first"


@pytest.mark.parametrize("name", FACE_VIDEOS)
def test_alignment_puts_eyes_on_the_template_and_jitters_little(real_faces, detector, name):
    frames, faces = real_faces[name]
    template = canonical_template(112)
    matrices = [align_matrix(face, 112) for face in faces]
    for face, matrix in zip(faces, matrices, strict=True):
        eye_error = np.linalg.norm(apply_matrix(matrix, face.landmarks) - template, axis=1)[:2]
        assert eye_error.max() < 2.5, f"{name}: eyes {eye_error} px from the template at 112 px"
    # landmark jitter between consecutive frames, in the aligned (112 px) frame of the earlier one
    for k in range(len(faces) - 1):
        moved = apply_matrix(matrices[k], faces[k + 1].landmarks) - apply_matrix(matrices[k], faces[k].landmarks)
        assert np.abs(moved).max() < 3.0, f"{name}: frame {k}->{k + 1} landmarks moved {moved} px"
    crops = np.stack([warp_face(frame, matrix, 112) for frame, matrix in zip(frames, matrices, strict=True)])
    consecutive = np.abs(np.diff(crops.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))
    assert np.median(consecutive) < 8.0, f"{name}: consecutive aligned crops differ by {consecutive} grey levels"
    # end to end (matrix convention + warp_face): MTCNN on the aligned crop finds the eyes where the matrix put them
    for face, matrix, again in zip(faces, matrices, detector.detect(crops), strict=True):
        assert again is not None
        error = np.linalg.norm(again.landmarks - apply_matrix(matrix, face.landmarks), axis=1)[:2]
        assert error.max() < 3.0, f"{name}: re-detected eyes {error} px from the mapped ones"


def test_shrunk_frames_map_landmarks_back(real_faces):
    import cv2

    frames, faces = real_faces["single_face.mp4"]
    big = cv2.resize(frames[0], None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)  # 1280 px: shrunk to 640 inside
    face = MtcnnDetector(max_side_px=640).detect(big[None])[0]
    expected = (faces[0].landmarks + 0.5) * 2 - 0.5
    assert np.abs(face.landmarks - expected).max() < 1.0  # px of the big frame


def test_no_face_video_has_no_face(shared_videos, detector):
    frames = _frames(shared_videos / "no_face.mp4", range(0, 98, 7))
    faces = detector.detect(frames)
    assert faces == [None] * len(frames)
