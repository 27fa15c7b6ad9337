"""Encoder quality table (issue 14): one-pass encoders, per-image fine-tuning, and latent_opt
started from each encoder, on held-out Fashion-MNIST test images and OOD photos.

    python benchmarks/encoder_table.py --encoder pretrained=DIR_PRE --encoder finetuned=DIR_FT \
        --encoder crg=DIR_CRG --ft-from finetuned --out benchmarks/results/encoders_64fm_8ood

Generator: the embedded default model. Rows:
  * `invgan`: the default model's InvGAN w-head (D's w head), and every `--encoder NAME=DIR`
    (a trained encoder DIR; z encoders go through G's mapping): one forward pass each, timed
    (images/s, after a warm-up call, batch = all images of a set);
  * `encoder_ft`: paper 000's per-image fine-tuning (`inversion.encoder_methods`, its defaults,
    `--ft-steps`) of the encoder `--ft-from`;
  * `latent_opt from X`: the invert job's latent_opt (configs/stylegan2.py's settings: W+, MSE,
    `--lo-steps`) started from each encoder's latents and from the mean w. Its curve (the mean MSE
    every `--steps-per-call` steps) gives `steps_to_mean_init_final`: for each image the first
    recorded step at which it is at or below mean-init latent_opt's final MSE for that image
    (mean over the images that got there; `reached_mean_init_final` is that fraction).
Times (images/s, s/image) exclude compiles (a warm-up call first). Metrics: the invert job's
`image_metrics` (MSE, PSNR on [0, 1]; SSIM; MS-SSIM; LPIPS-VGG) of the clipped reconstructions.
Data as `quality_table.py`: the first `--n` Fashion-MNIST TEST images (32x32, gray repeated to
RGB) and `--ood` scikit-image photos.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from quality_table import fashion_mnist_test, ood_photos, set_value  # noqa: E402
from repo_configs import get_config  # noqa: E402

from ganinv_jax import atomic, losses, pretrained  # noqa: E402
from ganinv_jax import inversion as inv  # noqa: E402
from ganinv_jax.jobs import invert  # noqa: E402
from ganinv_jax.jobs import methods as methods_lib  # noqa: E402

METRICS = ("mse", "psnr", "ssim", "ms_ssim", "lpips")


def timed_encode(encode, images: np.ndarray) -> tuple[np.ndarray, float]:
    """(latents, images/s) of one batched call after a warm-up (compile) call."""
    x = jnp.asarray(images)
    jax.block_until_ready(encode(x))
    t0 = time.perf_counter()
    out = jax.block_until_ready(encode(x))
    return np.asarray(out), len(images) / (time.perf_counter() - t0)


def scores(lpips, images: np.ndarray, recon: np.ndarray) -> dict:
    win = min(11, images.shape[1] - (1 - images.shape[1] % 2))
    m = jax.device_get(invert.image_metrics(lpips, jnp.asarray(images), jnp.asarray(recon), win))
    return {k: float(np.mean(m[k])) for k in METRICS} | {"mse_per_image": m["mse"].tolist()}


def curve(out: dict, steps_per_call: int, target_mse=None) -> dict:
    """The engine history's mean [0, 1] MSE per call, and (given the per-image `target_mse`)
    the first recorded step each image reached it."""
    hist = out["history"]["mse"] / 4.0  # [calls, n]; methods log [-1, 1] MSE
    steps = out["history_steps"]
    res = dict(curve_steps=steps.tolist(), curve_mse=hist.mean(1).tolist())
    if target_mse is not None:
        reached = hist <= np.asarray(target_mse)[None]
        first = np.where(reached.any(0), steps[np.argmax(reached, axis=0)], np.nan)
        res.update(
            steps_to_mean_init_final=float(np.nanmean(first)) if reached.any() else None,
            reached_mean_init_final=float(reached.any(0).mean()),
        )
    return res


def timed_invert(method, frozen, x, start, cfg, steps_per_call: int) -> tuple[dict, float]:
    """(engine output, seconds per image) of a run after a one-step warm-up run (the compile:
    the step count is not part of the compiled programs)."""
    ids = np.arange(len(x))
    inv.invert_batch(method, frozen, x, ids, start, cfg, steps=1, steps_per_call=steps_per_call)
    t0 = time.perf_counter()
    out = inv.invert_batch(method, frozen, x, ids, start, cfg, steps_per_call=steps_per_call)
    return out, (time.perf_counter() - t0) / len(x)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", action="append", default=[], help="NAME=DIR (repeatable)")
    ap.add_argument("--no-invgan", action="store_true", help="leave out the InvGAN w-head row")
    ap.add_argument("--ft-from", default="", help="NAME of the encoder encoder_ft tunes ('': none)")
    ap.add_argument("--ft-steps", type=int, default=200)
    ap.add_argument("--lo-steps", type=int, default=200, help="0: the encoders' rows only")
    ap.add_argument(
        "--lo-from", default="", help="encoders latent_opt starts from, comma-separated ('': all)"
    )
    ap.add_argument(
        "--lo-from-steps",
        type=int,
        default=0,
        help="steps (and lr schedule horizon) of latent_opt from an encoder (0: --lo-steps)",
    )
    ap.add_argument(
        "--lo-from-set",
        action="append",
        default=[],
        help="KEY=VALUE of latent_opt's config for the encoder starts only (repeatable)",
    )
    ap.add_argument("--steps-per-call", type=int, default=10)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--ood", type=int, default=8)
    ap.add_argument("--out", default="", help="OUT.json + OUT.md ('' : print only)")
    a = ap.parse_args(argv)

    gan = pretrained.load("default")
    cfg = get_config("stylegan2")
    frozen_lo = inv.make_frozen(gan.config, gan.G, lpips=None)
    lpips = losses.load_lpips_params("vgg")
    sets = {"fmnist_test": fashion_mnist_test(a.n, gan.config.resolution)}
    if a.ood:
        sets["ood"] = ood_photos(a.ood, gan.config.resolution)

    encoders = {} if a.no_invgan else {"invgan": (gan.encode, "InvGAN w-head (D)")}
    trained = {}
    for spec in a.encoder:
        name, _, path = spec.partition("=")
        enc = pretrained.load_encoder(path)
        enc.check_generator(gan.config, path)
        trained[name] = enc
        encoders[name] = (lambda x, e=enc: e.encode_ws(x, gan), f"{enc.config.kind}: {path}")

    lo = inv.METHODS["latent_opt"]
    lo_cfg = methods_lib.method_config(cfg, lo)
    lo_cfg.num_steps = a.lo_steps
    # a warm start may run a shorter schedule of its own (issue 14: "in <= half the steps")
    lo_from_cfg = lo_cfg.copy_and_resolve_references()
    lo_from_cfg.num_steps = a.lo_from_steps or a.lo_steps
    for kv in a.lo_from_set:
        set_value(lo_from_cfg, *kv.split("=", 1))
    report = dict(
        generator="default",
        n_images={k: len(v) for k, v in sets.items()},
        lo_config=json.loads(lo_cfg.to_json_best_effort()),
        lo_from_config=json.loads(lo_from_cfg.to_json_best_effort()),
        load_average=os.getloadavg(),
        sets={},
    )
    for set_name, x in sets.items():
        rows = []
        starts = {}
        for name, (encode, what) in encoders.items():
            _, ips = timed_encode(encode, x)
            ws = inv.init_latents.from_encoder(encode, x, frozen_lo)  # as W+
            starts[name] = ws
            recon = np.asarray(gan.synthesis(jnp.asarray(ws)))
            rows.append(dict(row=name, what=what, images_per_s=ips) | scores(lpips, x, recon))
            print(set_name, rows[-1]["row"], f"{rows[-1]['psnr']:.2f} dB", flush=True)
        if a.ft_from:
            enc = trained[a.ft_from]
            frozen_ft = inv.make_frozen(gan.config, gan.G, lpips=lpips, encoder=enc)
            ft = inv.METHODS["encoder_ft"]
            ft_cfg = ft.default_config()
            ft_cfg.num_steps = a.ft_steps
            out, sec = timed_invert(ft, frozen_ft, x, None, ft_cfg, a.steps_per_call)
            rows.append(
                dict(row=f"encoder_ft ({a.ft_steps}) from {a.ft_from}", seconds_per_image=sec)
                | scores(lpips, x, out["recon"])
                | curve(out, a.steps_per_call)
            )
            print(set_name, rows[-1]["row"], f"{rows[-1]['psnr']:.2f} dB", flush=True)
        lo_runs = {}
        lo_from = [n for n in starts if not a.lo_from or n in a.lo_from.split(",")]
        for name in ["mean_w", *lo_from] if a.lo_steps > 0 else []:  # 0: encoders only
            c = lo_cfg if name == "mean_w" else lo_from_cfg
            lo_runs[name] = (
                *timed_invert(lo, frozen_lo, x, starts.get(name), c, a.steps_per_call),
                c,
            )
        if lo_runs:
            final_mean = scores(lpips, x, lo_runs["mean_w"][0]["recon"])["mse_per_image"]
        for name, (out, sec, c) in lo_runs.items():
            rows.append(
                dict(row=f"latent_opt ({c.num_steps}) from {name}", seconds_per_image=sec)
                | scores(lpips, x, out["recon"])
                | curve(out, a.steps_per_call, final_mean)
            )
            print(set_name, rows[-1]["row"], f"{rows[-1]['psnr']:.2f} dB", flush=True)
        report["sets"][set_name] = rows
    if a.out:
        atomic.write_json(a.out + ".json", report, indent=1)
        atomic.write_text(a.out + ".md", markdown(report) + "\n")
    print(markdown(report))
    return report


def markdown(report: dict) -> str:
    lines = []
    for set_name, rows in report["sets"].items():
        lines += [
            f"### {set_name} ({report['n_images'][set_name]} images)",
            "",
            "| row | MSE | PSNR | SSIM | MS-SSIM | LPIPS | images/s | s/image | "
            "steps to mean-init final MSE (reached) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            reach = ""
            if r.get("steps_to_mean_init_final") is not None:
                reach = (
                    f"{r['steps_to_mean_init_final']:.0f} "
                    f"({100 * r['reached_mean_init_final']:.0f}%)"
                )
            ips = f"{r['images_per_s']:.0f}" if "images_per_s" in r else ""
            spi = f"{r['seconds_per_image']:.3f}" if "seconds_per_image" in r else ""
            lines.append(
                f"| {r['row']} | {r['mse']:.5f} | {r['psnr']:.2f} | {r['ssim']:.3f} | "
                f"{r['ms_ssim']:.3f} | {r['lpips']:.3f} | {ips} | {spi} | {reach} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
