"""Where the time of one inversion step goes: per-op profile of the engine's K-step call (JSON).

    python benchmarks/profile_step.py --method pti --batch 8            # MSE + LPIPS-VGG
    python benchmarks/profile_step.py --method clone --impl native --strategy map   # old path

Builds the random-weight model `--model` of benchmarks/bench_inversion.py (same method configs:
no early stop), compiles and warms up the engine's call (`--steps` steps of `--batch` images),
then records one call with `jax.profiler` (a perfetto trace) and sums the XLA:CPU thunk times
per HLO op. Ops are grouped by kind (`ynn_fusion` = XNNPACK/YNNPACK GEMM fusions, `concatenate`,
`*_pad_fusion`/`*_slice_fusion` = im2col/col2im data movement, `convolution`/`conv_general_dilated`
= XLA's own convs, `select`/`is-finite` = the engine's masks, ...), per image-step, and the top
ops are listed with their output shapes from the optimized HLO (dumped to a temp dir).
Profiling adds overhead: read the shares, and take speed from bench_vs_torch.py.
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
    a = ap.parse_args()

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

    trace = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)[0]
    events = [e for e in json.load(gzip.open(trace))["traceEvents"] if e.get("ph") == "X"]
    per_op = collections.Counter()
    for e in events:
        if not any(h in e["name"] for h in _HOST_EVENTS):
            per_op[e["name"]] += e["dur"]
    hlo_files = glob.glob(f"{_DUMP}/*jit_run_local*after_optimizations.txt")
    hlo = open(hlo_files[0]).read() if hlo_files else ""

    def shape(name):
        m = re.search(r"^\s*(?:ROOT )?%?" + re.escape(name) + r" = (\S+)", hlo, re.M)
        return m.group(1) if m else "?"

    n = a.batch * a.steps
    ms = lambda us: round(us / n / 1000, 3)  # noqa: E731 - microseconds -> ms per image-step
    kinds = collections.Counter()
    for name, us in per_op.items():
        kinds[_kind(name)] += us
    total = sum(per_op.values())
    report = dict(
        method=a.method,
        model=a.model,
        batch=a.batch,
        steps=a.steps,
        conv_impl=impl,
        strategy=strategy,
        lpips=not a.no_lpips,
        lpips_dtype=a.lpips_dtype,
        g_dtype=a.g_dtype,
        op_ms_per_img_step=ms(total),
        by_kind_ms_per_img_step={k: ms(v) for k, v in kinds.most_common(20)},
        by_kind_share={k: round(v / total, 3) for k, v in kinds.most_common(20)},
        top_ops=[
            dict(op=k, ms_per_img_step=ms(v), shape=shape(k)) for k, v in per_op.most_common(a.top)
        ],
        loadavg=os.getloadavg(),
    )
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
