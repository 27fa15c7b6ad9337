"""Inversion quality beyond StyleGAN: latent_opt and PTI on 16 images sampled from each fixture
generator (PGGAN `pggan_zoo_small.pt`, BigGAN `biggan_small/`), printed as JSON.

    nice -n 10 python benchmarks/arch_inversion.py [--n 16] [--lo-steps 200] [--pti-steps 30]

Each fixture goes the user's way: `weights_convert.convert` -> DIR -> `pretrained.load`, then
`inversion.make_frozen(..., arch=...)` and `inversion.invert_batch`. The targets are samples of
the generator itself (so a perfect inversion exists): PGGAN z ~ N(0, I); BigGAN
`truncation * truncnorm(-2, 2)` z (truncation 0.5) with uniformly drawn one-hot classes.

  * start:      the architecture's start latent (PGGAN z = 0, BigGAN z = 0 + the
                uniform class vector), no optimization;
  * latent_opt: from the start, MSE loss (perceptual='none', as the main job's default), the
                method's defaults otherwise (lr 0.1, the projector's ramps and noise); BigGAN
                with class_mode='optimize' (class logits; `--given` adds a run with 'given':
                the true class, kept fixed);
  * pti:        all of G tuned around latent_opt's latent, MSE + its locality regularizer (L2
                part), no LPIPS; lr 3e-3 for PGGAN (the main job's: equalized-LR weights are
                O(1), as StyleGAN2's), 3e-4 for BigGAN (PTI's paper lr: its weights are stored at
                their trained scale, so 3e-3 is a ~10x larger relative step and degraded the
                latent_opt result in a 20-step trial: PSNR 34.6 -> 29.7).

PSNR = 10 log10(peak^2 / MSE) per image, with peak 2 (images in [-1, 1], i.e. the PSNR of
[0, 1] images that the main job reports). BigGAN's tanh output is within [-1, 1]; this PGGAN
(WGAN-GP, linear output, random-like weights) produces values in about [-5, 5], so its PSNR is
also given with the targets' own peak-to-peak range ('psnr_ptp'). Fixtures: $GANINV_FIXTURES or
../shared/fixtures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from ganinv_jax import inversion as inv  # noqa: E402
from ganinv_jax import pretrained  # noqa: E402
from ganinv_jax.inversion import latent_opt, pti  # noqa: E402
from weights_convert.convert import convert, write_dir  # noqa: E402

FIXTURES = os.environ.get(
    "GANINV_FIXTURES", os.path.join(os.path.dirname(REPO), "shared", "fixtures")
)
BG_TRUNCATION = 0.5


def psnr(x, y, peak: float) -> np.ndarray:
    mse = np.mean(np.square(np.asarray(x) - np.asarray(y)).reshape(len(x), -1), axis=1)
    return 10.0 * np.log10(peak**2 / np.maximum(mse, 1e-12))


def stats(targets, recon) -> dict:
    p = psnr(recon, targets, 2.0)
    ptp = float(np.max(targets) - np.min(targets))
    mse = np.mean(np.square(recon - targets).reshape(len(targets), -1), axis=1)
    return {
        "psnr_mean": round(float(p.mean()), 2),
        "psnr_min": round(float(p.min()), 2),
        "psnr_max": round(float(p.max()), 2),
        "psnr_ptp_mean": round(float(psnr(recon, targets, ptp).mean()), 2),
        "mse_mean": float(mse.mean()),
    }


def run(method, frozen, targets, init, cfg, steps):
    t0 = time.perf_counter()
    out = inv.invert_batch(
        method.METHOD,
        frozen,
        targets,
        np.arange(len(targets)),
        init,
        cfg,
        seed=0,
        steps=steps,
        steps_per_call=min(50, steps),
    )
    return out, time.perf_counter() - t0


def lo_cfg(steps):
    c = latent_opt.default_config()
    c.num_steps = steps
    c.perceptual = "none"
    return c


def pti_cfg(steps, lr):
    c = pti.default_config()
    c.num_steps = steps
    c.perceptual = "none"
    c.lr = lr
    return c


def bench(name, gan, arch, targets, args, pti_lr, given_arch=None, given_init=None) -> dict:
    frozen = inv.make_frozen(gan.config, gan.G, lpips=None, arch=arch)
    start = np.asarray(
        jax.jit(inv.base.synthesize)(
            frozen,
            jnp.broadcast_to(inv.base.mean_latent(frozen), (len(targets), *arch.latent_shape)),
        )
    )
    res = {"latent_shape": list(arch.latent_shape), "start": stats(targets, start)}
    lo, t_lo = run(latent_opt, frozen, targets, None, lo_cfg(args.lo_steps), args.lo_steps)
    res["latent_opt"] = dict(stats(targets, lo["recon"]), steps=args.lo_steps, seconds=round(t_lo))
    if given_init is not None:
        k = gan.config.num_classes
        # how often 'optimize' found the sampled class (argmax of the optimized class vector)
        found = np.argmax(lo["latent"][:, -k:], axis=1) == np.argmax(given_init[:, -k:], axis=1)
        res["latent_opt"]["class_recovered"] = f"{int(found.sum())}/{len(found)}"
    if given_arch is not None:
        fg = frozen.replace(arch=given_arch)
        lg, t_lg = run(latent_opt, fg, targets, given_init, lo_cfg(args.lo_steps), args.lo_steps)
        res["latent_opt_given_class"] = dict(
            stats(targets, lg["recon"]), steps=args.lo_steps, seconds=round(t_lg)
        )
    cfg = pti_cfg(args.pti_steps, pti_lr)
    p, t_p = run(pti, frozen, targets, lo["latent"], cfg, args.pti_steps)
    res["pti"] = dict(
        stats(targets, p["recon"]), steps=args.pti_steps, lr=pti_lr, seconds=round(t_p)
    )
    print(f"{name}: {json.dumps(res)}", file=sys.stderr)
    return res


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--lo-steps", type=int, default=200)
    ap.add_argument("--pti-steps", type=int, default=30)
    ap.add_argument("--given", action="store_true", help="BigGAN: also latent_opt, true class")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    out = {
        "n_images": args.n,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "loss": "MSE (perceptual='none'); PTI: + locality regularizer (L2)",
    }
    with tempfile.TemporaryDirectory() as tmp:
        pg_dir = write_dir(
            os.path.join(tmp, "pg"),
            convert(os.path.join(FIXTURES, "pggan_zoo_small.pt"), "pggan-zoo"),
        )
        bg_dir = write_dir(
            os.path.join(tmp, "bg"), convert(os.path.join(FIXTURES, "biggan_small"), "biggan-hf")
        )
        pg, bg = pretrained.load(pg_dir), pretrained.load(bg_dir)

        z = jax.random.normal(jax.random.key(1), (args.n, pg.z_dim))
        pg_targets = np.asarray(pg.generate(z))
        out["pggan"] = bench("pggan", pg, inv.arch_for(pg.config), pg_targets, args, 3e-3)
        out["pggan"]["target_range"] = [
            round(float(pg_targets.min()), 2),
            round(float(pg_targets.max()), 2),
        ]

        z, c = bg.sample_inputs(jax.random.key(2), args.n, BG_TRUNCATION)
        classes = jax.random.randint(jax.random.key(3), (args.n,), 0, bg.c_dim)
        c = jax.nn.one_hot(classes, bg.c_dim)
        bg_targets = np.asarray(bg.generate(z, c, BG_TRUNCATION))
        opt = inv.arch_for(bg.config, truncation=BG_TRUNCATION)
        given = inv.arch_for(bg.config, truncation=BG_TRUNCATION, class_mode="given")
        given_init = np.concatenate([np.zeros((args.n, bg.z_dim)), np.asarray(c)], axis=1)
        given = given if args.given else None
        out["biggan"] = bench("biggan", bg, opt, bg_targets, args, 3e-4, given, given_init)
        out["biggan"]["truncation"] = BG_TRUNCATION
    out["seconds"] = round(time.perf_counter() - t0)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
