"""The one image I/O layer: 8-bit files and arrays <-> the library's float32 [-1, 1] NHWC.

* `to_uint8` / `from_uint8`: the only conversions between [-1, 1] floats and 8-bit pixels.
* `decode_file` / `prepare_array`: any image file or array -> G's resolution and channels
  (EXIF orientation, alpha composited over a background, 16-bit and float modes rescaled, a
  decompression-bomb cap, crop or pad); a bad item raises `ItemError` with the reason.
* `list_folder` / `load_image_folder`: a folder's files in a deterministic order; unreadable or
  non-image files are returned as (path, reason), never silently dropped.
* `make_grid` / `save_png`: the one grid and PNG writer (atomic writes, nearest upscaling).
* `to_tiles` / `from_tiles` / `crop_patches`: an (n·m)² image <-> its n² row-major m² tiles
  (InvGAN's tiled inversion), and m² crops at given offsets (InvGAN's patch training).

Training (`data.load_image_folder`), the invert job's sources, export and benchmarks use these.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from ganinv_jax import atomic

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
_FLOAT_TOL = 1e-3  # float arrays must lie in [-1 - tol, 1 + tol]
READABLE_CELL = 128  # px per cell of every picture meant for people (README, TensorBoard)


class ItemError(Exception):
    """One item is unusable; the message is the reason recorded in failures.csv."""


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """How any input becomes an image of G: `resolution`² px, `channels` (1 or 3)."""

    resolution: int
    channels: int
    resize_mode: str = "crop"  # 'crop': scale shorter side + center crop; 'pad': center pad
    background: int = 0  # gray level that alpha is composited over (and pad fill)
    max_pixels: int = 50_000_000  # decompression-bomb cap (header size, before decoding)
    align: Optional[Callable[[Image.Image], Optional[Image.Image]]] = None


def _to_gray_or_rgb(im: Image.Image, channels: int, background: int) -> Image.Image:
    """Any PIL mode -> 'L' or 'RGB'. Alpha is composited over `background`; 16/32-bit and float
    modes are rescaled from their value range (PIL's convert would clip them)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        im = Image.fromarray(np.clip(np.rint(a / hi * 255.0), 0, 255).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (background,) * 3 + (255,))
        im = Image.alpha_composite(bg, rgba)
    return im.convert("RGB" if channels == 3 else "L")


def _fit(im: Image.Image, pre: Preprocess) -> Image.Image:
    res = pre.resolution
    w, h = im.size
    if pre.resize_mode == "pad" and w <= res and h <= res:
        canvas = Image.new(
            im.mode,
            (res, res),
            (pre.background,) * len(im.getbands()) if len(im.getbands()) > 1 else pre.background,
        )
        canvas.paste(im, ((res - w) // 2, (res - h) // 2))
        return canvas
    s = min(w, h)  # crop first: an absurd aspect ratio never gets resized at full length
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return im if s == res else im.resize((res, res), Image.LANCZOS)


def _finish(im: Image.Image, pre: Preprocess) -> np.ndarray:
    """PIL image (any mode/size) -> float32 [res, res, channels] in [-1, 1]."""
    im = _to_gray_or_rgb(im, pre.channels, pre.background)
    if pre.align is not None:
        aligned = pre.align(im)
        if aligned is None:
            raise ItemError("alignment hook found nothing to align (e.g. no face)")
        im = _to_gray_or_rgb(aligned, pre.channels, pre.background)
    arr = np.asarray(_fit(im, pre), np.uint8)
    if arr.ndim == 2:
        arr = arr[..., None]
    return from_uint8(arr)


def decode_file(path: str, pre: Preprocess) -> np.ndarray:
    """One image file -> float32 [res, res, C] in [-1, 1]; raises ItemError with the reason."""
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise ItemError(f"cannot stat file ({e.strerror})") from None
    if size == 0:
        raise ItemError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > pre.max_pixels or w <= 0 or h <= 0:
                    raise ItemError(
                        f"image too large: {w}x{h} = {w * h} px > cap "
                        f"{pre.max_pixels} (data.max_pixels)"
                    )
                if getattr(im, "n_frames", 1) > 1:
                    im.seek(0)  # animated GIF/WebP: first frame
                im.load()  # truncated files fail here, not later
                im = ImageOps.exif_transpose(im)
                return _finish(im, pre)
    except ItemError:
        raise
    except Image.UnidentifiedImageError:
        raise ItemError("not a recognized image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ItemError(f"decompression bomb refused ({e})") from None
    except MemoryError:
        raise ItemError("out of memory decoding the image") from None
    except Exception as e:  # noqa: BLE001 -- truncated/corrupt data surfaces as many types
        msg = str(e).splitlines()[0] if str(e) else ""
        raise ItemError(f"corrupt or truncated image ({type(e).__name__}: {msg})") from None


def prepare_array(x: np.ndarray, pre: Preprocess) -> np.ndarray:
    """One array image (uint8 [H,W,C]/[H,W] or float in [-1, 1]) -> float32 [res, res, C]."""
    x = np.asarray(x)
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3 or x.shape[-1] not in (1, 3, 4):
        raise ItemError(f"expected an [H, W, 1|3|4] image, got shape {x.shape}")
    if x.dtype == np.uint8:
        u8 = x
    elif np.issubdtype(x.dtype, np.floating):
        if not np.all(np.isfinite(x)):
            raise ItemError("non-finite values in float image")
        lo, hi = float(x.min()), float(x.max())
        if lo < -1 - _FLOAT_TOL or hi > 1 + _FLOAT_TOL:
            raise ItemError(f"float image outside [-1, 1] (min {lo:.3g}, max {hi:.3g})")
        fast = (
            x.shape[0] == x.shape[1] == pre.resolution
            and x.shape[-1] == pre.channels
            and pre.align is None
        )
        if fast:  # exact: no 8-bit round trip for arrays already in G's format
            return np.clip(x, -1.0, 1.0).astype(np.float32)
        u8 = to_uint8(x)
    else:
        raise ItemError(f"unsupported dtype {x.dtype} (want uint8 or float in [-1, 1])")
    if (
        u8.shape[0] == u8.shape[1] == pre.resolution
        and u8.shape[-1] == pre.channels
        and pre.align is None
    ):
        return from_uint8(u8)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[u8.shape[-1]]
    return _finish(Image.fromarray(u8[..., 0] if mode == "L" else u8, mode), pre)


# ----------------------------------------------------------------------------- folders


def list_folder(folder: str) -> list[str]:
    """All non-hidden regular files under `folder`, recursively, sorted by relative path."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in files:
            if not f.startswith("."):
                out.append(os.path.relpath(os.path.join(root, f), folder))
    return sorted(out)


def load_image_folder(
    folder: str,
    resolution: int,
    channels: int = 3,
    limit: Optional[int] = None,
    pre: Optional[Preprocess] = None,
):
    """Every file under `folder` -> (images uint8 [N, res, res, channels], paths, bad).

    Decoding is `decode_file`'s (the invert job's); files that are not images or do not decode
    come back in `bad` as (path, reason). A missing folder or one without a readable image is a
    `DatasetError` naming the folder.
    """
    from ganinv_jax.data.fashion_mnist import DatasetError

    if not os.path.isdir(folder):
        raise DatasetError(f"{folder}: image folder not found")
    pre = pre or Preprocess(resolution, channels)
    paths = [os.path.join(folder, p) for p in list_folder(folder)][: limit or None]
    images, good, bad = [], [], []
    for p in paths:
        try:
            if not p.lower().endswith(IMAGE_EXTS):
                raise ItemError(f"not an image file extension ({os.path.splitext(p)[1] or 'none'})")
            images.append(to_uint8(decode_file(p, pre)))
            good.append(p)
        except ItemError as e:
            bad.append((p, str(e)))
    if not images:
        raise DatasetError(f"{folder}: no readable images ({len(bad)} unreadable)")
    return np.stack(images), good, bad


# ----------------------------------------------------------------------------- tiles, patches


def to_tiles(image, m: int):
    """[H, W, C] with H = W = n·m -> [n², m, m, C], row-major tiles (tile k is row k // n,
    column k % n). Works on numpy and JAX arrays; any other shape is a ValueError."""
    H, W, C = image.shape
    if H != W or H % m or H == 0:
        raise ValueError(
            f"tiled inversion needs a square image with side a multiple of {m}, got {H}x{W}"
        )
    n = H // m
    return image.reshape(n, m, n, m, C).transpose(0, 2, 1, 3, 4).reshape(n * n, m, m, C)


def from_tiles(tiles):
    """Inverse of `to_tiles`: [n², m, m, C] -> [n·m, n·m, C]."""
    nn_, m, _, C = tiles.shape
    n = int(round(float(np.sqrt(nn_))))
    if n * n != nn_:
        raise ValueError(f"from_tiles: {nn_} tiles are not a square number")
    return tiles.reshape(n, n, m, m, C).transpose(0, 2, 1, 3, 4).reshape(n * m, n * m, C)


def crop_patches(images: np.ndarray, offsets: np.ndarray, size: int) -> np.ndarray:
    """[B, H, W, C] and integer offsets [B, 2] (top, left) -> the [B, size, size, C] crops."""
    images, offsets = np.asarray(images), np.asarray(offsets)
    return np.stack(
        [img[t : t + size, l : l + size] for img, (t, l) in zip(images, offsets.tolist())]
    )


# ----------------------------------------------------------------------------- 8-bit and grids


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] float (any shape ending in C) -> uint8, clipped and rounded."""
    x = (np.asarray(images, dtype=np.float32) + 1.0) * 127.5
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def from_uint8(images: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [-1, 1]."""
    return np.asarray(images, dtype=np.float32) / 127.5 - 1.0


def upscale(images: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling of [..., H, W, C] by an integer factor."""
    if scale <= 1:
        return images
    return np.repeat(np.repeat(images, scale, axis=-3), scale, axis=-2)


LABEL_PX = 14  # text height of grid labels; the strip is LABEL_PX + 6 px


def _font(px: int):
    # Pillow's embedded font: no file, no download; the bitmap fallback if FreeType is absent.
    try:
        return ImageFont.load_default(size=px)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _fit_text(draw, text: str, font, width: int) -> str:
    """`text`, cut with an ellipsis until it fits `width` px."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _text_width(labels) -> int:
    draw, font = ImageDraw.Draw(Image.new("L", (1, 1))), _font(LABEL_PX)
    return int(max(draw.textlength(str(t), font=font) for t in labels))


def _label_strip(labels, cell: int, pad: int, height: int, c: int, vertical: bool) -> np.ndarray:
    """One white strip with each label centred over (or beside) its cell."""
    length = len(labels) * (cell + pad) + pad
    canvas = Image.new("L", (height, length) if vertical else (length, height), 255)
    draw, font = ImageDraw.Draw(canvas), _font(LABEL_PX)
    for i, text in enumerate(labels):
        start = pad + i * (cell + pad)
        if vertical:
            text = _fit_text(draw, str(text), font, height - 4)
            draw.text((2, start + cell // 2), text, fill=0, font=font, anchor="lm")
        else:
            text = _fit_text(draw, str(text), font, cell - 2)
            draw.text((start + cell // 2, height // 2), text, fill=0, font=font, anchor="mm")
    return np.repeat(np.asarray(canvas)[..., None], c, axis=-1)


def make_grid(
    images: np.ndarray,
    ncols: int | None = None,
    pad: int = 2,
    min_cell: int = READABLE_CELL,
    col_labels: Optional[Sequence[str]] = None,
    row_labels: Optional[Sequence[str]] = None,
) -> np.ndarray:
    """[N, H, W, C] (uint8 or float in [-1, 1]) -> one [rows*H', cols*W', C] uint8 grid.

    Cells are separated by `pad` white pixels. `min_cell` upscales each image (nearest
    neighbour, an integer factor) until it is at least that many pixels tall, so 32-px images
    stay readable in a README or TensorBoard (0: no upscaling). `col_labels` (one per column)
    adds a header line saying what each column is; `row_labels` (one per row) a left margin.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = to_uint8(images)
    images = upscale(images, -(-int(min_cell) // images.shape[1]) if min_cell else 1)
    n, h, w, c = images.shape
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, q = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[y : y + h, x : x + w] = images[i]
    strip = LABEL_PX + 6
    if col_labels is not None:
        if len(col_labels) != ncols:
            raise ValueError(f"make_grid: {len(col_labels)} column labels for {ncols} columns")
        grid = np.concatenate([_label_strip(col_labels, w, pad, strip, c, False), grid], axis=0)
    if row_labels is not None:
        if len(row_labels) != nrows:
            raise ValueError(f"make_grid: {len(row_labels)} row labels for {nrows} rows")
        width = min(2 * w, _text_width(row_labels) + 8)  # long names are cut with "…"
        side = _label_strip(row_labels, h, pad, width, c, True)
        if col_labels is not None:  # the corner above the row labels
            side = np.concatenate([np.full((strip, width, c), 255, np.uint8), side], axis=0)
        grid = np.concatenate([side, grid], axis=1)
    return grid


def save_png(path: str, image: np.ndarray, scale: int = 1) -> None:
    """Write an [H, W, C] image (uint8, or float in [-1, 1]) as PNG, atomically (tmp + rename),
    nearest-upscaled `scale`x."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = to_uint8(image)
    image = upscale(image, scale)
    if image.shape[-1] == 1:
        image = image[..., 0]
    with atomic.atomic_open(path, "wb", suffix=".png") as f:
        Image.fromarray(image).save(f, format="PNG")
