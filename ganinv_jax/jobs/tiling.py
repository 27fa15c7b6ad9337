"""Tiled inversion in the invert job (InvGAN, paper 004 Sec. 4.3): an (N·m)x(N·m) image is
inverted as N² independent latents of an m x m generator, then stitched back.

`--config.tile=N` (N >= 2; 0 or 1: off) wraps the job's source in a `TiledSource`: every base
image becomes N² items (its row-major tiles), so chunking, sharding, resume, metrics.csv and
latents.npz work on tiles unchanged. After the last chunk `stitch` puts each image's tile
reconstructions (recon/*.png) back together in `stitched/` with whole-image metrics against the
N·m target. The paper notes the model never learns to join neighbouring tiles: seams are
expected (train with `data.patch` so the model at least sees tile statistics).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from typing import Callable, Optional

import numpy as np

from ganinv_jax import atomic
from ganinv_jax.data import images as image_io
from ganinv_jax.errors import UserError
from ganinv_jax.jobs import records
from ganinv_jax.jobs.sources import Preprocess, Source

MAX_TILE = 64  # 64² latents per image; more is a typo, not a plan
STITCHED = "stitched"
STITCHED_COLUMNS = ("id", "path") + records.METRIC_KEYS
SKIPPED_COLUMNS = ("id", "path", "reason")


class TileError(UserError, ValueError):
    """config.tile is unusable; reported as one line before any work."""


def check_tile(n, save_png: bool = True) -> int:
    """config.tile -> N (0 = off; 1 is off too: one tile is the image). Stitching reads the
    recon PNGs, so tiling needs `output.save_png`."""
    try:
        n = int(n)
    except (TypeError, ValueError):
        raise TileError(f"config.tile={n!r}: want an integer (0 = off, N >= 2 tiles)") from None
    if not 0 <= n <= MAX_TILE:
        raise TileError(
            f"config.tile={n}: want 0 (off) or N in 2..{MAX_TILE} (an N·m px image inverted "
            "as N x N tiles of the generator's m px)"
        )
    if n >= 2 and not save_png:
        raise TileError(
            f"config.tile={n} stitches the tiles from recon/*.png: keep output.save_png=True"
        )
    return n if n >= 2 else 0


class _TilePaths(Sequence):
    """`{base path}#tile{k}` for every tile, computed on access (a million-image listing with
    8 x 8 tiles would otherwise hold 64M strings)."""

    def __init__(self, base_paths: Sequence[str], per_image: int):
        self.base_paths, self.per_image = base_paths, per_image

    def __len__(self) -> int:
        return len(self.base_paths) * self.per_image

    def __getitem__(self, t):
        if isinstance(t, slice):
            return [self[i] for i in range(*t.indices(len(self)))]
        if not -len(self) <= t < len(self):
            raise IndexError(t)
        image, k = divmod(t % len(self), self.per_image)
        return f"{self.base_paths[image]}#tile{k}"


class TiledSource(Source):
    """A `Source` whose item t is tile t % N² (row-major) of base image t // N²."""

    kind = "tiled"

    def __init__(self, base: Source, n: int):
        if check_tile(n) < 2:
            raise TileError(f"TiledSource needs N >= 2 tiles per side, got {n}")
        self.base, self.n = base, int(n)
        self.per_image = self.n * self.n
        self.paths = _TilePaths(base.paths, self.per_image)

    def __len__(self) -> int:
        return len(self.base) * self.per_image

    def describe(self) -> str:
        return f"{self.base.describe()}|tile:{self.n}"

    def fingerprint(self) -> str:
        """The base listing's fingerprint and N (hashing every tile path would cost N² times
        the base's hashing for the same information)."""
        h = hashlib.sha256(f"{self.describe()}\0{self.base.fingerprint()}".encode())
        return h.hexdigest()[:16]

    def image_id(self, t: int) -> int:
        """The base image of tile item t."""
        return int(t) // self.per_image

    def tile_index(self, t: int) -> int:
        """Row-major position of tile item t in its image (row k // N, column k % N)."""
        return int(t) % self.per_image

    def tile_ids(self, image_id: int) -> range:
        """The N² item ids of one base image."""
        return range(image_id * self.per_image, (image_id + 1) * self.per_image)

    def name(self, t: int) -> str:
        return self.paths[t]

    def image_pre(self, pre: Preprocess) -> Preprocess:
        """G's Preprocess (m px) -> the base images' (N·m px)."""
        return dataclasses.replace(pre, resolution=self.n * pre.resolution)

    def load_prepared(self, i: int, pre: Preprocess) -> tuple[Optional[np.ndarray], str]:
        return self.load_many([i], pre, workers=1)[0]

    def load_many(self, ids: Sequence[int], pre: Preprocess, workers: int = 4):
        """[(tile float32 [m, m, C], '') or (None, reason)] for tile ids, in order. Each base
        image is decoded once (at N·m px), whatever number of its tiles `ids` holds; a bad
        image fails all its tiles with its reason."""
        ids = [int(t) for t in ids]
        wanted = sorted({self.image_id(t) for t in ids})
        loaded = self.base.load_many(wanted, self.image_pre(pre), workers) if wanted else []
        tiles = {}
        for image, (img, reason) in zip(wanted, loaded):
            if img is not None:
                try:
                    tiles[image] = image_io.to_tiles(img, pre.resolution)
                    continue
                except ValueError as e:
                    reason = f"internal: {e}"
            tiles[image] = reason
        out = []
        for t in ids:
            got, k = tiles[self.image_id(t)], self.tile_index(t)
            if isinstance(got, str):
                out.append((None, f"tile {k} of image {self.image_id(t)}: {got}"))
            else:
                out.append((np.asarray(got[k], np.float32), ""))
        return out


