"""Offline image datasets for ``jconv train``: scikit-learn's digits and IDX files.

Both loaders return ``(x_train, y_train, x_test, y_test)`` with images as float32
``(N, H, W, 1)`` (channels_last) scaled to ``[0, 1]`` and labels as int32 ``(N,)``.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

__all__ = ["IdxFormatError", "load_digits", "load_idx_dataset", "read_idx"]

# IDX type codes: https://yann.lecun.com/exdb/mnist/ (data are big-endian).
_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class IdxFormatError(ValueError):
    """An IDX file that is missing, truncated or not what it claims to be."""


def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(0)
            if head == b"\x1f\x8b":
                with gzip.open(f) as g:
                    return g.read()
            return f.read()
    except FileNotFoundError:
        raise IdxFormatError(f"{path}: no such file") from None
    except (OSError, EOFError) as e:  # truncated or corrupt gzip stream
        raise IdxFormatError(f"{path}: cannot decompress ({e})") from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads one IDX file (optionally gzip-compressed), validating it fully.

    The header is two zero bytes, a type code, the number of dims ``d``, then
    ``d`` big-endian uint32 sizes; the payload must hold exactly
    ``prod(sizes)`` items.

    Raises:
        IdxFormatError: wrong magic number, unknown type code, a header or payload
            shorter or longer than the header promises, or an unreadable file.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise IdxFormatError(f"{path}: {len(data)} bytes is too short for an IDX header")
    if data[0] != 0 or data[1] != 0:
        raise IdxFormatError(
            f"{path}: bad magic number 0x{data[:4].hex()} (IDX files start with two zero bytes)"
        )
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_TYPES:
        raise IdxFormatError(f"{path}: unknown IDX type code 0x{type_code:02x}")
    if ndim == 0:
        raise IdxFormatError(f"{path}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxFormatError(
            f"{path}: truncated header ({len(data)} bytes, {ndim} dims need {header})"
        )
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = _IDX_TYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header
    if actual != expected:
        kind = "truncated" if actual < expected else "has trailing bytes"
        raise IdxFormatError(
            f"{path}: {kind}: header says shape {shape} of {dtype.name} "
            f"({expected} bytes of data), file has {actual}"
        )
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(data_dir: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (data_dir / name).is_file():
            return data_dir / name
    raise IdxFormatError(f"{data_dir}: neither {stem} nor {stem}.gz found")


def _images_and_labels(data_dir: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    images_path = _find(data_dir, f"{prefix}-images-idx3-ubyte")
    labels_path = _find(data_dir, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise IdxFormatError(
            f"{images_path}: images must have 3 dims (N, H, W), got {images.shape}"
        )
    if labels.ndim != 1:
        raise IdxFormatError(f"{labels_path}: labels must have 1 dim (N,), got {labels.shape}")
    if len(images) != len(labels):
        raise IdxFormatError(
            f"{data_dir}: {len(images)} {prefix} images but {len(labels)} {prefix} labels"
        )
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise IdxFormatError(
            f"{data_dir}: expected unsigned-byte images and labels, got {images.dtype} and "
            f"{labels.dtype}"
        )
    x = (images.astype(np.float32) / 255.0)[..., None]
    return x, labels.astype(np.int32)


def load_idx_dataset(
    data_dir: str | os.PathLike,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST-format ``train-*`` and ``t10k-*`` IDX files (``.gz`` or not) in ``data_dir``.

    Works for MNIST and Fashion-MNIST (Debian's ``dataset-fashion-mnist`` installs
    them in ``/usr/share/datasets/fashion-mnist``).
    """
    data_dir = Path(data_dir)
    x_train, y_train = _images_and_labels(data_dir, "train")
    x_test, y_test = _images_and_labels(data_dir, "t10k")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise IdxFormatError(
            f"{data_dir}: train images {x_train.shape[1:]} and test images "
            f"{x_test.shape[1:]} differ in size"
        )
    return x_train, y_train, x_test, y_test


def load_digits(
    test_fraction: float = 0.2,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (1797 images, shipped in its wheel), fixed split.

    The split is a fixed permutation (NumPy seed 0): the last ``test_fraction`` of
    it is the test set (360 images by default), whatever the training seed.
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise ImportError(
            "the digits dataset needs scikit-learn: pip install 'jconv[demo]'"
        ) from None
    bunch = sk_load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[..., None]
    y = bunch.target.astype(np.int32)
    order = np.random.default_rng(0).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    train, test = order[:-n_test], order[-n_test:]
    return x[train], y[train], x[test], y[test]
