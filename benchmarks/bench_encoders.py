"""Encoder speed on this machine (issue 14): inference images/s and training examples/s.

    python benchmarks/bench_encoders.py --out benchmarks/results/bench_encoders_cpu.json
    python benchmarks/bench_encoders.py --objectives crg --repeats 3     # a part

For the embedded default generator (32x32x3): the paper-000 adaptive encoder (configs/encoder.py's
widths) and the CRG encoder (paper 003, to z), random weights (speed does not depend on them).
  inference: `encoders.encode` jitted, batches of --batch images; images/s of the best of
             --repeats timed calls after a warm-up call (the compile, reported apart).
  training:  `training.encoder.train_step` jitted exactly as the train_encoder task runs it
             (configs/encoder.py, its batch size 16, all devices); examples/s over --steps steps
             after the first (compile) step; objectives pretrain | finetune | crg.
Prints one JSON object (and writes it to --out) with the load average at the start and the end:
a figure taken beside another heavy job is not a benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np
from repo_configs import get_config

from ganinv_jax import atomic, encoders, pretrained
from ganinv_jax import sharding as shd
from ganinv_jax.losses import perceptual as lpips_lib
from ganinv_jax.training import encoder as enc_train

VARIANTS = {"pretrain": "", "finetune": "finetune", "crg": "crg"}


def bench_inference(gan, kind: str, batch: int, repeats: int) -> dict:
    cfg = encoders.config_for_generator(kind, gan.config)
    params = encoders.init_params(cfg, jax.random.key(0))
    fn = jax.jit(lambda p, x: encoders.encode(cfg, p, x))
    x = jax.random.uniform(jax.random.key(1), (batch, cfg.resolution, cfg.resolution, 3)) * 2 - 1
    t0 = time.perf_counter()
    jax.block_until_ready(fn(params, x))
    compile_s = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(params, x))
        best = min(best, time.perf_counter() - t0)
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(params))
    return dict(
        kind=kind,
        target=cfg.target,
        params=n_params,
        batch=batch,
        images_per_s=batch / best,
        first_call_s=compile_s,
    )


def bench_training(gan, objective: str, steps: int) -> dict:
    config = get_config("encoder", VARIANTS[objective])
    config.val.every = 0  # validation is a separate cost (every val.every steps)
    enc, mesh, init_fn = enc_train.setup(config, gan)
    get_rows, _, _ = enc_train.make_data(config, gan)
    abstract = jax.eval_shape(init_fn, jax.random.key(0))
    shardings = jax.tree_util.tree_map(lambda _: shd.replicated(mesh), abstract)
    # jitted init: distinct buffers for every leaf (the step donates the state)
    state = jax.jit(init_fn, out_shardings=shardings)(jax.random.key(0))
    aux = {
        "g": gan.G,
        "lpips": lpips_lib.load_lpips_params("vgg") if enc_train.needs_lpips(config) else None,
        "val": None,
    }
    aux = jax.device_put(aux, shd.replicated(mesh))
    step_fn = enc_train.jit_train_step(config, enc, gan, shardings, mesh)
    batches = [shd.host_to_global(get_rows(s), mesh) for s in range(steps + 1)]
    with jax.set_mesh(mesh):
        t0 = time.perf_counter()
        state, m = step_fn(state, batches[0], aux)
        jax.block_until_ready(m)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        for b in batches[1:]:
            state, m = step_fn(state, b, aux)
        jax.block_until_ready(m)
        dt = time.perf_counter() - t0
    return dict(
        objective=objective,
        encoder=enc.kind,
        batch=config.batch_size,
        devices=mesh.size,
        steps=steps,
        steps_per_s=steps / dt,
        examples_per_s=steps * config.batch_size / dt,
        first_step_s=first,
        loss=float(m["loss"]),
    )


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--objectives", default="pretrain,finetune,crg")
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)
    gan = pretrained.load("default", networks=["G_ema"])
    report = dict(
        machine=dict(
            backend=jax.default_backend(), devices=jax.device_count(), cpus=os.cpu_count()
        ),
        load_average_start=os.getloadavg(),
        inference=[bench_inference(gan, k, a.batch, a.repeats) for k in ("adaptive", "crg")],
        training=[bench_training(gan, o, a.steps) for o in filter(None, a.objectives.split(","))],
        load_average_end=os.getloadavg(),
    )
    if a.out:
        atomic.write_json(a.out, report, indent=1)
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
