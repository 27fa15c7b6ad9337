"""Where the time of one inversion step goes: per-op profile of the engine's K-step call (JSON).

    python benchmarks/profile_step.py --method pti --batch 8            # MSE + LPIPS-VGG
    python benchmarks/profile_step.py --method clone --impl native --strategy map   # old path
    python benchmarks/profile_step.py --train        # InvGAN's train step (bench_train.py's)

Builds the random-weight model `--model` of benchmarks/bench_inversion.py (same method configs:
no early stop), compiles and warms up the engine's call (`--steps` steps of `--batch` images),
then records one call with `jax.profiler` (a perfetto trace) and sums the XLA:CPU thunk times
per HLO op. Ops are grouped by kind (`ynn_fusion` = XNNPACK/YNNPACK GEMM fusions, `concatenate`,
`*_pad_fusion`/`*_slice_fusion` = im2col/col2im data movement, `convolution`/`conv_general_dilated`
= XLA's own convs, `select`/`is-finite` = the engine's masks, ...), per image-step, and the top
ops are listed with their output shapes from the optimized HLO (dumped to a temp dir).
Profiling adds overhead: read the shares, and take speed from bench_vs_torch.py.
`--train` profiles `--steps` InvGAN train steps of configs/invgan_fashion_mnist.py instead
(bench_train.py's jitted step; times per example = per train step / batch size).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

_DUMP = tempfile.mkdtemp(prefix="ganinv_hlo_")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={_DUMP} --xla_dump_hlo_as_text"
    " --xla_dump_hlo_pass_re=NONE"
).strip()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/

_HOST_EVENTS = ("Thunk", "Pjit", "Slinky", "block_until", "Execute", "asarray", "$")


def _kind(name: str) -> str:
    return re.sub(r"[._]\d+$", "", name)


def _vs_torch_setup(a):
    """bench_vs_torch.py's random-weight G and its compared PTI step."""
    import bench_vs_torch
    import jax
    import jax.numpy as jnp

    from ganinv_jax import losses
    from ganinv_jax.models import stylegan2 as sg2

    cfg = sg2.StyleGAN2Config(**bench_vs_torch.G_CONFIG)
    gvars = sg2.Generator(cfg).init(jax.random.key(0), jnp.zeros((1, cfg.z_dim)))
    lp = None if a.no_lpips else losses.load_lpips_params("vgg")
    frozen, method, mcfg = bench_vs_torch.pti_setup(
        cfg,
        gvars,
        lp,
        lr=3e-4,  # bench_vs_torch.py's default
        mse_only=a.no_lpips,
        lpips_dtype=a.lpips_dtype,
        g_dtype=a.g_dtype,
    )
    return cfg, frozen, method, mcfg


def _trace_train(a):
    """bench_train.py's InvGAN train step: warm-up, then `a.steps` steps traced. -> (trace dir,
    examples traced, report fields)."""
    import jax
    import numpy as np

    from configs.invgan_fashion_mnist import get_config
    from ganinv_jax import sharding as shd
    from ganinv_jax.training import invgan
    from ganinv_jax.training import state as state_lib

    c = get_config("")
    nets, mesh, init_fn = invgan.setup(c)
    _, sh = state_lib.abstract_state(init_fn, jax.random.key(0), mesh)
    st = state_lib.init_sharded(init_fn, jax.random.key(0), sh)
    step = invgan.jit_train_step(c, nets, sh, mesh)
    r, ch = c.data.resolution, c.data.channels
    rng = np.random.default_rng(0)
    batch = lambda: rng.uniform(-1, 1, (c.batch_size, r, r, ch)).astype(np.float32)  # noqa: E731
    trace_dir = tempfile.mkdtemp(prefix="ganinv_trace_")
    with jax.set_mesh(mesh):
        for _ in range(2):  # compile + warm
            st, m = step(st, shd.host_to_global(batch(), mesh))
        jax.block_until_ready(m)
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(a.steps):
                st, m = step(st, shd.host_to_global(batch(), mesh))
                jax.block_until_ready(m)
    info = dict(
        step="invgan_train", resolution=r, batch=c.batch_size, steps=a.steps, backbone=c.backbone
    )
    return trace_dir, a.steps * c.batch_size, info


