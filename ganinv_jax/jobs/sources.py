"""Input sources of the invert job: a folder of images, an .npz/.npy array, a TFDS split, or the
bundled sample. Every source is a list of items with a stable integer id (the position in a
deterministic listing) and a human-readable `path`; `load(i)` decodes ONE item to a uint8 or
float image that `prepare` turns into G's resolution and channels.

Listing is cheap and done by every host; decoding is per item, so each host decodes only the
items of its shard. Bad items never raise out of `load_prepared`: they come back as
`(None, reason)` and the job records them in failures.csv.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import importlib
import os
import warnings
from typing import Any, Callable, Optional, Sequence

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
BUNDLED_SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "assets", "samples", "fashion_mnist_test16.npz")
_FLOAT_TOL = 1e-3   # float arrays must lie in [-1 - tol, 1 + tol]


class SourceError(ValueError):
    """The input as a whole is unusable (missing, wrong shape, unknown dataset): fail fast."""


class ItemError(Exception):
    """One item is unusable; the message is the reason recorded in failures.csv."""


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """How any input becomes an image of G: `resolution`² px, `channels` (1 or 3)."""
    resolution: int
    channels: int
    resize_mode: str = "crop"        # 'crop': scale shorter side + center crop; 'pad': center pad
    background: int = 0              # gray level that alpha is composited over (and pad fill)
    max_pixels: int = 50_000_000     # decompression-bomb cap (header size, before decoding)
    align: Optional[Callable[[Image.Image], Optional[Image.Image]]] = None


# ----------------------------------------------------------------------------- conversions


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
        canvas = Image.new(im.mode, (res, res), (pre.background,) * len(im.getbands())
                           if len(im.getbands()) > 1 else pre.background)
        canvas.paste(im, ((res - w) // 2, (res - h) // 2))
        return canvas
    s = min(w, h)   # crop first: an absurd aspect ratio never gets resized at full length
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
    return arr.astype(np.float32) / 127.5 - 1.0


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
                    raise ItemError(f"image too large: {w}x{h} = {w * h} px > cap "
                                    f"{pre.max_pixels} (data.max_pixels)")
                if getattr(im, "n_frames", 1) > 1:
                    im.seek(0)   # animated GIF/WebP: first frame
                im.load()        # truncated files fail here, not later
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
        fast = (x.shape[0] == x.shape[1] == pre.resolution and x.shape[-1] == pre.channels
                and pre.align is None)
        if fast:   # exact: no 8-bit round trip for arrays already in G's format
            return np.clip(x, -1.0, 1.0).astype(np.float32)
        u8 = np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
    else:
        raise ItemError(f"unsupported dtype {x.dtype} (want uint8 or float in [-1, 1])")
    if u8.shape[0] == u8.shape[1] == pre.resolution and u8.shape[-1] == pre.channels \
            and pre.align is None:
        return u8.astype(np.float32) / 127.5 - 1.0
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[u8.shape[-1]]
    return _finish(Image.fromarray(u8[..., 0] if mode == "L" else u8, mode), pre)


# ----------------------------------------------------------------------------- sources


class Source:
    """A deterministic list of items. Subclasses define `paths` and `_load(i)`."""
    kind = "source"
    paths: Sequence[str] = ()

    def __len__(self) -> int:
        return len(self.paths)

    def describe(self) -> str:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Hash of the listing: a resumed run must see the same items under the same ids."""
        h = hashlib.sha256(self.describe().encode())
        for p in self.paths:
            h.update(p.encode() + b"\0")
        return h.hexdigest()[:16]

    def _load(self, i: int, pre: Preprocess) -> np.ndarray:
        raise NotImplementedError

    def load_prepared(self, i: int, pre: Preprocess) -> tuple[Optional[np.ndarray], str]:
        """(image float32 [res,res,C], '') or (None, reason). Never raises for a bad item."""
        try:
            img = self._load(i, pre)
        except ItemError as e:
            return None, str(e)
        except Exception as e:  # noqa: BLE001 -- a bad item must not kill the job
            return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if img.shape != (pre.resolution, pre.resolution, pre.channels):
            return None, f"internal: prepared shape {img.shape}"
        return img, ""

    def load_many(self, ids: Sequence[int], pre: Preprocess, workers: int = 4):
        """load_prepared over ids, in order; decoding overlaps in threads (PIL releases the GIL
        while decoding), which matters for large JPEGs."""
        ids = list(ids)
        if workers <= 1 or len(ids) <= 1:
            return [self.load_prepared(i, pre) for i in ids]
        with concurrent.futures.ThreadPoolExecutor(min(workers, len(ids))) as pool:
            return list(pool.map(lambda i: self.load_prepared(i, pre), ids))


