"""Inversion quality table: MSE, PSNR, SSIM, MS-SSIM, LPIPS, iterations, time and drift per method.

    python benchmarks/quality_table.py --out /tmp/quality.json               # default model
    python benchmarks/quality_table.py --tiny --n 8 --ood 4 --steps-scale 0.1   # smoke run

Data: the first `--n` Fashion-MNIST TEST images (held out from the default model's training) at
32x32x3, and `--ood` scikit-image photos (out of distribution), converted to gray, resized to 32x32
(area averaging) and repeated to 3 channels like the training data.
Generator: `pretrained.load('default')` (InvGAN StyleGAN2 on Fashion-MNIST) with its D; with
--tiny, or when the default model is absent, a RANDOM tiny G/D (numbers then only exercise the
pipeline and say nothing about the methods; the JSON says which G was used).
Pipeline: InvGAN encoder w (D's w head; mean w without it) -> latent_opt (W+, MSE + LPIPS) ->
PTI / Clone / GMM all tuned around that same latent, so their MSE is comparable to latent_opt's.
Drift (the papers' locality): MSE and LPIPS between the frozen G and each image's tuned G on 16
fixed random latents.
Metrics from `ganinv_jax.losses` (MSE, SSIM, PSNR on [0, 1] images, LPIPS-VGG on 3 channels,
reconstructions clipped to [-1, 1]). Steps: --steps-scale times the defaults, or per method with
--steps latent_opt=200,pti=150; Clone uses the paper's p=1/4, λ=10, ε=1e-3 with a step cap (its
iterations column and converged fraction show how far it got). --job-defaults runs the table as
`python -m ganinv_jax.main` users get it (`configs/stylegan2.py`): the job's encoder (paper 000's,
shipped with the default G) -> the job's pivot projection (latent_opt, MSE in W+, its steps) ->
PTI / Clone / GMM with the job's settings of them, each image keeping its best state
(`keep_best`, as the job) within the job's drift budget (`max_drift`; `--max-drift` overrides).
Drift: with every tuning method, its mean drift over all its images (columns "drift MSE/LPIPS");
the ablation without the regularizer (PTI, GMM) on the first `--drift-images` images at the end.
Convergence: the engine's per-call history gives each method's mean MSE curve (`curve_mse`, every
--steps-per-call steps; the method's own training MSE of its last step, unclipped) and
`steps_to_latent_opt_mse`: the mean first recorded step at which an image's MSE is at or below
latent_opt's final MSE for that image (over the images that got there; `reached_latent_opt`
is that fraction).
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

from ganinv_jax import inversion as inv
from ganinv_jax import losses
from ganinv_jax.inversion import base, gmm
from ganinv_jax.models import stylegan2 as sg2

OOD_PHOTOS = (
    "camera",
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "coins",
    "moon",
    "page",
    "horse",
    "cat",
    "text",
    "brick",
    # Photos past the table's 8, for choosing settings off the table's own photos
    # (`--ood-first 8`): none of them is in any table.
    "clock",
    "gravel",
    "grass",
    "immunohistochemistry",
)


def load_generator(tiny: bool):
    if not tiny:
        try:
            from ganinv_jax import pretrained

            gan = pretrained.load("default", networks=["G_ema", "D"])
            encode = gan.encode if gan.config.d_w_head else None
            return gan.config, gan.params["G_ema"], gan.params["D"], encode, "default (trained)"
        except Exception as e:  # noqa: BLE001 - report and fall back
            print(
                f"default model unavailable ({type(e).__name__}: {e}); using a random tiny G",
                file=sys.stderr,
            )
    cfg = sg2.StyleGAN2Config(
        resolution=32,
        channels=(32, 32, 16, 16),
        z_dim=32,
        w_dim=32,
        mapping_layers=2,
        img_channels=3,
    )
    gv = sg2.Generator(cfg).init(jax.random.key(0), jnp.zeros((1, cfg.z_dim)))
    dv = sg2.Discriminator(cfg).init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)))
    return cfg, gv, dv, None, "random tiny G (NOT trained: pipeline check only)"


def fashion_mnist_test(n: int, res: int) -> np.ndarray:
    from ganinv_jax.data import fashion_mnist
    from ganinv_jax.data.images import from_uint8

    return from_uint8(fashion_mnist.load_fashion_mnist("test", resolution=res, channels=3)[:n])


def clone_reals(n: int, res: int) -> np.ndarray:
    """Clone's global loss takes real samples from G's training distribution: FMNIST TRAIN
    images."""
    from ganinv_jax.data import fashion_mnist
    from ganinv_jax.data.images import from_uint8

    return from_uint8(fashion_mnist.load_fashion_mnist("train", resolution=res, channels=3)[:n])


def ood_photos(n: int, res: int, first: int = 0) -> np.ndarray:
    """n of scikit-image's photos from OOD_PHOTOS[first], gray, center-cropped to res x res."""
    import skimage.data
    from skimage.color import rgb2gray
    from skimage.transform import resize

    names = OOD_PHOTOS[first : first + n]
    if len(names) < n:
        raise SystemExit(f"--ood {n} from photo {first}: only {len(OOD_PHOTOS)} in OOD_PHOTOS")
    out = []
    for name in names:
        img = getattr(skimage.data, name)().astype(np.float32)
        img = img / 255.0 if img.max() > 1.5 else img
        if img.ndim == 3:
            img = rgb2gray(img[..., :3])
        side = min(img.shape)
        top, left = (img.shape[0] - side) // 2, (img.shape[1] - side) // 2
        img = resize(img[top : top + side, left : left + side], (res, res), anti_aliasing=True)
        out.append(np.repeat(img[..., None] * 2.0 - 1.0, 3, axis=-1))
    return np.stack(out).astype(np.float32)