def maybe_tiled(source: Source, n) -> Source:
    """`source` itself when config.tile is off, else its `TiledSource`."""
    n = check_tile(n)
    return TiledSource(source, n) if n else source


# ----------------------------------------------------------------------------- stitching

MetricsFn = Callable[[np.ndarray, np.ndarray], dict]


def default_metrics_fn(lpips_params, lpips_net: str, resolution: int) -> MetricsFn:
    """The invert job's per-image metrics (`invert.image_metrics`: MSE/PSNR/SSIM/MS-SSIM/LPIPS)
    at the stitched resolution, as host arrays."""
    import jax
    import jax.numpy as jnp

    from ganinv_jax.jobs import invert  # here: invert imports this module

    win = min(11, resolution - (1 - resolution % 2))

    def fn(images, recon):
        out = invert.image_metrics(
            lpips_params, jnp.asarray(images), jnp.asarray(recon), win=win, net=lpips_net
        )
        return jax.device_get(out)

    return fn


def _failure_reasons(workdir: str) -> dict[int, str]:
    """id -> reason of the tiles in workdir/failures.csv (none if there is no such file)."""
    path = os.path.join(workdir, "failures.csv")
    if not os.path.isfile(path):
        return {}
    return {int(r["id"]): r["reason"] for r in records.read_csv(path)}


def missing_tile_reason(
    source: TiledSource, workdir: str, image_id: int, failures: dict[int, str]
) -> str:
    """'' when every tile of the image has a recon PNG, else why it cannot be stitched."""
    missing = [
        t
        for t in source.tile_ids(image_id)
        if not os.path.isfile(os.path.join(workdir, "recon", f"{t:08d}.png"))
    ]
    if not missing:
        return ""
    t = missing[0]
    why = failures.get(t, "not reconstructed (no recon PNG: not finished yet?)")
    return (
        f"{len(missing)} of {source.per_image} tiles missing; "
        f"tile {source.tile_index(t)} (id {t}): {why}"
    )


def read_tiles(source: TiledSource, workdir: str, image_id: int, pre: Preprocess) -> np.ndarray:
    """The image's N² recon PNGs as float32 [N², m, m, C] (ItemError if one does not decode)."""
    return np.stack(
        [
            image_io.decode_file(os.path.join(workdir, "recon", f"{t:08d}.png"), pre)
            for t in source.tile_ids(image_id)
        ]
    )


def _pad(batch: list, size: int) -> np.ndarray:
    """Stack and pad with copies of the last row to `size` rows: one compiled metrics shape."""
    x = np.stack(batch)
    return np.concatenate([x, np.repeat(x[-1:], size - len(x), axis=0)]) if len(x) < size else x


