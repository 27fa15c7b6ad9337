"""Peer benchmark: our batched PTI-style tuning against PyTorch's per-image loop (JSON on stdout).

    python benchmarks/bench_vs_torch.py                      # defaults below (~5 min on 2 cores)
    python benchmarks/bench_vs_torch.py --mse-only           # loss = MSE
    # the old path, for before/after:
    python benchmarks/bench_vs_torch.py --impl native --strategy map
    # mixed precision (bf16 GEMM operands, float32 accumulation) on our side / also on torch's:
    python benchmarks/bench_vs_torch.py --g-dtype bfloat16 --lpips-dtype bfloat16 [--torch-bf16]

What a PyTorch user runs instead of us is PTI's loop: one image at a time, a deep copy of G, Adam
over all synthesis weights (benchmarks/torch_reference.py: our own torch StyleGAN2 synthesis and
LPIPS-VGG, built from the SAME Flax variables and checked against the rosinality fixture and our
JAX modules in tests/test_torch_reference.py). Both sides: the same random-weight generator, the
same Fashion-MNIST test images, w fixed at w_avg, Adam(lr), loss = MSE + LPIPS-VGG (real weights,
target features cached on both sides), no regularizer, no early stop, `--steps` steps per image.

Ours is the inversion engine (`engine.invert_batch` with the `pti` method, one batch of
`--images`), timed on its second run (the first compiles; compile time is reported apart), as
torch is timed after `warmup_steps` throwaway steps; each side runs `--repeats` times and
its fastest run counts. Reported:
  torch_img_steps_per_s, ours_img_steps_per_s, ratio = ours / torch (best run of each side;
  paired_ratios per interleaved pair),
  gflop_per_img_step  XLA's cost analysis of one single-image step (in the conv form timed),
  gflops_per_s        gflop_per_img_step * ours_img_steps_per_s,
  matmul_peak_gflops  a float32 2048^2 matmul timed in this run, and pct_of_matmul_peak,
  final_mse_max_rel_diff  max over images of |mse_ours - mse_torch| / mse_torch after the last
                      step (same math => small), plus loadavg before and after.
Run it alone: other jobs on the same cores change both sides unequally.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# Defaults of the issue that asked for this comparison: 64x64 RGB, 128 channels (64 at 64x64).
G_CONFIG = dict(
    resolution=64,
    channels=(128, 128, 128, 128, 64),
    z_dim=512,
    w_dim=512,
    mapping_layers=8,
    img_channels=3,
)


def _images(n: int, res: int) -> tuple[np.ndarray, str]:
    """n Fashion-MNIST test images at res (zero-padded, 3 channels), or random if absent."""
    try:
        from ganinv_jax.data import fashion_mnist
        from ganinv_jax.data.images import from_uint8

        imgs = fashion_mnist.load_fashion_mnist("test", resolution=res, channels=3)[:n]
        return from_uint8(imgs), "fashion_mnist_test"
    except Exception as e:  # noqa: BLE001 - the timing does not depend on the pixels
        print(f"Fashion-MNIST unavailable ({e}); using uniform noise images", file=sys.stderr)
        rng = np.random.default_rng(0)
        return rng.uniform(-1, 1, (n, res, res, 3)).astype(np.float32), "uniform_noise"


def matmul_peak_gflops(n: int = 2048, reps: int = 5) -> float:
    import jax

    a = jax.random.normal(jax.random.key(0), (n, n))
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    best = min(timed(lambda: f(a).block_until_ready()) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def timed(fn) -> float:
    """Wall seconds of one call of fn (the caller takes the best of its repeats)."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def step_gflop(method, frozen, image, latent, cfg) -> float:
    """XLA's flop count of one single-image method step (as traced in the current conv form)."""
    import jax

    state = jax.eval_shape(lambda: method.init(jax.random.key(0), image, frozen, latent, cfg))
    lowered = jax.jit(lambda s, f: method.step(s, f, cfg)).lower(state, frozen)
    cost = lowered.compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) / 1e9