def quality(frozen, images, recon) -> dict:
    x, y = jnp.asarray(images), jnp.clip(jnp.asarray(recon), -1, 1)
    # MSE on the [0, 1] images (so PSNR = -10 log10 MSE), as the invert job reports it
    mse = np.asarray(jnp.mean((x - y) ** 2, axis=(1, 2, 3))) / 4.0
    return dict(
        mse=mse,
        psnr=np.asarray(losses.psnr(x, y)),
        ssim=np.asarray(losses.ssim(x, y)),
        ms_ssim=np.asarray(losses.ms_ssim_any_size(x, y)),
        lpips=np.asarray(losses.lpips_apply(frozen.lpips, x, y, net="vgg")),
    )


@jax.jit
def _drift(frozen, params, ws):
    """(MSE on [0, 1], LPIPS) between G0(w_r) and G_tuned(w_r), means over the latents."""
    orig = base.synthesize(frozen, ws)
    tuned = base.synthesize(frozen, ws, params)
    return (
        jnp.mean(jnp.square(orig - tuned)) / 4.0,
        jnp.mean(losses.lpips_apply(frozen.lpips, orig, tuned, net=frozen.lpips_net)),
    )


def drift(frozen, method_name, out, cfg, rows, n_latents=16, seed=99) -> dict:
    """The papers' locality: mean MSE and LPIPS between the frozen and each image's tuned G on
    16 fixed random w_r (base mapping; for Clone, which also tunes the mapping, the tuned
    synthesis at the same w_r), averaged over the images in `rows`."""
    return mean_drift(drift_per_image(frozen, method_name, out, cfg, rows, n_latents, seed))


def mean_drift(per_image: dict, sub=slice(None)) -> dict:
    """{mse, lpips}: the mean of `drift_per_image`'s arrays over the images `sub`."""
    return dict(
        mse=float(np.mean(per_image["drift_mse"][sub])),
        lpips=float(np.mean(per_image["drift_lpips"][sub])),
    )


def drift_per_image(frozen, method_name, out, cfg, rows, n_latents=16, seed=99) -> dict:
    """`drift` per image of `rows`: arrays drift_mse, drift_lpips."""
    ws = base.random_ws(frozen, jax.random.key(seed), n_latents)
    theta0 = frozen.g["params"]["synthesis"]
    grads = jax.jit(lambda fr, w, x: gmm.conv_grads(fr, fr.g["params"]["synthesis"], w, x, cfg))
    vals = []
    for i in rows:
        weights_delta = method_name == "pti" or (
            method_name == "gmm" and gmm.saves_weight_delta(cfg)
        )
        if weights_delta or method_name == "clone":  # the saved tree is a weight delta
            delta = out["tuned"] if weights_delta else out["tuned"]["synthesis"]
            p = jax.tree_util.tree_map(lambda d, b: b + d[i], delta, theta0)
        else:  # one-shot gmm: rebuild θ' = θ0 - M_φ(g) from φ and g at θ0
            phi = jax.tree_util.tree_map(lambda a: a[i], out["tuned"])
            g = grads(frozen, jnp.asarray(out["latent"][i]), jnp.asarray(out["_images"][i]))
            p = gmm.tuned_params(phi, theta0, g, cfg)
        vals.append([float(v) for v in _drift(frozen, p, ws)])
    vals = np.asarray(vals, np.float64).reshape(-1, 2)
    return dict(drift_mse=vals[:, 0], drift_lpips=vals[:, 1])


