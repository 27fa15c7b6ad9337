"""Any folder of images -> uint8 NHWC array (center-cropped square, resized, RGB or gray).

Unreadable files are recorded and skipped (returned in `bad`), never fatal; an empty or
missing folder is an error naming the folder.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from ganinv_jax.data.fashion_mnist import DatasetError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def list_images(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        raise DatasetError(f"{folder}: image folder not found")
    paths = []
    for root, _, files in os.walk(folder):
        paths += [os.path.join(root, f) for f in files if f.lower().endswith(IMAGE_EXTS)]
    return sorted(paths)


def _decode(path: str, resolution: int, channels: int) -> np.ndarray:
    from PIL import Image
    with Image.open(path) as im:
        im = im.convert("RGB" if channels == 3 else "L")
        w, h = im.size
        s = min(w, h)
        im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        if s != resolution:
            im = im.resize((resolution, resolution), Image.LANCZOS)
        arr = np.asarray(im, np.uint8)
    return arr if channels == 3 else arr[..., None]


def load_image_folder(folder: str, resolution: int, channels: int = 3,
                      limit: Optional[int] = None):
    """Returns (images [N, res, res, channels] uint8, paths [N], bad [(path, reason)])."""
    paths = list_images(folder)
    if limit is not None:
        paths = paths[:limit]
    images, good, bad = [], [], []
    for p in paths:
        try:
            images.append(_decode(p, resolution, channels))
            good.append(p)
        except Exception as e:  # noqa: BLE001 -- any decode failure is a bad file, recorded
            bad.append((p, f"{type(e).__name__}: {e}"))
    if not images:
        raise DatasetError(f"{folder}: no readable images ({len(bad)} unreadable)")
    return np.stack(images), good, bad
