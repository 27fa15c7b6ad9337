"""Train-step throughput of the InvGAN trainer on this machine's devices -> one JSON line.

    python benchmarks/bench_train.py                       # the default config
    python benchmarks/bench_train.py --config_arg=tiny --steps=20
    python benchmarks/bench_train.py --config_arg=dcgan

Measures the jitted, sharded `train_step` (compile excluded, `block_until_ready` on every
step's metrics, like the real loop's NaN guard), with real Fashion-MNIST batches if installed
and uniform noise otherwise. Reports the median of `--repeats` timed windows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs.invgan_fashion_mnist import get_config  # noqa: E402
from ganinv_jax import sharding as shd  # noqa: E402
from ganinv_jax.training import invgan  # noqa: E402
from ganinv_jax.training import state as state_lib


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config_arg", default="")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch_size", type=int, default=0)
    args = ap.parse_args()
    c = get_config(args.config_arg)
    if args.batch_size:
        c.batch_size = args.batch_size
    nets, mesh, init_fn = invgan.setup(c)
    _, sh = state_lib.abstract_state(init_fn, jax.random.key(0), mesh)
    st = state_lib.init_sharded(init_fn, jax.random.key(0), sh)
    step = invgan.jit_train_step(c, nets, sh, mesh)
    try:
        src = invgan.load_train_source(c)
        batch = lambda s: src.local_batch(c.seed, s, c.batch_size)
        data = "fashion_mnist"
    except Exception:  # noqa: BLE001 -- benchmark still runs without the dataset
        r, ch = c.data.resolution, c.data.channels
        batch = lambda s: (
            np.random.default_rng(s).uniform(-1, 1, (c.batch_size, r, r, ch)).astype(np.float32)
        )
        data = "uniform_noise"
    with jax.set_mesh(mesh):
        t = time.perf_counter()
        st, m = step(st, shd.host_to_global(batch(0), mesh))
        jax.block_until_ready(m)
        compile_s = time.perf_counter() - t
        times, s = [], 1
        for _ in range(args.repeats):
            t = time.perf_counter()
            for _ in range(args.steps):
                st, m = step(st, shd.host_to_global(batch(s), mesh))
                jax.block_until_ready(m)
                s += 1
            times.append((time.perf_counter() - t) / args.steps)
    sec = float(np.median(times))
    print(
        json.dumps(
            {
                "benchmark": "invgan_train_step",
                "config": f"invgan_fashion_mnist:{args.config_arg}",
                "backbone": c.backbone,
                "variant": c.variant,
                "resolution": c.data.resolution,
                "batch_size": c.batch_size,
                "devices": mesh.size,
                "platform": jax.default_backend(),
                "cpu": platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count(),
                "load_avg_1m": os.getloadavg()[0],
                "data": data,
                "compile_s": round(compile_s, 2),
                "sec_per_step": round(sec, 4),
                "steps_per_sec": round(1.0 / sec, 3),
                "examples_per_sec": round(c.batch_size / sec, 1),
                "timed_steps": args.steps * args.repeats,
            }
        )
    )


if __name__ == "__main__":
    main()