def run_method(
    name,
    frozen,
    images,
    ids,
    init,
    cfg,
    steps,
    strategy,
    steps_per_call=10,
    keep_best=False,
    max_drift=0.0,
):
    t = time.perf_counter()
    out = inv.invert_batch(
        inv.METHODS[name],
        frozen,
        images,
        ids,
        init,
        cfg,
        seed=0,
        steps=steps,
        steps_per_call=max(1, min(steps_per_call, steps)),
        strategy=strategy,
        keep_best=keep_best,
        max_drift=max_drift,
    )
    out["_time_s"] = time.perf_counter() - t
    out["_images"] = images
    return out


def method_config(name: str, job_defaults: bool):
    """A tuning method's config: its own defaults (its paper's), or with `job_defaults` the
    main job's settings of it (configs/stylegan2.py). num_steps is the caller's to set."""
    if not job_defaults:
        return inv.METHODS[name].default_config()
    return job_setting(name).copy_and_resolve_references()


def job_setting(key: str):
    """A top-level setting of the main job (configs/stylegan2.py): a value or a method's config."""
    from repo_configs import get_config

    return get_config("stylegan2")[key]


def job_pivot(steps: int):
    """The main job's start of a tuning method: (encode, latent_opt config) -- its default
    encoder (paper 000's, shipped with the default G) and its pivot projection of `steps` steps
    (`jobs.invert.pivot_config`: the job's latent_opt loss, in W+, no noise ramp)."""
    from repo_configs import get_config

    from ganinv_jax import pretrained
    from ganinv_jax.jobs import invert as invert_job

    gan, enc = pretrained.load("default"), pretrained.load_encoder("default")
    job = get_config("stylegan2")
    job.steps = steps
    return (lambda x: enc.encode_ws(x, gan)), invert_job.pivot_config(job, has_encoder=True)


