"""Inversion engine throughput per method x batch x strategy (JSON on stdout).

    python benchmarks/bench_inversion.py                       # everything (long on 2 CPU cores)
    python benchmarks/bench_inversion.py --models g32 --methods pti,gmm --batches 1,8 \
        --strategies map,vmap --out /tmp/bench.json

For every (model, method, strategy, batch) a fresh subprocess (so peak RSS is its own) builds a
random-weight StyleGAN2 G/D, compiles the engine's K-step call ahead of time (compile time), runs
one warm-up call, then times `--calls` calls of K steps: throughput = B * K * calls / seconds
(images x iterations / s, from the median call; `best_` from the fastest) and per CPU-second
of this process (`img_iters_per_cpu_s`: the work per image-iteration, robust when other jobs
share the cores; it does not credit multi-threading). Memory: the process's peak RSS, XLA's own
buffer sizes of the compiled
call (arguments + temporaries, per image), and the marginal RSS per image across batch sizes.
The per-image loop baseline is batch 1 under 'map' (one image at a time, same compiled step).

Models: 'g32' = the default model's architecture (32x32x3, channels 64/64/32/32, w_dim 64;
random weights: speed does not depend on training), 'g64' = 64x64x3 with 128 channels at every
resolution, w_dim 128. Random weights, single device. The perceptual term is the 'pooled_l2'
stand-in unless --lpips (LPIPS-VGG adds a fixed per-image cost that does not depend on the
strategy: benchmarks/bench_lpips.py measures it).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

MODELS = {
    "g32": dict(
        resolution=32,
        channels=(64, 64, 32, 32),
        z_dim=64,
        w_dim=64,
        img_channels=3,
        mapping_layers=2,
    ),
    "g64": dict(
        resolution=64, channels=(128,) * 5, z_dim=128, w_dim=128, img_channels=3, mapping_layers=2
    ),
}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _random_setup(model: str, method: str, lpips: bool):
    """A random-weight G/D of `MODELS[model]`, its Frozen, and the method with a config whose
    schedules stay far from their end and which never stops early (pure throughput)."""
    import jax
    import jax.numpy as jnp

    from ganinv_jax import inversion as inv
    from ganinv_jax.inversion import base
    from ganinv_jax.models import stylegan2 as sg2

    cfg = sg2.StyleGAN2Config(**MODELS[model])
    gv = sg2.Generator(cfg).init(jax.random.key(0), jnp.zeros((1, cfg.z_dim)))
    dv = sg2.Discriminator(cfg).init(
        jax.random.key(1), jnp.zeros((1, cfg.resolution, cfg.resolution, 3))
    )
    fr = base.make_frozen(cfg, gv, d_vars=dv, lpips="vgg" if lpips else None, w_stats_samples=1000)
    m = inv.METHODS[method]
    c = m.default_config()
    c.num_steps = 10**6
    if "perceptual" in c:
        c.perceptual = "lpips" if lpips else "pooled_l2"
    if method == "clone":
        c.eps = -1.0
    if method == "gmm":
        # θ' = θ0 - M(g) starts as a unit gradient step; on RANDOM weights (no training) g is
        # large enough that this step overflows (every image 'failed' at 64²). A small out_scale
        # keeps the tuned G finite with identical compute.
        c.out_scale = 1e-3
    return cfg, fr, m, c


def run_one(
    model: str, method: str, strategy: str, batch: int, k: int, calls: int, lpips: bool, chunk: int
) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ganinv_jax import sharding
    from ganinv_jax.inversion import base, engine

    cfg, fr, m, c = _random_setup(model, method, lpips)
    imgs = jax.random.uniform(
        jax.random.key(2), (batch, cfg.resolution, cfg.resolution, 3), minval=-1, maxval=1
    )
    rss0 = _rss_mb()
    mesh = sharding.make_mesh(1, explicit=True)
    data, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    init, run, res = engine._compiled(m, engine._freeze_cfg(c), strategy, chunk, k, mesh, ())
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(batch))
    lat = jnp.broadcast_to(base.mean_latent(fr), (batch, cfg.num_ws, cfg.w_dim))
    fr = jax.device_put(fr, repl)
    t0 = time.perf_counter()
    active, max_drift = jnp.ones((batch,), bool), jnp.zeros((batch,))  # no drift budget
    carry = init(*jax.device_put((keys, imgs, lat, active, max_drift), data), fr)
    jax.block_until_ready(carry)
    t_init = time.perf_counter() - t0
    n = jax.device_put(jnp.asarray(k, jnp.int32), repl)
    t0 = time.perf_counter()
    compiled = run.lower(carry, n, fr).compile()
    t_compile = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    carry = jax.block_until_ready(compiled(carry, n, fr))  # warm-up
    iters0 = int(np.asarray(carry["iters"]).sum())
    times = []
    c0 = time.process_time()
    for _ in range(calls):  # per-call times: the median is robust to other jobs on the host
        t0 = time.perf_counter()
        carry = jax.block_until_ready(compiled(carry, n, fr))
        times.append(time.perf_counter() - t0)
    cpu = time.process_time() - c0  # CPU-seconds of all our threads: the work done
    dt = float(np.median(times)) * calls
    # image-iterations actually done: an image whose step went non-finite is frozen by the engine
    # (`failed`) and must not be counted as work
    done = int(np.asarray(carry["iters"]).sum()) - iters0
    failed = int(np.asarray(carry["failed"]).sum())
    xla_mb = None
    if mem is not None:
        xla_mb = (mem.argument_size_in_bytes + mem.temp_size_in_bytes) / 2**20
    return dict(
        model=model,
        method=method,
        strategy=strategy,
        batch=batch,
        k=k,
        calls=calls,
        img_iters_per_s=done / dt,
        s_per_call=dt / calls,
        best_img_iters_per_s=done / calls / min(times),
        img_iters_per_cpu_s=done / cpu,
        failed_images=failed,
        compile_s=t_compile,
        init_s=t_init,
        peak_rss_mb=_rss_mb(),
        rss_before_compile_mb=rss0,
        xla_mb_per_image=None if xla_mb is None else xla_mb / batch,
        backend=jax.default_backend(),
        lpips=lpips,
    )


def run_paired(
    model: str, method: str, batch: int, strategies, k: int, calls: int, lpips: bool, chunk: int
) -> dict:
    """Per-image loop (map, batch 1) and every strategy at `batch`, compiled in ONE process and
    timed round-robin, so other jobs on the host slow all of them alike: the fair comparison
    behind the 'auto' rule on a shared machine."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ganinv_jax import sharding
    from ganinv_jax.inversion import base, engine

    cfg, fr, m, c = _random_setup(model, method, lpips)
    mesh = sharding.make_mesh(1, explicit=True)
    data, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    fr = jax.device_put(fr, repl)
    n = jax.device_put(jnp.asarray(k, jnp.int32), repl)
    runs = {}
    for strategy, b in [("map", 1)] + [(s, batch) for s in strategies]:
        init, run, _ = engine._compiled(m, engine._freeze_cfg(c), strategy, chunk, k, mesh, ())
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(b))
        imgs = jax.random.uniform(
            jax.random.key(2), (b, cfg.resolution, cfg.resolution, 3), minval=-1, maxval=1
        )
        lat = jnp.broadcast_to(base.mean_latent(fr), (b, cfg.num_ws, cfg.w_dim))
        carry = init(*jax.device_put((keys, imgs, lat, jnp.ones((b,), bool)), data), fr)
        t0 = time.perf_counter()
        compiled = run.lower(carry, n, fr).compile()
        t_compile = time.perf_counter() - t0
        carry = jax.block_until_ready(compiled(carry, n, fr))
        name = "loop" if b == 1 else strategy
        runs[name] = dict(fn=compiled, carry=carry, batch=b, times=[], compile_s=t_compile)
    for _ in range(calls):
        for r in runs.values():
            t0 = time.perf_counter()
            r["carry"] = jax.block_until_ready(r["fn"](r["carry"], n, fr))
            r["times"].append(time.perf_counter() - t0)
    out = dict(model=model, method=method, batch=batch, k=k, calls=calls, results={})
    loop = None
    for name, r in runs.items():
        ips = r["batch"] * k / float(np.median(r["times"]))
        loop = ips if name == "loop" else loop
        out["results"][name] = dict(
            batch=r["batch"], img_iters_per_s=round(ips, 3), compile_s=round(r["compile_s"], 1)
        )
    for name, r in out["results"].items():
        r["vs_loop"] = round(r["img_iters_per_s"] / loop, 3)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="g32,g64")
    ap.add_argument("--methods", default="latent_opt,pti,clone,gmm")
    ap.add_argument("--strategies", default="map,vmap,chunked")
    ap.add_argument("--batches", default="1,4,8,16")
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--calls", type=int, default=6)
    ap.add_argument("--chunk", type=int, default=4)
    ap.add_argument("--lpips", action="store_true")
    ap.add_argument("--out", default="")
    ap.add_argument("--plan", default="", help="explicit model:method:strategy:batch,... list")
    ap.add_argument("--paired", default="", help="model:method:batch — interleaved comparison")
    ap.add_argument("--merge", default="", help="comma-separated JSON outputs to merge and print")
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.paired:
        model, method, batch = a.paired.split(":")
        print(
            json.dumps(
                run_paired(
                    model,
                    method,
                    int(batch),
                    a.strategies.split(","),
                    a.k,
                    a.calls,
                    a.lpips,
                    a.chunk,
                )
            )
        )
        return
    if a.merge:
        rows = [r for f in a.merge.split(",") for r in json.load(open(f))["rows"]]
        print(json.dumps(summarize(rows), indent=1))
        return
    if a.one:
        model, method, strategy, batch = a.one.split(":")
        print(
            json.dumps(run_one(model, method, strategy, int(batch), a.k, a.calls, a.lpips, a.chunk))
        )
        return
    plan = (
        [tuple(p.split(":")) for p in a.plan.split(",")]
        if a.plan
        else [
            (model, method, strategy, batch)
            for model in a.models.split(",")
            for method in a.methods.split(",")
            for batch in a.batches.split(",")
            for strategy in a.strategies.split(",")
            # batch 1: every strategy is the per-image loop; one chunk: identical to vmap
            if not (int(batch) == 1 and strategy != "map")
            and not (strategy == "chunked" and int(batch) <= a.chunk)
        ]
    )
    rows = []
    for model, method, strategy, batch in plan:
        # a fresh process per row: its peak RSS and compile time are its own
        cmd = [
            sys.executable,
            __file__,
            "--one",
            f"{model}:{method}:{strategy}:{batch}",
            "--k",
            str(a.k),
            "--calls",
            str(a.calls),
            "--chunk",
            str(a.chunk),
        ]
        if a.lpips:
            cmd.append("--lpips")
        p = subprocess.run(cmd, capture_output=True, text=True)
        line = p.stdout.strip().splitlines()[-1:] if p.returncode == 0 else []
        row = (
            json.loads(line[0])
            if line
            else dict(
                model=model,
                method=method,
                strategy=strategy,
                batch=int(batch),
                error=p.stderr.strip().splitlines()[-1:],
            )
        )
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if a.out:
            with open(a.out, "w") as f:
                json.dump(summarize(rows), f, indent=1)
    print(json.dumps(summarize(rows), indent=1))


