"""What LPIPS costs inside an inversion step, three ways (JSON on stdout).

    python benchmarks/bench_lpips_target.py                    # latent_opt, pti, gmm on g32
    python benchmarks/bench_lpips_target.py --methods pti --model g64 --k 2 --calls 5

For each method, one image (the per-image loop, 'map' at batch 1), the engine's K-step call
compiled three times in ONE process and timed round-robin (other jobs on the host slow all three
alike):
  * concat: LPIPS as the `losses.LPIPS` module computes it, x and y concatenated into one 2N batch
    (the inversion methods' implementation before target caching);
  * split: x and y through the backbone separately (`cache_target_features=False`): y's forward
    is recomputed every step;
  * cached: the target's features computed once in `init` and kept in the state (the default).
Reported: ms per image-step (median call), and each variant's speed-up over concat. Random
weights of the `bench_inversion.py` models (speed does not depend on training), real LPIPS-VGG.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="latent_opt,pti,gmm")
    ap.add_argument("--model", default="g32")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--calls", type=int, default=7)
    ap.add_argument("--out", default="")
    a = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np
    from bench_inversion import _random_setup

    from ganinv_jax import losses, sharding
    from ganinv_jax.inversion import base, engine

    def concat_perceptual_to_image(frozen, x, target, cached, kind):
        """The pre-cache implementation: one LPIPS module call on concat([x, y])."""
        x, y = base.to_rgb(x), base.to_rgb(target)
        return losses.LPIPS(frozen.lpips_net).apply({"params": frozen.lpips}, x, y)

    report = dict(
        model=a.model,
        k=a.k,
        calls=a.calls,
        backend=jax.default_backend(),
        load_avg_at_start=os.getloadavg()[0],
        methods={},
    )
    split_fn = base.perceptual_to_image
    for method in a.methods.split(","):
        cfg, fr, m, c = _random_setup(a.model, method, lpips=True)
        mesh = sharding.make_mesh(1, explicit=True)
        data, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
        fr = jax.device_put(fr, repl)
        n = jax.device_put(jnp.asarray(a.k, jnp.int32), repl)
        img = jax.random.uniform(
            jax.random.key(2), (1, cfg.resolution, cfg.resolution, 3), minval=-1, maxval=1
        )
        lat = base.mean_latent(fr)[None]
        runs = {}
        for variant in ("concat", "split", "cached"):
            cv = c.copy_and_resolve_references()
            cv.cache_target_features = variant == "cached"
            base.perceptual_to_image = (
                concat_perceptual_to_image if variant == "concat" else split_fn
            )
            try:  # __wrapped__: bypass the engine's compile cache (same cfg, other code)
                init, run, _ = engine._compiled.__wrapped__(
                    m, engine._freeze_cfg(cv), "map", 1, a.k, mesh, ()
                )
                carry = init(
                    *jax.device_put(
                        (jax.random.key(0)[None], img, lat, jnp.ones((1,), bool)), data
                    ),
                    fr,
                )
                t0 = time.perf_counter()
                compiled = run.lower(carry, n, fr).compile()
                t_compile = time.perf_counter() - t0
            finally:
                base.perceptual_to_image = split_fn
            carry = jax.block_until_ready(compiled(carry, n, fr))  # warm-up
            runs[variant] = dict(fn=compiled, carry=carry, times=[], compile_s=t_compile)
        for _ in range(a.calls):
            for r in runs.values():
                t0 = time.perf_counter()
                r["carry"] = jax.block_until_ready(r["fn"](r["carry"], n, fr))
                r["times"].append(time.perf_counter() - t0)
        ms = {v: 1e3 * float(np.median(r["times"])) / a.k for v, r in runs.items()}
        report["methods"][method] = {
            v: dict(
                ms_per_image_step=round(ms[v], 2),
                speedup_vs_concat=round(ms["concat"] / ms[v], 3),
                compile_s=round(runs[v]["compile_s"], 1),
            )
            for v in runs
        }
        print(method, report["methods"][method], flush=True)
    report["load_avg_at_end"] = os.getloadavg()[0]
    text = json.dumps(report, indent=1)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