def main() -> None:
    from ganinv_jax.inversion.base import GEMM_DTYPES

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", default="pti")
    ap.add_argument(
        "--model",
        default="g64",
        help="a bench_inversion.py model (g32 | g64), or vs_torch: bench_vs_torch.py's model and "
        "step (PTI without regularizer, MSE + LPIPS-VGG unless --no-lpips)",
    )
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--strategy", default="auto")
    ap.add_argument("--impl", default="auto", help="conv form: auto | native | matmul")
    ap.add_argument("--no-lpips", action="store_true", help="pooled_l2 instead of LPIPS-VGG")
    ap.add_argument(
        "--lpips-dtype", default="float32", choices=GEMM_DTYPES, help="LPIPS's GEMM operands"
    )
    ap.add_argument("--g-dtype", default="float32", choices=GEMM_DTYPES, help="G's GEMM operands")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--train", action="store_true", help="InvGAN's train step instead")
    a = ap.parse_args()
    if a.train:
        trace_dir, n, info = _trace_train(a)
        _report(a, trace_dir, n, "ms_per_example", info, largest_module=True)
        return

    import bench_inversion
    import jax
    import numpy as np

    from ganinv_jax.inversion import engine
    from ganinv_jax.ops import conv as conv_ops

    with conv_ops.use_impl(a.impl):
        if a.model == "vs_torch":
            cfg, frozen, method, mcfg = _vs_torch_setup(a)
        else:
            cfg, frozen, method, mcfg = bench_inversion._random_setup(
                a.model, a.method, not a.no_lpips
            )
            frozen = frozen.replace(lpips_dtype=a.lpips_dtype, g_dtype=a.g_dtype)
        images = jax.random.uniform(
            jax.random.key(2),
            (a.batch, cfg.resolution, cfg.resolution, cfg.img_channels),
            minval=-1,
            maxval=1,
        )
        kw = dict(
            strategy=a.strategy, steps=a.steps, steps_per_call=a.steps, devices=jax.devices()[:1]
        )
        ids = np.arange(a.batch)
        engine.invert_batch(method, frozen, images, ids, None, mcfg, **kw)  # compile + warm
        trace_dir = tempfile.mkdtemp(prefix="ganinv_trace_")
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            engine.invert_batch(method, frozen, images, ids, None, mcfg, **kw)
        impl = conv_ops.resolve_impl()
        strategy = engine.auto_strategy(method) if a.strategy == "auto" else a.strategy
    info = dict(
        method=a.method,
        model=a.model,
        batch=a.batch,
        steps=a.steps,
        conv_impl=impl,
        strategy=strategy,
        lpips=not a.no_lpips,
        lpips_dtype=a.lpips_dtype,
        g_dtype=a.g_dtype,
    )
    _report(a, trace_dir, a.batch * a.steps, "ms_per_img_step", info)


def _report(a, trace_dir: str, n: int, unit: str, info: dict, largest_module=False) -> None:
    """Sums the trace's thunk times per HLO op over `n` units (image-steps or examples) and
    prints the JSON report; shapes from the engine's `run_local` module, or with
    `largest_module` the largest optimized module dumped (the train step)."""
    trace = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)[0]
    events = [e for e in json.load(gzip.open(trace))["traceEvents"] if e.get("ph") == "X"]
    per_op = collections.Counter()
    for e in events:
        if not any(h in e["name"] for h in _HOST_EVENTS):
            per_op[e["name"]] += e["dur"]
    if largest_module:
        hlo_files = sorted(glob.glob(f"{_DUMP}/*after_optimizations.txt"), key=os.path.getsize)
        hlo_files = hlo_files[-1:]
    else:
        hlo_files = glob.glob(f"{_DUMP}/*jit_run_local*after_optimizations.txt")
    hlo = open(hlo_files[0]).read() if hlo_files else ""

    def shape(name):
        m = re.search(r"^\s*(?:ROOT )?%?" + re.escape(name) + r" = (\S+)", hlo, re.M)
        return m.group(1) if m else "?"

    ms = lambda us: round(us / n / 1000, 3)  # noqa: E731 - microseconds -> ms per unit
    kinds = collections.Counter()
    for name, us in per_op.items():
        kinds[_kind(name)] += us
    total = sum(per_op.values())
    report = dict(
        **info,
        **{
            f"op_{unit}": ms(total),
            f"by_kind_{unit}": {k: ms(v) for k, v in kinds.most_common(20)},
            "by_kind_share": {k: round(v / total, 3) for k, v in kinds.most_common(20)},
            "top_ops": [
                {"op": k, unit: ms(v), "shape": shape(k)} for k, v in per_op.most_common(a.top)
            ],
        },
        loadavg=os.getloadavg(),
    )
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
