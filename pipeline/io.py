"""Crash-safe file output and small encoding helpers.

Every artifact is written to a temporary file or folder beside its destination (``.<name>.partial-*``) and renamed
into place, so a run that is killed or fails leaves either the old output or the new one at the destination, never
a half-written one; what a killed run leaves beside it is named ``.<name>.partial-*``, ``.<name>.old-*`` or
``.<name>.lock``. A folder output (:func:`atomic_dir`) is written under a lock on its destination: a second writer
of the same destination fails at once (:class:`DestinationBusyError`) instead of deleting the first one's work, and
only the leftovers of dead writers are ever removed. A disk error without a file name (``ENOSPC``: disk full) is
re-raised naming the destination.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from PIL import Image

__all__ = [
    "DestinationBusyError",
    "atomic_dir",
    "atomic_path",
    "decode_array",
    "decode_jpeg",
    "decode_png",
    "destination_lock",
    "encode_array",
    "encode_jpeg",
    "encode_png",
    "sha256_file",
    "write_json",
    "write_parquet",
]

# errnos of a failing disk or file system: an OSError with one of these and no file name gets the destination's
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS})


class DestinationBusyError(RuntimeError):
    """Another live process is writing the same output destination (it holds ``.<name>.lock``)."""


@contextlib.contextmanager
def _naming_destination(destination: Path) -> Iterator[None]:
    """Re-raise a disk error (:data:`STORAGE_ERRNOS`) that names no file as one naming ``destination``.

    The errno and the type are kept, the original is chained: ``OSError: [Errno 28] No space left on device:
    'results/x.json'`` instead of a bare ``[Errno 28] No space left on device``.
    """
    try:
        yield
    except OSError as err:
        if err.filename is not None or err.errno not in STORAGE_ERRNOS:
            raise
        raise type(err)(err.errno, err.strerror or os.strerror(err.errno), str(destination)) from err


@contextlib.contextmanager
def destination_lock(destination: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on ``destination`` (``flock`` of ``.<name>.lock`` beside it) for the block.

    The lock file holds the owner's PID while the block runs and is removed on exit; one left by a killed process
    is harmless (the kernel dropped its lock) and is removed by the next holder. Yields the lock file's path.

    Raises:
        DestinationBusyError: another process holds the lock (the message names the destination and its PID).
    """
    destination = Path(destination)
    lock_path = destination.parent / f".{destination.name}.lock"
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DestinationBusyError(f"{destination} is being written by another process (PID {holder}, lock "
                                       f"{lock_path}): wait for it to finish or stop it, then rerun") from None
        except BaseException:
            os.close(fd)
            raise
        try:  # the file we locked may have been removed by its previous holder in the meantime: then lock anew
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield lock_path
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock_path.unlink()  # still ours: unlinked before the lock is released
        os.close(fd)


@contextlib.contextmanager
def atomic_path(destination: str | Path) -> Iterator[Path]:
    """Yield a temporary path in ``destination``'s folder; rename it onto ``destination`` on success.

    The temporary file is ``.<name>.partial-*.tmp``; the parent folder is created. On an exception the temporary
    file is removed and ``destination`` is left untouched.

    Raises:
        OSError: a disk error (e.g. ``ENOSPC``) names ``destination`` if the original named no file.
    """
    destination = Path(destination)
    with _naming_destination(destination):
        destination.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{destination.name}.partial-", suffix=".tmp",
                                        dir=destination.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            tmp.chmod(0o644)  # mkstemp creates 0600; artifacts are ordinary readable files
            yield tmp
            os.replace(tmp, destination)
        finally:
            tmp.unlink(missing_ok=True)


def _recover(destination: Path) -> None:
    """Finish or undo what a killed :func:`atomic_dir` left beside ``destination``; call with its lock held.

    Under the lock no live process writes ``destination``, so what is there is a dead writer's. A
    ``.<name>.partial-*`` folder is never complete: it is removed. A ``.<name>.old-*`` folder is the previous
    output moved aside: it is put back when ``destination`` is missing (the kill came before the new folder was
    renamed in), else removed (the new folder is in place).
    """
    for stale in destination.parent.glob(f".{destination.name}.partial-*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    for old in sorted(destination.parent.glob(f".{destination.name}.old-*")):
        if not destination.exists():
            os.replace(old, destination)
        else:
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(destination: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``destination``; on success replace ``destination`` with it.

    The whole block runs under :func:`destination_lock`: a second writer of the same destination fails at once,
    so the first one's folder is never removed while it is written. The replacement never leaves a partial folder
    in place: the old ``destination`` is renamed aside (``.<name>.old-*``), the new folder renamed in, then the old
    one deleted. A run killed at any point leaves either the old folder or the new one at ``destination`` (for the
    instant between the two renames, the old one under its ``.old-*`` name, which the next :func:`atomic_dir` on
    the same destination puts back), plus at worst a stale ``.<name>.partial-*`` folder and ``.<name>.lock`` file
    that the next run removes. A failed run (an exception in the block) leaves ``destination`` as it was.

    Raises:
        DestinationBusyError: another live process is writing ``destination``.
        OSError: a disk error (e.g. ``ENOSPC``) names ``destination`` if the original named no file.
    """
    destination = Path(destination)
    with _naming_destination(destination):
        destination.parent.mkdir(parents=True, exist_ok=True)
        with destination_lock(destination):
            _recover(destination)
            tmp = Path(tempfile.mkdtemp(prefix=f".{destination.name}.partial-", dir=destination.parent))
            try:
                tmp.chmod(0o755)  # mkdtemp creates 0700
                yield tmp
                old = None
                if destination.exists():
                    old = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old-", dir=destination.parent))
                    os.replace(destination, old)  # a rename: the old output stays whole, under another name
                os.replace(tmp, destination)
                if old is not None:
                    shutil.rmtree(old)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)


def write_parquet(frame: pd.DataFrame, destination: str | Path) -> None:
    """Write ``frame`` to ``destination`` as Parquet (pyarrow), atomically, without the pandas index."""
    with atomic_path(destination) as tmp:
        frame.to_parquet(tmp, engine="pyarrow", index=False)


def write_json(payload: Any, destination: str | Path) -> None:
    """Write ``payload`` as indented, key-sorted JSON, atomically."""
    with atomic_path(destination) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def encode_png(image: np.ndarray) -> bytes:
    """Losslessly encode ``image: (H, W, 3) uint8 RGB`` as PNG bytes."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """Decode PNG bytes to ``(H, W, 3) uint8 RGB``."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def encode_array(array: np.ndarray) -> bytes:
    """``array`` as ``.npy`` bytes (dtype and shape included), e.g. a sample's optical flow in a Parquet cell."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def decode_array(data: bytes) -> np.ndarray:
    """The array of :func:`encode_array`'s bytes."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of ``image: (H, W, 3) uint8 RGB`` (libjpeg-turbo through OpenCV; 4:4:4: no chroma subsampling).

    Args:
        image: the image.
        quality: JPEG quality, 1-100.

    Raises:
        ValueError: not an ``(H, W, 3) uint8`` image, or the encoder failed.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]), [
        cv2.IMWRITE_JPEG_QUALITY, int(quality),
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
    if not ok:
        raise ValueError(f"JPEG encoding of a {image.shape} image failed")
    return data.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG (or PNG) bytes of an RGB image → ``(H, W, 3) uint8 RGB``.

    Raises:
        ValueError: the bytes are not an image.
    """
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{len(data)} bytes are not a JPEG/PNG image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
