"""Grid sweep of one method's config on a few held-out images of the default model (JSON).

    python benchmarks/sweep_method.py --method gmm --grid lr=1e-3,3e-3,1e-2 init_scale=0.1,0.01
    python benchmarks/sweep_method.py --method clone --grid p=0.25,0.5,1.0 lam=0,1,10 --steps 100

Same data and pipeline as `quality_table.py`: the first `--n` Fashion-MNIST test images and
`--ood` scikit-image photos, InvGAN encoder -> latent_opt (`--pivot-steps`, the pivot) -> the
method at every point of the grid (the cartesian product of the `KEY=V1,V2,..` arguments over
the method's default config), each run from the same pivot. Per point: mean final MSE ([0, 1]
images) per set, its ratio to the pivot's MSE (> 1: the method improved on latent_opt), the
mean MSE curve, iterations and failed images. The papers' lost or per-domain hyper-parameters
(GMM's lr and init scale, Clone's p and λ) are chosen with this, on images outside the table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

import numpy as np


def _value(text: str):
    if text in ("True", "False"):
        return text == "True"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", required=True)
    ap.add_argument("--grid", nargs="+", default=[], help="KEY=V1,V2,... (cartesian product)")
    ap.add_argument(
        "--points",
        nargs="+",
        default=[],
        help="one-change-at-a-time points instead of a grid: 'default' or "
        "'KEY=V[;KEY=V...]' each (e.g. default lam=0 lr=0.0002)",
    )
    ap.add_argument("--n", type=int, default=2, help="Fashion-MNIST test images")
    ap.add_argument(
        "--first",
        type=int,
        default=0,
        help="index of the first test image (keep sweeps off the table's images)",
    )
    ap.add_argument("--ood", type=int, default=2)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--pivot-steps", type=int, default=200)
    ap.add_argument(
        "--pivot",
        choices=("table", "job"),
        default="table",
        help="table: latent_opt's own defaults (MSE + LPIPS) from InvGAN's w-head, as the "
        "quality table; job: the main job's pivot (its latent_opt config, MSE alone, from the "
        "shipped paper-000 encoder, no noise ramp)",
    )
    ap.add_argument("--steps-per-call", type=int, default=10)
    ap.add_argument("--reals", type=int, default=512)
    ap.add_argument(
        "--job-defaults",
        action="store_true",
        help="points over the main job's config of the method (configs/stylegan2.py)",
    )
    ap.add_argument(
        "--drift",
        action="store_true",
        help="per point: MSE / LPIPS between base and tuned G on 16 random latents (tuning)",
    )
    ap.add_argument("--out", default="")
    a = ap.parse_args()

    import quality_table as qt

    from ganinv_jax import inversion as inv

    g_cfg, gv, dv, encode, g_name = qt.load_generator(False)
    sets = {"fashion_mnist_test": qt.fashion_mnist_test(a.first + a.n, g_cfg.resolution)[a.first :]}
    if a.ood:
        sets["ood_skimage"] = qt.ood_photos(a.ood, g_cfg.resolution)
    names = list(sets)
    images = np.concatenate([sets[k] for k in names]).astype(np.float32)
    bounds = np.cumsum([0] + [len(sets[k]) for k in names])
    ids = np.arange(len(images))
    frozen = inv.make_frozen(
        g_cfg,
        gv,
        d_vars=dv,
        lpips="vgg",
        reals=qt.clone_reals(a.reals, g_cfg.resolution) if a.reals else None,
    )

    def per_set(mse):
        return {k: float(np.mean(mse[bounds[i] : bounds[i + 1]])) for i, k in enumerate(names)}

    def final_mse(recon):  # the table's metric: [0, 1] images, reconstruction clipped
        return qt.quality(frozen, images, recon)["mse"]

    lo_cfg = inv.METHODS["latent_opt"].default_config()
    lo_cfg.num_steps = a.pivot_steps
    lo_cfg.initial_noise_factor = 0.0 if encode else 0.05
    if a.pivot == "job":  # the invert job's own pivot: its encoder, its projection config
        encode, lo_cfg = qt.job_pivot(a.pivot_steps)
    start = inv.init_latents.from_encoder(encode, images, frozen) if encode else None
    lo = qt.run_method(
        "latent_opt", frozen, images, ids, start, lo_cfg, a.pivot_steps, "auto", a.steps_per_call
    )
    pivot_mse = final_mse(lo["recon"])
    if a.points:
        settings = [
            {}
            if p == "default"
            else {kv.split("=", 1)[0]: _value(kv.split("=", 1)[1]) for kv in p.split(";")}
            for p in a.points
        ]
    else:
        keys = [kv.split("=")[0] for kv in a.grid]
        values = [[_value(v) for v in kv.split("=", 1)[1].split(",")] for kv in a.grid]
        settings = [dict(zip(keys, point)) for point in itertools.product(*values)]
    report = dict(
        method=a.method,
        generator=g_name,
        steps=a.steps,
        pivot_steps=a.pivot_steps,
        pivot=a.pivot,
        sets={k: int(len(v)) for k, v in sets.items()},
        first_test_image=a.first,
        pivot_mse=per_set(pivot_mse),
        command=" ".join(sys.argv),
        job_defaults=a.job_defaults,
        load_avg_at_start=os.getloadavg()[0],
        points=[],
    )
    for setting in settings:
        cfg = qt.method_config(a.method, a.job_defaults)
        for k, v in setting.items():
            qt.set_value(cfg, k, v)
        cfg.num_steps = a.steps
        t = time.perf_counter()
        out = qt.run_method(
            a.method, frozen, images, ids, lo["latent"], cfg, a.steps, "auto", a.steps_per_call
        )
        mse = final_mse(out["recon"])
        row = dict(
            setting,
            mse=per_set(mse),
            pivot_over_mse={
                k: report["pivot_mse"][k] / max(v, 1e-12) for k, v in per_set(mse).items()
            },
            curve_steps=out["history_steps"].tolist(),
            curve_mse=(out["history"]["mse"].mean(1) / 4.0).tolist(),
            # every metric the method's step reports (mean over images, per call):
            # Clone's logit_query / logit_target / g_global / drift, GMM's grad_rel, ...
            curves={
                k: np.asarray(v, np.float64).mean(1).tolist() for k, v in out["history"].items()
            },
            iterations=float(np.mean(out["iterations"])),
            failed=int(np.sum(out["failed"])),
            wall_s=time.perf_counter() - t,
        )
        if a.drift:  # the quality table's locality measure: over every image, and per set
            per_image = qt.drift_per_image(frozen, a.method, out, cfg, range(len(images)))
            row["drift"] = qt.mean_drift(per_image)
            row["drift_mse_per_set"] = per_set(per_image["drift_mse"])
        report["points"].append(row)
        print(
            json.dumps(
                {
                    k: row[k]
                    for k in [*setting, "mse", "pivot_over_mse", "failed", "drift_mse_per_set"]
                    if k in row
                }
            ),
            flush=True,
        )
        if a.out:  # partial results survive an interrupted sweep
            with open(a.out, "w") as f:
                json.dump(report, f, indent=1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