def pti_setup(g_cfg, gvars, lpips_params, *, lr, mse_only, lpips_dtype, g_dtype):
    """(frozen, method, cfg) of the compared step: PTI, all synthesis weights, Adam(lr), loss
    MSE (+ LPIPS-VGG unless mse_only), no regularizer, no early stop (also profile_step.py's
    `--model vs_torch`)."""
    from ganinv_jax import inversion as inv
    from ganinv_jax.inversion import base

    frozen = base.make_frozen(
        g_cfg,
        gvars,
        lpips=lpips_params if not mse_only else None,
        w_stats_samples=1000,
        lpips_dtype=lpips_dtype,
        g_dtype=g_dtype,
    )
    method = inv.METHODS["pti"]
    cfg = method.default_config()
    cfg.lr, cfg.reg_weight, cfg.stop_lpips, cfg.stop_mse = lr, 0.0, -1.0, -1.0
    cfg.l2_weight = 1.0
    cfg.lpips_weight = 0.0 if mse_only else 1.0
    cfg.perceptual = "none" if mse_only else "lpips"
    return frozen, method, cfg


def prepare_ours(a, g_cfg, gvars, lpips_params, images, ws):
    """Compiles our engine's PTI (first run, timed apart) and returns (run() -> (seconds, out),
    info)."""
    import jax
    import ml_collections

    from ganinv_jax.inversion import engine
    from ganinv_jax.ops import conv as conv_ops

    frozen, method, cfg = pti_setup(
        g_cfg,
        gvars,
        lpips_params,
        lr=a.lr,
        mse_only=a.mse_only,
        lpips_dtype=a.lpips_dtype,
        g_dtype=a.g_dtype,
    )
    ids = np.arange(len(images))
    kw = dict(
        strategy=a.strategy,
        steps=a.steps,
        steps_per_call=a.steps_per_call,
        devices=jax.devices()[:1],
    )

    def run():
        with conv_ops.use_impl(a.impl):
            t0 = time.perf_counter()
            out = engine.invert_batch(method, frozen, images, ids, ws, cfg, **kw)
            return time.perf_counter() - t0, out

    t_first, _ = run()
    with conv_ops.use_impl(a.impl):
        info = dict(
            conv_impl=conv_ops.resolve_impl(),
            first_run_s=t_first,
            strategy=engine.auto_strategy(method) if a.strategy == "auto" else a.strategy,
            gflop_per_img_step=step_gflop(
                method,
                frozen,
                jax.numpy.asarray(images[0]),
                jax.numpy.asarray(ws[0]),
                ml_collections.FrozenConfigDict(cfg),
            ),
        )
    return run, info


