"""Task `sample`: a grid of samples from the configured generator.

Writes `samples.png` (grid) and `samples.npz` (z, ws, images in [-1, 1]) to the workdir
(PGGAN / BigGAN: z, c, images).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging

from ganinv_jax import atomic, pretrained
from ganinv_jax.data import images as image_io


def run(config, workdir: str) -> None:
    gan = pretrained.load(config.generator)
    cfg = config.sample
    key = jax.random.PRNGKey(config.seed)
    z_key, noise_key = jax.random.split(key)
    if getattr(gan, "architecture", "stylegan2") != "stylegan2":
        _run_generate(gan, config, workdir, z_key)
        return
    z = jax.random.normal(z_key, (cfg.num, gan.config.z_dim))
    c = None
    if gan.config.c_dim:
        labels = np.arange(cfg.num) % gan.config.c_dim
        c = jax.nn.one_hot(labels, gan.config.c_dim)
    ws = jax.jit(gan.mapping, static_argnames="truncation_psi")(
        z, c, truncation_psi=cfg.truncation_psi
    )
    images = jax.jit(gan.synthesis, static_argnames="noise_mode")(
        ws, noise_mode=cfg.noise_mode, key=noise_key
    )
    images = np.asarray(images)
    grid = image_io.make_grid(images, ncols=int(np.ceil(np.sqrt(cfg.num))))
    if jax.process_index() == 0:
        image_io.save_png(os.path.join(workdir, "samples.png"), grid)
        atomic.write_npz(
            os.path.join(workdir, "samples.npz"), z=np.asarray(z), ws=np.asarray(ws), images=images
        )
    logging.info("wrote %d samples to %s", cfg.num, os.path.join(workdir, "samples.png"))


def _run_generate(gan, config, workdir: str, key) -> None:
    """PGGAN / BigGAN: `gan.generate` of `gan.sample_inputs` (BigGAN: config.biggan.truncation,
    the classes 0, 1, ... in turn); samples.npz holds z, c (if any) and the images."""
    cfg = config.sample
    truncation = float(config.biggan.truncation) if gan.architecture == "biggan" else 1.0
    z, c = gan.sample_inputs(key, cfg.num, truncation)
    images = np.asarray(gan.generate(z, c, truncation))
    grid = image_io.make_grid(np.clip(images, -1, 1), ncols=int(np.ceil(np.sqrt(cfg.num))))
    if jax.process_index() == 0:
        image_io.save_png(os.path.join(workdir, "samples.png"), grid)
        arrays = {"z": np.asarray(z), "images": images}
        if c is not None:
            arrays["c"] = np.asarray(c)
        atomic.write_npz(os.path.join(workdir, "samples.npz"), **arrays)
    logging.info("wrote %d samples to %s", cfg.num, os.path.join(workdir, "samples.png"))
