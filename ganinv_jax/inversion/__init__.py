"""Per-image GAN inversion methods and the batch engine (see the README, "Per-image inversion").

    from ganinv_jax import inversion as inv
    frozen = inv.make_frozen(g_cfg, g_vars, d_vars=d_vars, lpips='vgg')
    out = inv.invert_batch(inv.METHODS['gmm'], frozen, images, ids, init_latents, cfg, seed=0)
"""
from ganinv_jax.inversion import clone, gmm, latent_opt, pti
from ganinv_jax.inversion.base import Frozen, Method, make_frozen
from ganinv_jax.inversion.engine import auto_strategy, invert_batch
from ganinv_jax.inversion import init_latents

METHODS = {m.name: m for m in (latent_opt.METHOD, pti.METHOD, clone.METHOD, gmm.METHOD)}

__all__ = ["Frozen", "Method", "make_frozen", "invert_batch", "auto_strategy", "METHODS",
           "latent_opt", "pti", "clone", "gmm", "init_latents"]
