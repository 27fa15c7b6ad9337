"""Paper Fig. 5 / Sec. 4.4 ablation: naive vs augmented-naive vs full InvGAN, same budget.

    python -m ganinv_jax.training.ablation --config_arg=dcgan --steps=2000 \
        --root=/work/runs/ablation_dcgan

Trains each variant from the same seed for the same number of steps (one after another;
each resumes from its own workdir if interrupted), then measures the held-out test-split
reconstruction MAE of G(D_w(x)) (per pixel, [-1, 1], paper Table 1) with G_ema and raw G,
and writes `root/ablation.json`.
"""
from __future__ import annotations

import argparse
import json
import os
import time

from configs.invgan_fashion_mnist import get_config
from ganinv_jax.training import invgan, loop

VARIANT_ORDER = ("naive", "aug_naive", "full")


def run(config_arg: str, steps: int, root: str, num_test: int = 0, seed: int = 0) -> dict:
    table = {}
    for variant in VARIANT_ORDER:
        c = get_config(",".join(filter(None, [config_arg, variant])))
        c.num_train_steps = steps
        c.seed = seed
        c.eval_at_end = False
        c.sample_every = 0
        c.checkpoint_every = max(steps // 4, 1)
        wd = os.path.join(root, variant)
        t = time.time()
        try:
            state = invgan.train_and_evaluate(c, wd)
            note = "completed"
        except loop.NonFiniteError as e:   # an ablation may diverge: evaluate its last good
            from ganinv_jax.training import export   # checkpoint and say so
            state = export.restore_workdir(c, wd)[1]
            note = f"diverged: {e}"
        train_s = time.time() - t
        res = invgan.evaluate(c, invgan.make_nets(c), state, wd, num_test=num_test or None)
        res["train_wall_s_this_session"] = round(train_s, 1)
        res["note"] = note
        table[variant] = res
        with open(os.path.join(root, "ablation.json"), "w") as f:
            json.dump({"config_arg": config_arg, "steps": steps, "seed": seed,
                       "results": table}, f, indent=2)
    return table


def figure(config_arg: str, root: str, out_png: str, n: int = 8) -> None:
    """Rows: n held-out test images, then G(D_w(x)) of naive, aug_naive, full (paper Fig. 5)."""
    import numpy as np
    from ganinv_jax.training import export
    rows = None
    for variant in VARIANT_ORDER:
        c = get_config(",".join(filter(None, [config_arg, variant])))
        nets, state = export.restore_workdir(c, os.path.join(root, variant))
        x = invgan.load_test_images(c, n)
        _, rec = invgan.reconstruct(nets, invgan.ema_vars(state), state.d, x)
        rows = [x] if rows is None else rows
        rows.append(np.clip(rec, -1, 1))
    export.save_png(out_png, invgan.image_grid(np.concatenate(rows), n))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--config_arg", default="dcgan")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--root", required=True)
    ap.add_argument("--num_test", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--figure", default="", help="only write this reconstruction figure")
    a = ap.parse_args()
    if a.figure:
        figure(a.config_arg, a.root, a.figure)
        raise SystemExit(0)
    from absl import logging
    logging.set_verbosity(logging.INFO)
    print(json.dumps(run(a.config_arg, a.steps, a.root, a.num_test, a.seed), indent=2))
