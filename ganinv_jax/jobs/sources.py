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
import hashlib
import importlib
import os
from typing import Any, Callable, Optional, Sequence

import numpy as np

# Decoding and preprocessing live in the one image I/O layer; re-exported for the job's callers.
from ganinv_jax.data.images import (
    IMAGE_EXTS,
    ItemError,
    Preprocess,
    decode_file,  # noqa: F401
    list_folder,
    prepare_array,
)
from ganinv_jax.errors import UserError

BUNDLED_SAMPLE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "assets",
    "samples",
    "fashion_mnist_test16.npz",
)


class SourceError(UserError, ValueError):
    """The input as a whole is unusable (missing, wrong shape, unknown dataset): fail fast."""


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
            raise ItemError(
                f"not an image file extension ({os.path.splitext(rel)[1] or 'none'}; "
                f"supported: {' '.join(IMAGE_EXTS)})"
            )
        return decode_file(os.path.join(self.folder, rel), pre)


def _to_nhwc(arr: np.ndarray, where: str) -> np.ndarray:
    if arr.ndim == 3:
        return arr[..., None]
    if arr.ndim != 4:
        raise SourceError(f"{where}: expected images [N, H, W(, C)], got shape {arr.shape}")
    if arr.shape[-1] not in (1, 3, 4) and arr.shape[1] in (1, 3, 4):
        return np.transpose(arr, (0, 2, 3, 1))  # NCHW (e.g. saved from PyTorch)
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
                    pick = key or (
                        "images" if "images" in keys else (keys[0] if len(keys) == 1 else "")
                    )
                    if pick not in keys:
                        raise SourceError(
                            f"data.path {path!r}: say which array with "
                            f"--config.data.array_key (one of {keys})"
                        )
                    arr = z[pick]
        except SourceError:
            raise
        except Exception as e:  # noqa: BLE001
            raise SourceError(
                f"data.path {path!r}: cannot read array file ({type(e).__name__}: {e})"
            ) from None
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

    def __init__(
        self, name: str, split: str, limit: int = 0, data_dir: str = "", image_key: str = "image"
    ):
        self.name, self.split, self.image_key = name, split, image_key
        self._array = None
        self._builder = None
        import tensorflow_datasets as tfds  # heavy: only when asked for

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


def preprocess_for(data_cfg, g_cfg) -> Preprocess:
    """How `config.data`'s images become images of the generator `g_cfg` (its resolution and
    channels; a config or a `pretrained.GAN`): the one place the invert job and the edit task
    build their Preprocess."""
    return Preprocess(
        resolution=g_cfg.resolution,
        channels=g_cfg.img_channels,
        resize_mode=data_cfg.resize_mode,
        background=int(data_cfg.background),
        max_pixels=int(data_cfg.max_pixels),
        align=resolve_align(data_cfg.align),
    )


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