def stitch(
    workdir: str,
    source: TiledSource,
    pre: Preprocess,
    lpips_params=None,
    lpips_net: str = "vgg",
    *,
    metrics_fn: Optional[MetricsFn] = None,
    grid_pairs: int = 8,
    batch_size: int = 16,
) -> dict:
    """Stitch every image whose N² tiles all have a recon PNG into stitched/{id:08d}.png
    (N·m px) and measure it against its N·m target (`metrics_fn(targets, recons)` -> {metric:
    [B]}, default: the job's `image_metrics` with `lpips_params`). Writes stitched/metrics.csv,
    stitched/skipped.csv (images with a missing or failed tile, or whose target no longer
    loads: id, path, reason), stitched/grid.png (target | stitched, the first `grid_pairs`)
    and stitched/summary.json, which it returns. `pre` is G's Preprocess (m px).

    The metrics are those of the stitched 8-bit PNG (what a user gets), so they differ from
    the mean of the tiles' metrics.csv rows by the 8-bit rounding and by whole-image SSIM and
    LPIPS windows that cross the seams. Process 0 only, after the last chunk; every file is
    written atomically."""
    m = pre.resolution
    big = source.image_pre(pre)
    tile_pre = dataclasses.replace(pre, align=None)  # recon PNGs are G's output: no alignment
    if metrics_fn is None:
        metrics_fn = default_metrics_fn(lpips_params, lpips_net, big.resolution)
    out = os.path.join(workdir, STITCHED)
    os.makedirs(out, exist_ok=True)
    failures = _failure_reasons(workdir)
    names = source.base.paths
    skipped, rows, pairs = [], [], []
    values = {k: [] for k in records.METRIC_KEYS}

    ready = []
    for image in range(len(source.base)):
        why = missing_tile_reason(source, workdir, image, failures)
        if why:
            skipped.append([str(image), names[image], why])
        else:
            ready.append(image)

    for start in range(0, len(ready), batch_size):
        ids, targets, recons = [], [], []
        batch = ready[start : start + batch_size]
        for image, (target, reason) in zip(batch, source.base.load_many(batch, big)):
            if target is None:
                skipped.append([str(image), names[image], f"target: {reason}"])
                continue
            try:
                recon = image_io.from_tiles(read_tiles(source, workdir, image, tile_pre))
            except image_io.ItemError as e:
                skipped.append([str(image), names[image], f"recon PNG of a tile: {e}"])
                continue
            image_io.save_png(os.path.join(out, f"{image:08d}.png"), recon)
            ids.append(image)
            targets.append(target)
            recons.append(recon)
            if len(pairs) < 2 * grid_pairs:
                pairs += [target, recon]
        if not ids:
            continue
        mets = metrics_fn(_pad(targets, batch_size), _pad(recons, batch_size))
        for j, image in enumerate(ids):
            row = [float(np.asarray(mets[k])[j]) for k in records.METRIC_KEYS]
            for k, v in zip(records.METRIC_KEYS, row):
                values[k].append(v)
            rows.append([str(image), names[image]] + [records.fmt(v) for v in row])

    skipped.sort(key=lambda r: int(r[0]))
    records.write_csv_atomic(os.path.join(out, "metrics.csv"), STITCHED_COLUMNS, rows)
    records.write_csv_atomic(os.path.join(out, "skipped.csv"), SKIPPED_COLUMNS, skipped)
    if pairs:
        ncols = min(8, len(pairs))
        grid = image_io.make_grid(
            np.stack(pairs), ncols=ncols, col_labels=["target", "stitched"] * (ncols // 2)
        )
        image_io.save_png(os.path.join(out, "grid.png"), grid)
    summary = stitch_summary(source, m, values, len(rows), skipped)
    atomic.write_json(os.path.join(out, "summary.json"), summary)
    return summary


def stitch_summary(source: TiledSource, m: int, values: dict, stitched: int, skipped: list) -> dict:
    """summary.json of stitched/: counts, sizes and `summarize` statistics of each metric."""
    from ganinv_jax.losses.metrics import summarize

    return {
        "tile": source.n,
        "tile_resolution": m,
        "resolution": source.n * m,
        "source": source.describe(),
        "images": len(source.base),
        "stitched": stitched,
        "skipped": len(skipped),
        "complete": stitched == len(source.base),
        "skipped_examples": skipped[:5],
        "metrics": {
            k: summarize(v) if np.isfinite(np.asarray(v, np.float64)).any() else None
            for k, v in values.items()
        },
    }
