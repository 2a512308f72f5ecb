"""The IDX reader and the dataset loaders, on files the tests write themselves."""

import gzip
import struct

import numpy as np
import pytest

from jconv import data


def write_idx(path, array, type_code=0x08, compress=False, corrupt=None):
    array = np.asarray(array)
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if corrupt is not None:
        payload = corrupt(payload)
    if compress:
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def write_dataset(folder, n_train=12, n_test=5, size=6, compress=False):
    rng = np.random.default_rng(0)
    folder.mkdir(exist_ok=True)
    ext = ".gz" if compress else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(
            folder / f"{prefix}-images-idx3-ubyte{ext}",
            rng.integers(0, 256, (n, size, size), dtype=np.uint8),
            compress=compress,
        )
        write_idx(
            folder / f"{prefix}-labels-idx1-ubyte{ext}",
            rng.integers(0, 10, (n,), dtype=np.uint8),
            compress=compress,
        )
    return folder


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip(tmp_path, compress):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "x.idx", images, compress=compress)
    np.testing.assert_array_equal(data.read_idx(path), images)
    floats = np.linspace(-1, 1, 6).reshape(2, 3)
    path = write_idx(tmp_path / "f.idx", floats.astype(np.float64), type_code=0x0E)
    np.testing.assert_array_equal(data.read_idx(path), floats)


@pytest.mark.parametrize("compress", [False, True])
def test_load_idx_dataset(tmp_path, compress):
    x_tr, y_tr, x_te, y_te = data.load_idx_dataset(write_dataset(tmp_path / "d", compress=compress))
    assert x_tr.shape == (12, 6, 6, 1) and x_te.shape == (5, 6, 6, 1)
    assert x_tr.dtype == np.float32 and 0 <= x_tr.min() and x_tr.max() <= 1
    assert y_tr.dtype == np.int32 and y_te.shape == (5,)


BROKEN = {
    "truncated payload": (
        lambda p: p[:-3],
        r"truncated: header says shape \(3, 4, 5\) of uint8 \(60 bytes of data\), file has 57",
    ),
    "trailing bytes": (lambda p: p + b"xx", r"has trailing bytes"),
    "bad magic": (lambda p: b"\x01\x02" + p[2:], r"bad magic number 0x0102"),
    "unknown type": (lambda p: p[:2] + b"\x07" + p[3:], r"unknown IDX type code 0x07"),
    "truncated header": (lambda p: p[:9], r"truncated header \(9 bytes, 3 dims need 16\)"),
    "empty": (lambda p: b"", r"0 bytes is too short"),
}


@pytest.mark.parametrize("name", BROKEN, ids=list(BROKEN))
def test_broken_files_get_clear_errors(tmp_path, name):
    corrupt, pattern = BROKEN[name]
    path = write_idx(tmp_path / "bad", np.zeros((3, 4, 5), np.uint8), corrupt=corrupt)
    with pytest.raises(data.IdxFormatError, match=pattern):
        data.read_idx(path)


def test_truncated_gzip_stream(tmp_path):
    path = write_idx(tmp_path / "x.gz", np.zeros((30, 30), np.uint8), compress=True)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(data.IdxFormatError, match="cannot decompress"):
        data.read_idx(path)


def test_dataset_consistency_errors(tmp_path):
    folder = write_dataset(tmp_path / "d")
    write_idx(folder / "t10k-labels-idx1-ubyte", np.zeros(4, np.uint8))  # 5 images, 4 labels
    with pytest.raises(data.IdxFormatError, match="5 t10k images but 4 t10k labels"):
        data.load_idx_dataset(folder)
    (folder / "train-images-idx3-ubyte").unlink()
    with pytest.raises(data.IdxFormatError, match="neither train-images-idx3-ubyte nor .*gz found"):
        data.load_idx_dataset(folder)
    write_idx(folder / "train-images-idx3-ubyte", np.zeros((12, 36), np.uint8))
    with pytest.raises(
        data.IdxFormatError, match=r"images must have 3 dims \(N, H, W\), got \(12, 36\)"
    ):
        data.load_idx_dataset(folder)


def test_digits_split_is_fixed():
    a = data.load_digits()
    b = data.load_digits()
    assert a[0].shape == (1438, 8, 8, 1) and a[2].shape == (359, 8, 8, 1)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
