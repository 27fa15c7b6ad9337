"""Shared data for tests/test_losses_*.py: real photos from scikit-image, resized, in [-1, 1]."""

import functools

import numpy as np
from skimage import data, transform

PHOTOS = ("astronaut", "chelsea", "coffee")


@functools.lru_cache(maxsize=None)
def photos01(h: int, w: int | None = None, names: tuple[str, ...] = PHOTOS) -> np.ndarray:
    """[len(names), h, w, 3] float32 in [0, 1] (anti-aliased resize of scikit-image's photos)."""
    w = h if w is None else w
    out = []
    for name in names:
        img = getattr(data, name)()
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        out.append(transform.resize(img[..., :3], (h, w), anti_aliasing=True))
    return np.stack(out).astype(np.float32)


def photos(h: int, w: int | None = None, names: tuple[str, ...] = PHOTOS) -> np.ndarray:
    """Same photos in [-1, 1]."""
    return photos01(h, w, names) * 2.0 - 1.0


def noisy(x: np.ndarray, std: float, seed: int = 0) -> np.ndarray:
    """x + Gaussian noise, clipped to x's range ([-1, 1])."""
    rng = np.random.default_rng(seed)
    return np.clip(x + std * rng.standard_normal(x.shape).astype(np.float32), -1.0, 1.0)


def uniform_images(n: int, h: int, w: int | None = None, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, (n, h, h if w is None else w, 3)).astype(np.float32)