def set_value(cfg, key: str, value) -> None:
    """cfg[key] = value (command-line text or a number) cast to the type of the default:
    booleans from 1/true, tuples from 'a:b' (e.g. betas=0.9:0.999). Unknown keys fail."""
    if key not in cfg:
        raise SystemExit(f"no config key {key!r} (keys: {', '.join(sorted(cfg))})")
    old = cfg[key]
    if isinstance(old, bool):
        value = str(value).lower() in ("1", "true")
    elif isinstance(old, tuple):
        value = tuple(float(x) for x in str(value).split(":"))
    else:
        value = type(old)(value)
    cfg[key] = value


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--ood", type=int, default=8)
    ap.add_argument(
        "--ood-first", type=int, default=0, help="first OOD photo (8: photos outside the table)"
    )
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--steps-scale", type=float, default=1.0)
    ap.add_argument("--steps", default="", help="per-method steps, e.g. latent_opt=200,pti=150")
    ap.add_argument("--steps-per-call", type=int, default=10, help="K (history resolution)")
    ap.add_argument("--drift-images", type=int, default=4)
    ap.add_argument("--methods", default="latent_opt,pti,clone,gmm")
    ap.add_argument("--strategy", default="auto")
    ap.add_argument("--reals", type=int, default=512, help="FMNIST train images for Clone")
    ap.add_argument(
        "--job-defaults",
        action="store_true",
        help="PTI / Clone / GMM with the main job's settings (configs/stylegan2.py)",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        help="METHOD.KEY=VALUE over the method's config (repeatable; e.g. gmm.reg_weight=10)",
    )
    ap.add_argument(
        "--max-drift",
        type=float,
        default=None,
        help="the tuning methods' drift budget (engine max_drift; default: the job's "
        "max_drift with --job-defaults, else off)",
    )
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    if a.max_drift is None:
        a.max_drift = job_setting("max_drift") if a.job_defaults else 0.0

    g_cfg, gv, dv, encode, g_name = load_generator(a.tiny)
    sets = {"fashion_mnist_test": fashion_mnist_test(a.n, g_cfg.resolution)}
    if a.ood:
        sets["ood_skimage"] = ood_photos(a.ood, g_cfg.resolution, a.ood_first)
    frozen = inv.make_frozen(
        g_cfg, gv, d_vars=dv, lpips="vgg", reals=clone_reals(a.reals, g_cfg.resolution)
    )
    s = lambda n: max(1, int(round(n * a.steps_scale)))
    steps = dict(latent_opt=s(300), pti=s(200), clone=s(300), gmm=s(200))
    steps.update({k: int(v) for k, v in (kv.split("=") for kv in a.steps.split(",") if kv)})
    cfgs = {m: inv.METHODS[m].default_config() for m in inv.METHODS}
    cfgs["latent_opt"].num_steps = steps["latent_opt"]
    cfgs["latent_opt"].initial_noise_factor = 0.0 if encode else 0.05
    if a.job_defaults and not a.tiny:
        encode, cfgs["latent_opt"] = job_pivot(steps["latent_opt"])
    for m in ("pti", "clone", "gmm"):
        cfgs[m] = method_config(m, a.job_defaults)
        cfgs[m].num_steps = steps[m]
    for kv in a.set:
        name, value = kv.split("=", 1)
        m, key = name.split(".", 1)
        set_value(cfgs[m], key, value)
    report = dict(
        generator=g_name,
        g_config=g_cfg.to_dict(),
        steps=steps,
        backend=jax.default_backend(),
        strategy=a.strategy,
        sets={},
        command=" ".join(sys.argv),
        method_configs={m: cfgs[m].to_dict() for m in a.methods.split(",")},
        load_avg_at_start=os.getloadavg()[0],
        keep_best=a.job_defaults or a.max_drift > 0,
        max_drift=a.max_drift,
    )
    methods = a.methods.split(",")
    # One batch holds every set (one compile per method); tables are split by set afterwards.
    names = list(sets)
    images = np.concatenate([sets[k] for k in names]).astype(np.float32)
    bounds = np.cumsum([0] + [len(sets[k]) for k in names])
    ids = np.arange(len(images))
    t = time.perf_counter()
    start = inv.init_latents.from_encoder(encode, images, frozen) if encode else None
    enc_time = time.perf_counter() - t
    rows, outs = {}, {}
    if start is not None:
        rec = base.synthesize(frozen, jnp.asarray(start))
        rows["encoder"] = dict(
            quality(frozen, images, rec), iterations=np.zeros(len(ids)), time_s=enc_time
        )
    lo = run_method(
        "latent_opt",
        frozen,
        images,
        ids,
        start,
        cfgs["latent_opt"],
        steps["latent_opt"],
        a.strategy,
        a.steps_per_call,
    )
    rows["latent_opt"] = dict(
        quality(frozen, images, lo["recon"]), iterations=lo["iterations"], time_s=lo["_time_s"]
    )
    curves = {"latent_opt": lo}
    pivot = lo["latent"]

    def tables():
        for si, set_name in enumerate(names):
            sl = slice(bounds[si], bounds[si + 1])
            table = {}
            for m, r in rows.items():
                table[m] = {k: float(np.mean(v[sl])) for k, v in r.items() if k != "time_s"}
                # wall time of the whole batch (all sets) divided by its size
                table[m]["time_s_per_image"] = r["time_s"] / len(ids)
                if m in curves:  # latent_opt is its own target: only its curve is meaningful
                    target = None if m == "latent_opt" else rows["latent_opt"]["mse"]
                    table[m].update(convergence(curves[m], target, sl))
            for m in ("clone", "gmm", "pti"):
                if m in table:
                    table[m]["mse_ratio_latent_opt_over_method"] = table["latent_opt"]["mse"] / max(
                        table[m]["mse"], 1e-12
                    )
            report["sets"][set_name] = dict(n=int(sl.stop - sl.start), table=table)
        if a.out:  # partial results survive an interrupted run
            with open(a.out, "w") as f:
                json.dump(report, f, indent=1, default=_plain)
            with open(a.out + ".md", "w") as f:
                f.write(markdown(report) + "\n")

    tables()
    for m in methods:
        if m == "latent_opt":
            continue
        out = run_method(
            m,
            frozen,
            images,
            ids,
            pivot,
            cfgs[m],
            steps[m],
            a.strategy,
            a.steps_per_call,
            keep_best=a.job_defaults or a.max_drift > 0,
            max_drift=a.max_drift,
        )
        outs[m] = curves[m] = out
        rows[m] = dict(
            quality(frozen, images, out["recon"]),
            iterations=out["iterations"],
            time_s=out["_time_s"],
            converged=out["converged"],
            failed=out["failed"],
            **({"kept_step": out["best_step"]} if "best_step" in out else {}),
            # every image's tuned G on the 16 random latents (set means below)
            **drift_per_image(frozen, m, out, cfgs[m], ids),
        )
        tables()
    # drift on 16 random latents: the default regularizer vs none, first --drift-images images
    drift_rows = {}
    sub = np.arange(min(a.drift_images, len(ids)))
    for m in ("pti", "gmm", "clone"):
        if m not in outs or not len(sub):
            continue
        drift_rows[m] = dict(  # (the method's own drift per image is in its row already)
            with_reg=mean_drift(rows[m], sub),
            mse_with_reg=float(np.mean(rows[m]["mse"][sub])),
        )
        if m == "clone":  # no locality regularizer to switch off
            continue
        c0 = cfgs[m].copy_and_resolve_references()
        c0.reg_weight = 0.0
        o0 = run_method(
            m, frozen, images[sub], ids[sub], pivot[sub], c0, steps[m], a.strategy, a.steps_per_call
        )
        drift_rows[m]["without_reg"] = drift(frozen, m, o0, c0, range(len(sub)))
        drift_rows[m]["mse_without_reg"] = float(
            np.mean((o0["recon"].clip(-1, 1) - images[sub]) ** 2) / 4.0
        )
    report["drift_16_latents"] = dict(images=int(len(sub)), rows=drift_rows)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(report, f, indent=1, default=_plain)
        with open(a.out + ".md", "w") as f:
            f.write(markdown(report) + "\n")
    print(json.dumps(report, indent=1, default=_plain))
    print(markdown(report))


