"""Initial latents for the per-image methods: mean w, an encoder, or latent optimization.

All return W+ latents [B, num_ws, w_dim] (the engine's `init_latents`).
"""

from __future__ import annotations

from typing import Callable, Optional

import jax.numpy as jnp
import numpy as np

from ganinv_jax.inversion import base, engine, latent_opt


def from_mean_w(frozen: base.Frozen, n: int) -> np.ndarray:
    """The mean w (10k mapping samples, `Frozen.w_avg`) for every image."""
    return np.broadcast_to(
        np.asarray(base.mean_latent(frozen)), (n, frozen.g_cfg.num_ws, frozen.g_cfg.w_dim)
    ).copy()


def from_encoder(
    encode: Callable, images, frozen: base.Frozen, batch_size: Optional[int] = None
) -> np.ndarray:
    """An encoder callable images [N,H,W,C] -> w [N, w_dim] or W+ [N, num_ws, w_dim], e.g. the
    default model's InvGAN w-head `gan.encode` (from `ganinv_jax.pretrained`)."""
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
    """Latent optimization (default: W, as PTI's pivot) from `start` (default mean w)."""
    if cfg is None:
        cfg = latent_opt.default_config()
        cfg.space = "w"
    out = engine.invert_batch(
        latent_opt.METHOD, frozen, images, image_ids, start, cfg, seed=seed, **engine_kw
    )
    return out["latent"]
