"""Image conversions and grids shared by every job (files are 8-bit; the library is [-1, 1])."""
from __future__ import annotations

import numpy as np
from PIL import Image

from ganinv_jax import atomic


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] float (any shape ending in C) -> uint8, clipped and rounded."""
    x = (np.asarray(images, dtype=np.float32) + 1.0) * 127.5
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def from_uint8(images: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [-1, 1]."""
    return np.asarray(images, dtype=np.float32) / 127.5 - 1.0


def make_grid(images: np.ndarray, ncols: int | None = None, pad: int = 2) -> np.ndarray:
    """[N, H, W, C] (uint8 or float in [-1, 1]) -> one [rows*H', cols*W', C] uint8 grid."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = to_uint8(images)
    n, h, w, c = images.shape
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, q = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[y:y + h, x:x + w] = images[i]
    return grid


def save_png(path: str, image: np.ndarray) -> None:
    """Write an [H, W, C] image (uint8, or float in [-1, 1]) as PNG, atomically (tmp + rename)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = to_uint8(image)
    if image.shape[-1] == 1:
        image = image[..., 0]
    with atomic.atomic_open(path, "wb", suffix=".png") as f:
        Image.fromarray(image).save(f, format="PNG")
