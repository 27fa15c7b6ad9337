"""Task `ablation` -- paper Fig. 5 / Sec. 4.4: naive vs augmented-naive vs full InvGAN, same budget.

    python -m ganinv_jax.main --config=configs/invgan_fashion_mnist.py:dcgan \
        --config.task=ablation --config.ablation.steps=2000 --workdir=/work/runs/ablation_dcgan

Trains each variant of the given config from the same seed for the same number of steps (one
after another, in `workdir/<variant>`; each resumes from its own checkpoints if interrupted),
then measures the held-out test-split reconstruction MAE of G(D_w(x)) (per pixel, [-1, 1],
paper Table 1) with G_ema and raw G, and writes `workdir/ablation.json` and the figure
`workdir/ablation.png` (rows: test images, then G(D_w(x)) of naive, aug_naive, full).
`--config.ablation.figure_only=True` redraws the figure from finished runs.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import logging

from ganinv_jax import atomic
from ganinv_jax.data import images as image_io
from ganinv_jax.training import invgan, loop

VARIANT_ORDER = ("naive", "aug_naive", "full")


def variant_config(config, variant: str, steps: int):
    c = config.copy_and_resolve_references()
    c.unlock()
    c.variant = variant
    c.task = "train_invgan"
    c.num_train_steps = steps
    c.eval_at_end = False
    c.sample_every = 0
    c.checkpoint_every = max(steps // 4, 1)
    c.lock()
    return c


def train_all(config, root: str) -> dict:
    a = config.ablation
    table = {}
    for variant in VARIANT_ORDER:
        c = variant_config(config, variant, a.steps)
        wd = os.path.join(root, variant)
        t = time.time()
        try:
            state = invgan.train_and_evaluate(c, wd)
            note = "completed"
        except loop.NonFiniteError as e:  # an ablation may diverge: evaluate its last good
            from ganinv_jax.training import export  # checkpoint and say so

            state = export.restore_workdir(c, wd)[1]
            note = f"diverged: {e}"
        train_s = time.time() - t
        res = invgan.evaluate(c, invgan.make_nets(c), state, wd, num_test=a.num_test or None)
        res["train_wall_s_this_session"] = round(train_s, 1)
        res["note"] = note
        table[variant] = res
        atomic.write_json(
            os.path.join(root, "ablation.json"),
            {"backbone": config.backbone, "steps": a.steps, "seed": config.seed, "results": table},
            indent=2,
        )
    return table


def figure(config, root: str, out_png: str, n: int = 8) -> None:
    """Rows: n held-out test images, then G(D_w(x)) of naive, aug_naive, full (paper Fig. 5)."""
    from ganinv_jax.training import export

    rows = None
    for variant in VARIANT_ORDER:
        c = variant_config(config, variant, config.ablation.steps)
        nets, state = export.restore_workdir(c, os.path.join(root, variant))
        x = invgan.load_test_images(c, n)
        _, rec = invgan.reconstruct(nets, invgan.ema_vars(state), state.d, x)
        rows = [x] if rows is None else rows
        rows.append(np.clip(rec, -1, 1))
    labels = ["test image", *VARIANT_ORDER]
    image_io.save_png(out_png, image_io.make_grid(np.concatenate(rows), n, row_labels=labels))


def run(config, workdir: str) -> dict:
    """Task `ablation`: every variant in `workdir/<variant>`, the table and the figure."""
    table = {} if config.ablation.figure_only else train_all(config, workdir)
    figure(config, workdir, os.path.join(workdir, "ablation.png"))
    logging.info("ablation: %s", json.dumps(table))
    return table