def convergence(out, target_mse, sl) -> dict:
    """Mean MSE curve ([0, 1] units) over the images in `sl` from the engine's per-call history,
    and, given `target_mse` (latent_opt's MSE per image), the steps each image needed to reach
    it."""
    hist = out["history"]["mse"][:, sl] / 4.0  # [calls, n]; methods log [-1, 1] MSE
    steps = out["history_steps"]
    res = dict(curve_steps=steps.tolist(), curve_mse=hist.mean(1).tolist())
    if target_mse is not None:
        reached = hist <= target_mse[sl][None]
        first = np.where(reached.any(0), steps[np.argmax(reached, axis=0)], np.nan)
        res.update(
            steps_to_latent_opt_mse=float(np.nanmean(first)) if reached.any() else float("nan"),
            reached_latent_opt=float(reached.any(0).mean()),
        )
    return res


def _plain(o):
    """numpy scalars/arrays -> JSON."""
    return o.tolist() if hasattr(o, "tolist") else str(o)


def markdown(report) -> str:
    lines = [
        f"Generator: {report['generator']}; backend {report['backend']}; steps {report['steps']}"
    ]
    for set_name, s in report["sets"].items():
        lines += [
            "",
            f"### {set_name} (n={s['n']})",
            "",
            "| method | MSE | PSNR | SSIM | MS-SSIM | LPIPS | iters | s/image | conv. | "
            "MSE(latent_opt)/MSE | steps to latent_opt MSE (reached) | drift MSE | drift LPIPS |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for m, r in s["table"].items():
            lines.append(
                f"| {m} | {r['mse']:.5f} | {r['psnr']:.2f} | {r['ssim']:.3f} | "
                f"{r.get('ms_ssim', float('nan')):.3f} | "
                f"{r['lpips']:.4f} | {r['iterations']:.0f} | {r['time_s_per_image']:.2f} | "
                f"{r.get('converged', float('nan')):.2f} | "
                f"{r.get('mse_ratio_latent_opt_over_method', float('nan')):.1f} | "
                f"{r.get('steps_to_latent_opt_mse', float('nan')):.0f} "
                f"({r.get('reached_latent_opt', float('nan')):.2f}) | "
                f"{r.get('drift_mse', float('nan')):.5f} | "
                f"{r.get('drift_lpips', float('nan')):.4f} |"
            )
    d16 = report.get("drift_16_latents", {})
    if d16.get("rows"):
        nan = dict(mse=float("nan"), lpips=float("nan"))
        lines += [
            "",
            f"Drift: MSE / LPIPS between G0(w_r) and G_tuned(w_r) over 16 random w_r, "
            f"first {d16['images']} images (reconstruction MSE beside it)",
            "",
            "| method | drift MSE | drift LPIPS | drift MSE, no reg | drift LPIPS, no reg | "
            "recon MSE | recon MSE, no reg |",
            "|---|---|---|---|---|---|---|",
        ]
        for m, d in d16["rows"].items():
            w, wo = d["with_reg"], d.get("without_reg", nan)
            lines.append(
                f"| {m} | {w['mse']:.5f} | {w['lpips']:.4f} | {wo['mse']:.5f} | "
                f"{wo['lpips']:.4f} | {d['mse_with_reg']:.5f} | "
                f"{d.get('mse_without_reg', float('nan')):.5f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
