"""Tiled inversion of 64x64 Fashion-MNIST mosaics with the 32x32 default model (issue 14, paper
004's tiling) through the invert job, against inverting the same mosaics downsampled to 32 px.

    python benchmarks/tiled_mosaic.py --workdir /work/runs/tiled --n 16 \
        --out benchmarks/results/tiled_mosaic_16fm

Mosaic i = the Fashion-MNIST TEST images 4i..4i+3 (32 px, padded as the model's training data)
in a 2x2 grid. Two runs of `python -m ganinv_jax.main --config=configs/stylegan2.py` (in-process,
`invert.run`) with `--config.method` / `--config.steps`:
  tiled     --config.tile=2: every mosaic as 4 tiles of 32 px -> stitched/ (64 px metrics);
  resized   no tiling: each mosaic resized to 32 px (the job's `crop` preprocessing, LANCZOS), its
            reconstruction upsampled back to 64 px (bicubic) and scored against the mosaic.
Metrics: the invert job's `image_metrics` at 64 px (MSE, PSNR on [0, 1], SSIM, MS-SSIM, LPIPS).
"""

from __future__ import annotations

import argparse
import json
import os

import jax.numpy as jnp
import numpy as np
from PIL import Image
from repo_configs import get_config

from ganinv_jax import atomic, losses
from ganinv_jax.data import fashion_mnist
from ganinv_jax.data import images as image_io
from ganinv_jax.jobs import invert

METRICS = ("mse", "psnr", "ssim", "ms_ssim", "lpips")


def job_config(**overrides):
    config = get_config("stylegan2")
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def mosaics(n: int) -> np.ndarray:
    """uint8 [n, 64, 64, 3]: test images 4i..4i+3 as a 2x2 grid."""
    test = fashion_mnist.load_fashion_mnist("test", resolution=32, channels=3)[: 4 * n]
    return np.stack([image_io.from_tiles(test[4 * i : 4 * i + 4]) for i in range(n)])


def upsample(png_path: str, size: int) -> np.ndarray:
    im = Image.open(png_path).convert("RGB").resize((size, size), Image.BICUBIC)
    return image_io.from_uint8(np.asarray(im)[None])[0]


def mean_metrics(lpips, x: np.ndarray, y: np.ndarray) -> dict:
    m = invert.image_metrics(lpips, jnp.asarray(x), jnp.asarray(y), win=11)
    return {k: float(np.mean(m[k])) for k in METRICS}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--method", default="latent_opt")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)
    os.makedirs(a.workdir, exist_ok=True)
    big = mosaics(a.n)
    src = os.path.join(a.workdir, "mosaics.npy")
    np.save(src, big)
    common = {"data.path": src, "method": a.method, "steps": a.steps}
    tiled_wd = os.path.join(a.workdir, "tiled")
    tiled = invert.run(job_config(tile=2, **common), tiled_wd)
    resized_wd = os.path.join(a.workdir, "resized")
    resized = invert.run(job_config(**common), resized_wd)

    lpips = losses.load_lpips_params("vgg")
    x = image_io.from_uint8(big)
    stitched = np.stack(
        [upsample(os.path.join(tiled_wd, "stitched", f"{i:08d}.png"), 64) for i in range(a.n)]
    )
    up = np.stack(
        [upsample(os.path.join(resized_wd, "recon", f"{i:08d}.png"), 64) for i in range(a.n)]
    )
    report = dict(
        n_mosaics=a.n,
        method=a.method,
        steps=a.steps,
        load_average=os.getloadavg(),
        tiled=mean_metrics(lpips, x, stitched)
        | dict(job_stitched_means={k: v["mean"] for k, v in tiled["stitched"]["metrics"].items()}),
        resized=mean_metrics(lpips, x, up) | dict(seconds=resized["aggregates"]["seconds"]["mean"]),
        tiled_seconds_per_tile=tiled["aggregates"]["seconds"]["mean"],
    )
    if a.out:
        atomic.write_json(a.out + ".json", report, indent=1)
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
