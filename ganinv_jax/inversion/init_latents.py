"""Initial latents for the per-image methods: mean w, an encoder, or latent optimization.

All return latents [B, *latent_shape] of `frozen.arch` (the engine's `init_latents`; StyleGAN2:
W+ [B, num_ws, w_dim]). The encoder start is StyleGAN2's (the InvGAN w-head).
"""

from __future__ import annotations

from typing import Callable, Optional

import jax.numpy as jnp
import numpy as np

from ganinv_jax.inversion import base, engine, latent_opt


def from_mean_w(frozen: base.Frozen, n: int) -> np.ndarray:
    """The mean latent (StyleGAN2: the mean w of 10k mapping samples, `Frozen.w_avg`; others:
    `arch.mean_latent`) for every image."""
    return np.broadcast_to(
        np.asarray(base.mean_latent(frozen)), (n, *frozen.arch.latent_shape)
    ).copy()


def from_encoder(
    encode: Callable, images, frozen: base.Frozen, batch_size: Optional[int] = None
) -> np.ndarray:
    """An encoder callable images [N,H,W,C] -> w [N, w_dim] or W+ [N, num_ws, w_dim], e.g. the
    default model's InvGAN w-head `gan.encode` (from `ganinv_jax.pretrained`)."""
    if frozen.arch.name != "stylegan2":
        raise ValueError(f"an encoder start exists for StyleGAN2 only, not {frozen.arch.name}")
    images = np.asarray(images, np.float32)
    bs = batch_size or images.shape[0]
    outs = [np.asarray(encode(jnp.asarray(images[i : i + bs]))) for i in range(0, len(images), bs)]
    ws = np.concatenate(outs)
    g = frozen.g_cfg
    if ws.shape[1:] == (g.w_dim,):
        ws = np.broadcast_to(ws[:, None], (ws.shape[0], g.num_ws, g.w_dim)).copy()
    if ws.shape[1:] != (g.num_ws, g.w_dim):
        raise ValueError(
            f"encoder returned {ws.shape}, expected [N, {g.w_dim}] or [N, {g.num_ws}, {g.w_dim}]"
        )
    return ws


def from_latent_opt(
    frozen: base.Frozen, images, image_ids, *, cfg=None, seed: int = 0, start=None, **engine_kw
) -> np.ndarray:
    """Latent optimization (default: W, as PTI's pivot; the space means nothing outside
    StyleGAN2) from `start` (default the mean latent)."""
    if cfg is None:
        cfg = latent_opt.default_config()
        cfg.space = "w"
    out = engine.invert_batch(
        latent_opt.METHOD, frozen, images, image_ids, start, cfg, seed=seed, **engine_kw
    )
    return out["latent"]
