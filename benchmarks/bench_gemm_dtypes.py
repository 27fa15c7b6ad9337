"""XLA's batched GEMM throughput on this machine, float32 against bfloat16 inputs with float32
accumulation, at the shapes of the tuning step's largest contractions (JSON on stdout).

  [8, 4096, 1152] x [8, 1152, 128]  G's 64x64 3x3 convs, 128 ch, per-image weights (8 images)
  [8, 4096, 576] x [8, 576, 64]     the same with 64 channels
  [8, 1024, 4608] x [8, 4608, 512]  LPIPS-VGG's 512-channel layers
  [8, 32768, 1152] x [8, 1152, 128] 8 images' patches against a shared kernel (LPIPS, 128 ch)

Usage: python benchmarks/bench_gemm_dtypes.py [--reps 5] [--out FILE]
"""

import argparse
import json
import os

import jax
import jax.numpy as jnp
from bench_vs_torch import timed

from ganinv_jax import atomic

SHAPES = ((4096, 1152, 128), (4096, 576, 64), (1024, 4608, 512), (32768, 1152, 128))


def gflops_per_s(dtype, m: int, k: int, n: int, reps: int, batch: int = 8) -> float:
    a = jnp.ones((batch, m, k), dtype)
    b = jnp.ones((batch, k, n), dtype)
    f = jax.jit(lambda a, b: jnp.einsum("bmk,bkn->bmn", a, b, preferred_element_type=jnp.float32))
    f(a, b).block_until_ready()
    # the fastest counts: the cores are shared
    best = min(timed(lambda: f(a, b).block_until_ready()) for _ in range(reps))
    return 2 * batch * m * k * n / best / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    rows = []
    for m, k, n in SHAPES:
        f32 = gflops_per_s(jnp.float32, m, k, n, a.reps)
        bf16 = gflops_per_s(jnp.bfloat16, m, k, n, a.reps)
        rows.append(dict(m=m, k=k, n=n, float32_gflops=f32, bf16_gflops=bf16, speedup=bf16 / f32))
    report = dict(
        benchmark="bench_gemm_dtypes",
        backend=jax.default_backend(),
        jax_version=jax.__version__,
        loadavg_before=os.getloadavg(),
        rows=rows,
    )
    print(json.dumps(report, indent=1))
    if a.out:
        atomic.write_json(a.out, report)


if __name__ == "__main__":
    main()
