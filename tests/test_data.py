"""Data: idx parsing, the real Fashion-MNIST splits, clear errors for bad files, image folders,
and per-process batching that is a pure function of (seed, step)."""

import gzip
import os
import struct

import numpy as np
import pytest
from _ci import needs_fmnist  # noqa: E402  (skips locally, fails under CI=true)

from ganinv_jax import data as data_lib
from ganinv_jax.data import fashion_mnist as fm
from ganinv_jax.data import images as image_io


def _write_idx(path, arr):
    arr = np.asarray(arr, np.uint8)
    head = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + arr.tobytes())


def test_read_idx_roundtrip(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / "x.gz", arr)
    np.testing.assert_array_equal(data_lib.read_idx_gz(str(tmp_path / "x.gz")), arr)


@pytest.mark.parametrize(
    "kind", ["missing", "not_gzip", "truncated_gzip", "bad_magic", "short_payload"]
)
def test_bad_files_give_one_line_error_naming_the_file(tmp_path, kind):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    good = bytes([0, 0, 8, 3]) + struct.pack(">3I", 2, 28, 28) + bytes(2 * 28 * 28)
    if kind == "not_gzip":
        path.write_bytes(b"this is not gzip data at all")
    elif kind == "truncated_gzip":
        path.write_bytes(gzip.compress(good)[:40])
    elif kind == "bad_magic":
        path.write_bytes(gzip.compress(b"\x12\x34" + good[2:]))
    elif kind == "short_payload":
        path.write_bytes(gzip.compress(good[:-100]))
    with pytest.raises(data_lib.DatasetError) as e:
        data_lib.load_fashion_mnist("train", data_dir=str(tmp_path))
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg


def test_wrong_image_count_is_an_error(tmp_path):
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((3, 28, 28)))
    with pytest.raises(data_lib.DatasetError, match="expected 10000 images"):
        data_lib.load_fashion_mnist("test", data_dir=str(tmp_path))


def test_padding_channels_and_downsampling():
    x = np.random.default_rng(1).integers(1, 256, (2, 28, 28), dtype=np.uint8)
    p = fm.pad_and_channels(x, 32, 3)
    assert p.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(p[:, 2:30, 2:30, 1], x)
    assert p[:, :2].max() == 0 and p[:, :, 30:].max() == 0  # black border = background
    np.testing.assert_array_equal(p[..., 0], p[..., 2])
    s = fm.pad_and_channels(x, 8, 1)
    assert s.shape == (2, 8, 8, 1)
    np.testing.assert_allclose(s[0, 3, 3, 0], p[0, 12:16, 12:16, 0].mean(), atol=0.5)
    with pytest.raises(ValueError):
        fm.pad_and_channels(x, 12, 1)


@needs_fmnist
def test_real_fashion_mnist_splits():
    tr, ytr = data_lib.load_fashion_mnist("train", with_labels=True)
    te, yte = data_lib.load_fashion_mnist("test", with_labels=True, channels=1)
    assert tr.shape == (60000, 32, 32, 3) and te.shape == (10000, 32, 32, 1)
    assert tr.dtype == np.uint8 and set(np.unique(ytr)) == set(range(10))
    assert np.bincount(yte).tolist() == [1000] * 10  # the real, balanced test split
    assert tr[:, :2].max() == 0 and tr.max() == 255
    # train and test are different images
    assert not np.array_equal(tr[:100, ..., 0], te[:100, ..., 0])


def test_batches_are_a_function_of_seed_and_step():
    n, b = 100, 8
    a = data_lib.batch_indices(0, 3, b, n)
    np.testing.assert_array_equal(a, data_lib.batch_indices(0, 3, b, n))
    assert not np.array_equal(a, data_lib.batch_indices(1, 3, b, n))
    epoch = np.concatenate([data_lib.batch_indices(0, s, b, n) for s in range(n // b)])
    assert len(set(epoch.tolist())) == len(epoch)  # no repeats within an epoch
    nxt = data_lib.batch_indices(0, n // b, b, n)  # next epoch: new permutation
    assert not np.array_equal(nxt, data_lib.batch_indices(0, 0, b, n))
    with pytest.raises(ValueError):
        data_lib.batch_indices(0, 0, 200, n)


def test_process_slices_partition_the_global_batch():
    src = data_lib.ArraySource(np.arange(64 * 4, dtype=np.uint8).reshape(64, 2, 2, 1))
    full = src.local_batch(5, 7, 16, 0, 1)
    parts = [src.local_batch(5, 7, 16, p, 4) for p in range(4)]
    np.testing.assert_array_equal(np.concatenate(parts), full)
    assert full.min() >= -1 and full.max() <= 1 and full.dtype == np.float32
    with pytest.raises(ValueError, match="not divisible"):
        src.local_batch(5, 7, 16, 0, 3)


def test_image_folder_skips_and_records_bad_files(tmp_path):
    from PIL import Image

    (tmp_path / "sub").mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate([(40, 30), (32, 32), (20, 50)]):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
            tmp_path / ("sub" if i == 2 else "") / f"im{i}.png"
        )
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("not an image either")
    imgs, paths, bad = data_lib.load_image_folder(str(tmp_path), 16, channels=3)
    assert imgs.shape == (3, 16, 16, 3) and imgs.dtype == np.uint8 and len(paths) == 3
    # nothing in the folder is silently dropped: both non-images are recorded with a reason
    reasons = dict((os.path.basename(p), r) for p, r in bad)
    assert set(reasons) == {"broken.jpg", "notes.txt"}
    assert "not a recognized image" in reasons["broken.jpg"] and "extension" in reasons["notes.txt"]
    # decoding is the invert job's: same pixels as decode_file + to_uint8
    from ganinv_jax.data import images as image_io

    want = image_io.to_uint8(image_io.decode_file(paths[0], image_io.Preprocess(16, 3)))
    np.testing.assert_array_equal(imgs[0], want)
    gray, _, _ = data_lib.load_image_folder(str(tmp_path), 8, channels=1)
    assert gray.shape == (3, 8, 8, 1)


def test_image_folder_errors(tmp_path):
    with pytest.raises(data_lib.DatasetError, match="not found"):
        data_lib.load_image_folder(str(tmp_path / "nope"), 16)
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with pytest.raises(data_lib.DatasetError, match="no readable images"):
        data_lib.load_image_folder(str(tmp_path), 16)


def test_make_grid_labels_add_a_header_line_and_a_margin_with_text():
    cells = np.zeros((6, 16, 16, 3), np.uint8) + 200
    plain = image_io.make_grid(cells, ncols=3)
    labelled = image_io.make_grid(
        cells, ncols=3, col_labels=["target", "recon", "edit"], row_labels=["a", "sefa:0"]
    )
    top = labelled.shape[0] - plain.shape[0]
    left = labelled.shape[1] - plain.shape[1]
    assert top == image_io.LABEL_PX + 6 and left > 0
    np.testing.assert_array_equal(labelled[top:, left:], plain)  # the cells are untouched
    assert labelled[:top, left:].min() < 100  # dark text on white
    assert labelled[top:, :left].min() < 100
    with pytest.raises(ValueError, match="2 column labels for 3 columns"):
        image_io.make_grid(cells, ncols=3, col_labels=["a", "b"])