def summarize(rows):
    """Rows + per (model, method): the per-image loop (batch 1) and, per strategy, the batched
    speed-up over it and the marginal RSS per image between the smallest and largest batch."""
    out = dict(rows=rows, summary=[])
    keys = sorted({(r["model"], r["method"]) for r in rows})
    for model, method in keys:
        rs = [r for r in rows if r["model"] == model and r["method"] == method and "error" not in r]
        loop = [r for r in rs if r["batch"] == 1]
        if not loop:
            continue
        base = loop[0]["img_iters_per_s"]
        base_cpu = loop[0].get("img_iters_per_cpu_s")
        if not base:  # nothing stepped (every image failed): no baseline to compare with
            continue
        entry = dict(
            model=model,
            method=method,
            loop_img_iters_per_s=base,
            loop_img_iters_per_cpu_s=base_cpu,
            strategies={},
        )
        for strat in sorted({r["strategy"] for r in rs}):
            sr = sorted(
                [r for r in rs if r["strategy"] == strat and r["batch"] > 1],
                key=lambda r: r["batch"],
            )
            if not sr:
                continue
            big = sr[-1]
            entry["strategies"][strat] = dict(
                speedup_vs_loop={r["batch"]: round(r["img_iters_per_s"] / base, 3) for r in sr},
                min_speedup=round(min(r["img_iters_per_s"] / base for r in sr), 3),
                cpu_work_speedup_vs_loop={
                    r["batch"]: round(r["img_iters_per_cpu_s"] / base_cpu, 3)
                    for r in sr
                    if base_cpu and r.get("img_iters_per_cpu_s")
                },
                marginal_rss_mb_per_image=round(
                    (big["peak_rss_mb"] - loop[0]["peak_rss_mb"]) / (big["batch"] - 1), 2
                ),
            )
        out["summary"].append(entry)
    return out


if __name__ == "__main__":
    main()