def list_folder(folder: str) -> list[str]:
    """All non-hidden regular files under `folder`, recursively, sorted by relative path."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in files:
            if not f.startswith("."):
                out.append(os.path.relpath(os.path.join(root, f), folder))
    return sorted(out)


class FolderSource(Source):
    """Every non-hidden file under a folder gets an id; files that are not images (by extension
    or by content) become failures, so nothing in the folder is silently ignored."""
    kind = "folder"

    def __init__(self, folder: str, limit: int = 0):
        if not os.path.isdir(folder):
            raise SourceError(f"data.path {folder!r}: no such folder")
        self.folder = os.path.abspath(folder)
        rel = list_folder(self.folder)
        if not rel:
            raise SourceError(f"data.path {folder!r}: folder has no files")
        self.paths = rel[:limit] if limit else rel

    def describe(self) -> str:
        return f"folder:{self.folder}"

    def _load(self, i, pre):
        rel = self.paths[i]
        if not rel.lower().endswith(IMAGE_EXTS):
            raise ItemError(f"not an image file extension ({os.path.splitext(rel)[1] or 'none'}; "
                            f"supported: {' '.join(IMAGE_EXTS)})")
        return decode_file(os.path.join(self.folder, rel), pre)


def _to_nhwc(arr: np.ndarray, where: str) -> np.ndarray:
    if arr.ndim == 3:
        return arr[..., None]
    if arr.ndim != 4:
        raise SourceError(f"{where}: expected images [N, H, W(, C)], got shape {arr.shape}")
    if arr.shape[-1] not in (1, 3, 4) and arr.shape[1] in (1, 3, 4):
        return np.transpose(arr, (0, 2, 3, 1))   # NCHW (e.g. saved from PyTorch)
    if arr.shape[-1] not in (1, 3, 4):
        raise SourceError(f"{where}: channel axis must have 1, 3 or 4 entries, shape {arr.shape}")
    return arr


class ArraySource(Source):
    """An .npy (memory-mapped: each host reads only its rows) or .npz (key `data.array_key`, or
    'images', or its only array) of uint8 [N,H,W,C] or float in [-1, 1]; [N,H,W] and NCHW too."""
    kind = "array"

    def __init__(self, path: str, limit: int = 0, key: str = "", label: str = ""):
        if not os.path.isfile(path):
            raise SourceError(f"data.path {path!r}: no such file")
        self.path = os.path.abspath(path)
        try:
            if path.endswith(".npy"):
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            else:
                with np.load(path, allow_pickle=False) as z:
                    keys = list(z.keys())
                    pick = key or ("images" if "images" in keys else
                                   (keys[0] if len(keys) == 1 else ""))
                    if pick not in keys:
                        raise SourceError(f"data.path {path!r}: say which array with "
                                          f"--config.data.array_key (one of {keys})")
                    arr = z[pick]
        except SourceError:
            raise
        except Exception as e:  # noqa: BLE001
            raise SourceError(f"data.path {path!r}: cannot read array file "
                              f"({type(e).__name__}: {e})") from None
        if arr.dtype != np.uint8 and not np.issubdtype(arr.dtype, np.floating):
            raise SourceError(f"data.path {path!r}: dtype {arr.dtype}; want uint8 or float")
        arr = _to_nhwc(arr, f"data.path {path!r}")
        self.array = arr[:limit] if limit else arr
        name = label or os.path.basename(self.path)
        self.paths = [f"{name}[{i}]" for i in range(len(self.array))]

    def describe(self) -> str:
        return f"array:{self.path}:{self.array.shape}:{self.array.dtype}"

    def _load(self, i, pre):
        return prepare_array(np.asarray(self.array[i]), pre)


class TfdsSource(Source):
    """A TFDS split read with download=False. Fashion-MNIST falls back to the Debian idx files
    (`ganinv_jax.data`) when no prepared TFDS copy exists, so it works offline."""
    kind = "tfds"

    def __init__(self, name: str, split: str, limit: int = 0, data_dir: str = "",
                 image_key: str = "image"):
        self.name, self.split, self.image_key = name, split, image_key
        self._array = None
        self._builder = None
        import tensorflow_datasets as tfds   # heavy: only when asked for
        try:
            builder = tfds.builder(name, data_dir=data_dir or None)
            prepared = builder.is_prepared()
        except Exception as e:  # noqa: BLE001 -- unknown name / broken registry
            builder, prepared, err = None, False, f"{type(e).__name__}: {e}"
        else:
            err = f"not prepared in {builder.data_dir!r} (download=False: nothing is fetched)"
        if prepared:
            if split not in builder.info.splits:
                raise SourceError(f"data.split {split!r}: {name} has {list(builder.info.splits)}")
            n = builder.info.splits[split].num_examples
            self._builder = builder
        elif name in ("fashion_mnist", "fashion-mnist"):
            from ganinv_jax import data as data_lib
            try:
                self._array, _ = data_lib.load_fashion_mnist(split, channels=1, with_labels=True)
            except (ValueError, data_lib.DatasetError) as e:
                raise SourceError(f"data.tfds_name={name}: {e}") from None
            n = len(self._array)
        else:
            raise SourceError(f"data.tfds_name={name!r}: {err.splitlines()[0]}")
        n = min(n, limit) if limit else n
        self.paths = [f"tfds:{name}/{split}[{i}]" for i in range(n)]

    def describe(self) -> str:
        return f"tfds:{self.name}:{self.split}"

    def _load(self, i, pre):
        if self._array is not None:
            return prepare_array(self._array[i], pre)
        import tensorflow_datasets as tfds
        ds = self._builder.as_dataset(split=f"{self.split}[{i}:{i + 1}]")
        (ex,) = list(tfds.as_numpy(ds))
        return prepare_array(ex[self.image_key], pre)

    def load_many(self, ids: Sequence[int], pre: Preprocess, workers: int = 4):
        """A host's shard of a chunk is a contiguous id range: read it in one TFDS pass."""
        if self._array is not None or not len(ids):
            return super().load_many(ids, pre, workers)
        lo, hi = min(ids), max(ids) + 1
        try:
            import tensorflow_datasets as tfds
            ds = self._builder.as_dataset(split=f"{self.split}[{lo}:{hi}]")
            rows = [ex[self.image_key] for ex in tfds.as_numpy(ds)]
        except Exception as e:  # noqa: BLE001 -- a corrupt shard fails its items, not the job
            reason = f"TFDS read failed ({type(e).__name__}: {str(e).splitlines()[0]})"
            return [(None, reason) for _ in ids]
        out = []
        for i in ids:
            try:
                out.append((prepare_array(rows[i - lo], pre), ""))
            except ItemError as e:
                out.append((None, str(e)))
        return out