def main() -> None:
    from ganinv_jax.inversion.base import GEMM_DTYPES

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--mse-only", action="store_true", help="loss = MSE (no LPIPS on either side)")
    ap.add_argument("--impl", default="auto", help="conv form: auto | native | matmul")
    ap.add_argument(
        "--lpips-dtype",
        default="float32",
        choices=GEMM_DTYPES,
        help="ours: operand dtype of LPIPS-VGG's GEMMs (torch stays float32)",
    )
    ap.add_argument(
        "--g-dtype",
        default="float32",
        choices=GEMM_DTYPES,
        help="ours: operand dtype of G's conv GEMMs (torch stays float32)",
    )
    ap.add_argument(
        "--strategy", default="auto", help="engine strategy: auto | map | vmap | chunked"
    )
    ap.add_argument("--steps-per-call", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the machine's cores)")
    ap.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="timed runs per side; the fastest counts (the cores are shared)",
    )
    ap.add_argument("--torch-device", default="cpu", help="cpu | cuda (the device check)")
    ap.add_argument(
        "--torch-bf16",
        action="store_true",
        help="torch side under torch.autocast(bfloat16): PyTorch's own mixed precision",
    )
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args()

    import jax
    import jax.numpy as jnp

    from ganinv_jax import losses
    from ganinv_jax.models import stylegan2 as sg2

    load_before = os.getloadavg()
    g_cfg = sg2.StyleGAN2Config(**G_CONFIG)
    gvars = sg2.Generator(g_cfg).init(jax.random.key(0), jnp.zeros((1, g_cfg.z_dim)))
    gvars = jax.tree_util.tree_map(np.asarray, gvars)
    images, source = _images(a.images, g_cfg.resolution)
    w_avg = np.asarray(
        jax.jit(lambda z: sg2.Generator(g_cfg).apply(gvars, z, method="mapping"))(
            jax.random.normal(jax.random.key(1), (1000, g_cfg.z_dim))
        )
    )
    ws = (
        np.broadcast_to(w_avg[:, :1].mean(0, keepdims=True), (a.images, g_cfg.num_ws, g_cfg.w_dim))
        .astype(np.float32)
        .copy()
    )
    lpips_params = (
        None if a.mse_only else jax.tree_util.tree_map(np.asarray, losses.load_lpips_params("vgg"))
    )

    report = dict(
        benchmark="bench_vs_torch",
        g_config={k: list(v) if isinstance(v, tuple) else v for k, v in G_CONFIG.items()},
        images=a.images,
        image_source=source,
        steps=a.steps,
        lr=a.lr,
        loss="mse" if a.mse_only else "mse+lpips_vgg",
        jax_version=jax.__version__,
        backend=jax.default_backend(),
    )
    peak = matmul_peak_gflops()
    run_ours, info = prepare_ours(a, g_cfg, gvars, lpips_params, images, ws)
    run_torch = None
    if not a.skip_torch:
        import torch
        import torch_reference

        def run_torch():
            return torch_reference.pti_loop(
                g_cfg,
                gvars,
                lpips_params,
                images,
                ws,
                steps=a.steps,
                lr=a.lr,
                lpips_weight=0.0 if a.mse_only else 1.0,
                threads=a.threads,
                device=a.torch_device,
                autocast_bf16=a.torch_bf16,
            )

        report.update(
            torch_version=torch.__version__,
            torch_threads=a.threads,
            torch_device=a.torch_device,
            torch_autocast_bf16=a.torch_bf16,
        )
    # Interleaved repeats: the shared cores drift over minutes, so each ours/torch pair is
    # measured back to back and the pairs' ratios are reported beside the best of each side.
    ours_runs, torch_runs = [], []
    for _ in range(a.repeats):
        ours_runs.append(run_ours())
        if run_torch is not None:
            torch_runs.append(run_torch())
    seconds, out = min(ours_runs, key=lambda r: r[0])
    n_steps = int(out["iterations"].sum())
    ours_rate = n_steps / seconds
    report.update(
        matmul_peak_gflops=peak,
        ours_img_steps_per_s=ours_rate,
        ours_seconds=seconds,
        ours_all_seconds=[r[0] for r in ours_runs],
        ours_compile_and_first_run_s=info["first_run_s"] - seconds,
        gflop_per_img_step=info["gflop_per_img_step"],
        gflops_per_s=info["gflop_per_img_step"] * ours_rate,
        conv_impl=info["conv_impl"],
        lpips_dtype=a.lpips_dtype,
        g_dtype=a.g_dtype,
        strategy=info["strategy"],
    )
    report["pct_of_matmul_peak"] = 100.0 * report["gflops_per_s"] / peak
    if torch_runs:
        t = min(torch_runs, key=lambda r: r["seconds"])
        mse_o = np.mean((np.asarray(out["recon"], np.float64) - images) ** 2, axis=(1, 2, 3))
        mse_t = np.asarray(t["final_mse"])
        report.update(
            torch_img_steps_per_s=t["img_steps_per_s"],
            torch_seconds=t["seconds"],
            torch_all_seconds=[r["seconds"] for r in torch_runs],
            ratio=ours_rate / t["img_steps_per_s"],
            paired_ratios=[r["seconds"] / o[0] for o, r in zip(ours_runs, torch_runs)],
            final_mse_ours=mse_o.tolist(),
            final_mse_torch=mse_t.tolist(),
            initial_mse_torch=t["initial_mse"],
            final_mse_max_rel_diff=float(np.max(np.abs(mse_o - mse_t) / mse_t)),
        )
    report.update(loadavg_before=load_before, loadavg_after=os.getloadavg())
    text = json.dumps(report, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
