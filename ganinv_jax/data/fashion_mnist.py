"""Fashion-MNIST read from Debian's `dataset-fashion-mnist` package (no download).

The package installs the four original idx files under `/usr/share/datasets/fashion-mnist/`
(`apt-get install dataset-fashion-mnist`). We parse the idx format ourselves (a 4-byte magic
`0x00 0x00 <dtype=0x08> <ndim>`, ndim big-endian uint32 sizes, then raw uint8), so the only
requirement is the files. Splits are the real ones: train = 60000, test = 10000.

Images are padded from 28x28 to `resolution` (default 32) with black (0, i.e. -1 in model range,
the images' own background) and replicated to `channels` (default 3: every downstream piece --
RGB image files, LPIPS, converted RGB GANs -- then works without a grayscale special case; the
cost is two 3-channel 1x1 convs).
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np

from ganinv_jax.errors import UserError

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000),
}
CLASS_NAMES = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)


class DatasetError(UserError, RuntimeError):
    """A dataset file is missing or unreadable; the message is one line naming the file."""


def read_idx_gz(path: str) -> np.ndarray:
    """Parse one gzipped idx file (uint8 payload) into an array of its declared shape."""
    if not os.path.isfile(path):
        raise DatasetError(
            f"{path}: dataset file not found (Fashion-MNIST: apt-get install dataset-fashion-mnist)"
        )
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"{path}: corrupt gzip file ({type(e).__name__}: {e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetError(f"{path}: not an idx file (bad magic number)")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != 0x08:
        raise DatasetError(f"{path}: unsupported idx dtype 0x{dtype_code:02x} (want uint8 0x08)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated idx header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    size = int(np.prod(shape)) if shape else 0
    if len(raw) - header != size:
        raise DatasetError(
            f"{path}: truncated or oversized payload "
            f"({len(raw) - header} bytes, header says {size} for shape {shape})"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def pad_and_channels(images: np.ndarray, resolution: int, channels: int) -> np.ndarray:
    """[N, h, w] uint8 -> [N, resolution, resolution, channels] uint8 (centered zero padding)."""
    n, h, w = images.shape
    if resolution < max(h, w):  # pad to 32, then box-downsample (16, 8, 4: tiny test models)
        if 32 % resolution or resolution < 1:
            raise ValueError(f"resolution {resolution} < {h}x{w} must divide 32")
        f = 32 // resolution
        big = pad_and_channels(images, 32, 1)[..., 0].astype(np.float32)
        small = big.reshape(n, resolution, f, resolution, f).mean(axis=(2, 4))
        small = np.rint(small).astype(np.uint8)
        return np.repeat(small[..., None], channels, axis=-1)
    top, left = (resolution - h) // 2, (resolution - w) // 2
    out = np.zeros((n, resolution, resolution, channels), np.uint8)
    out[:, top : top + h, left : left + w, :] = images[..., None]
    return out


def load_fashion_mnist(
    split: str = "train",
    data_dir: str = DEFAULT_DIR,
    resolution: int = 32,
    channels: int = 3,
    with_labels: bool = False,
):
    """Images [N, res, res, channels] uint8 (and labels [N] uint8) of one real split."""
    if split not in _FILES:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; use 'train' or 'test'")
    img_file, lbl_file, count = _FILES[split]
    images = read_idx_gz(os.path.join(data_dir, img_file))
    if images.ndim != 3 or images.shape[0] != count:
        raise DatasetError(
            f"{os.path.join(data_dir, img_file)}: expected {count} images of "
            f"28x28, got shape {images.shape}"
        )
    images = pad_and_channels(images, resolution, channels)
    if not with_labels:
        return images
    labels = read_idx_gz(os.path.join(data_dir, lbl_file))
    if labels.shape != (count,):
        raise DatasetError(
            f"{os.path.join(data_dir, lbl_file)}: expected {count} labels, got shape {labels.shape}"
        )
    return images, labels