def resolve_align(spec: Any) -> Optional[Callable]:
    """config.data.align: '' (off), a callable, or 'package.module:function'."""
    if not spec:
        return None
    if callable(spec):
        return spec
    module, _, fn = str(spec).partition(":")
    try:
        return getattr(importlib.import_module(module), fn)
    except (ImportError, AttributeError, ValueError) as e:
        raise SourceError(f"data.align {spec!r}: cannot import ({e})") from None


def open_source(data_cfg) -> Source:
    """The source that config.data names; the bundled sample when it names none."""
    limit = int(data_cfg.limit or 0)
    if limit < 0:
        raise SourceError(f"data.limit must be >= 0, got {limit}")
    if data_cfg.path and data_cfg.tfds_name:
        raise SourceError("set data.path or data.tfds_name, not both")
    if data_cfg.tfds_name:
        return TfdsSource(data_cfg.tfds_name, data_cfg.split, limit, data_cfg.tfds_data_dir)
    path = data_cfg.path
    if not path:
        return ArraySource(BUNDLED_SAMPLE, limit, label="bundled:fashion_mnist_test16.npz")
    if os.path.isdir(path):
        return FolderSource(path, limit)
    if path.endswith((".npz", ".npy")):
        return ArraySource(path, limit, key=data_cfg.array_key)
    if not os.path.exists(path):
        raise SourceError(f"data.path {path!r}: no such file or folder")
    raise SourceError(f"data.path {path!r}: want a folder of images or an .npz/.npy file")
