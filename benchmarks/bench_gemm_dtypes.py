"""XLA's batched GEMM throughput on this machine, float32 against bfloat16 inputs with float32
accumulation, at the shapes of the tuning step's largest contractions (JSON on stdout).

  [8, 4096, 1152] x [8, 1152, 128]  G's 64x64 3x3 convs, 128 ch, per-image weights (8 images)
  [8, 4096, 576] x [8, 576, 64]     the same with 64 channels
  [8, 1024, 4608] x [8, 4608, 512]  LPIPS-VGG's 512-channel layers
  [8, 32768, 1152] x [8, 1152, 128] 8 images' patches against a shared kernel (LPIPS, 128 ch)

Each row: float32, bf16 operands with a float32 result (what `ops.conv`'s bf16 mode runs) and
bf16 operands with a bf16 result (what plain `x.astype(bf16) @ w.astype(bf16)` runs). `conv_rows`:
XLA's native 3x3 conv (batch 8, same padding) in float32 and with bf16 operands, float32 result.

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
CONV_SHAPES = ((64, 64), (32, 128), (16, 256))  # (height = width, channels in = out)


def _best_s(f, *args, reps: int) -> float:
    f(*args).block_until_ready()
    # the fastest counts: the cores are shared
    return min(timed(lambda: f(*args).block_until_ready()) for _ in range(reps))


def gflops_per_s(dtype, m: int, k: int, n: int, reps: int, out=jnp.float32, batch: int = 8):
    a = jnp.ones((batch, m, k), dtype)
    b = jnp.ones((batch, k, n), dtype)
    f = jax.jit(lambda a, b: jnp.einsum("bmk,bkn->bmn", a, b, preferred_element_type=out))
    return 2 * batch * m * k * n / _best_s(f, a, b, reps=reps) / 1e9


def conv_gflops_per_s(dtype, hw: int, c: int, reps: int, batch: int = 8) -> float:
    x = jnp.ones((batch, hw, hw, c), dtype)
    w = jnp.ones((3, 3, c, c), dtype)
    f = jax.jit(
        lambda x, w: jax.lax.conv_general_dilated(
            x,
            w,
            (1, 1),
            ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            preferred_element_type=jnp.float32,
        )
    )
    return 2 * batch * hw * hw * 9 * c * c / _best_s(f, x, w, reps=reps) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    rows = []
    for m, k, n in SHAPES:
        f32 = gflops_per_s(jnp.float32, m, k, n, a.reps)
        bf16 = gflops_per_s(jnp.bfloat16, m, k, n, a.reps)
        bf16_out = gflops_per_s(jnp.bfloat16, m, k, n, a.reps, out=jnp.bfloat16)
        rows.append(
            dict(
                m=m,
                k=k,
                n=n,
                float32_gflops=f32,
                bf16_gflops=bf16,
                speedup=bf16 / f32,
                bf16_result_gflops=bf16_out,
                bf16_result_speedup=bf16_out / f32,
            )
        )
    conv_rows = []
    for hw, c in CONV_SHAPES:
        f32 = conv_gflops_per_s(jnp.float32, hw, c, a.reps)
        bf16 = conv_gflops_per_s(jnp.bfloat16, hw, c, a.reps)
        conv_rows.append(dict(hw=hw, channels=c, float32_gflops=f32, bf16_gflops=bf16))
    report = dict(
        benchmark="bench_gemm_dtypes",
        backend=jax.default_backend(),
        jax_version=jax.__version__,
        loadavg_before=os.getloadavg(),
        rows=rows,
        conv_rows=conv_rows,
    )
    print(json.dumps(report, indent=1))
    if a.out:
        atomic.write_json(a.out, report)


if __name__ == "__main__":
    main()
