"""Per-image GAN inversion methods and the batch engine (see the README, "Per-image inversion").

    from ganinv_jax import inversion as inv
    frozen = inv.make_frozen(g_cfg, g_vars, d_vars=d_vars, lpips='vgg')
    out = inv.invert_batch(inv.METHODS['gmm'], frozen, images, ids, init_latents, cfg, seed=0)

`g_cfg` may be a StyleGAN2Config, PGGANConfig or BigGANConfig: `frozen.arch` (`inversion.arch`,
e.g. `make_frozen(..., arch=inv.arch_for(biggan_cfg, truncation=0.4))`) carries what differs.

`METHODS` is the one registry of method names: the invert job, the configs and the benchmarks
all read it; `register` adds a method of one's own (tests use it for toy methods).
"""

from ganinv_jax.inversion import (
    arch,
    clone,
    encoder_methods,
    gmm,
    init_latents,
    latent_opt,
    pti,
)
from ganinv_jax.inversion.arch import Arch, arch_for
from ganinv_jax.inversion.base import Frozen, Method, make_frozen
from ganinv_jax.inversion.engine import auto_strategy, invert_batch

_BUILTIN = (
    latent_opt.METHOD,
    pti.METHOD,
    clone.METHOD,
    gmm.METHOD,
    encoder_methods.ENCODER,
    encoder_methods.ENCODER_FT,
)
BUILTIN_NAMES = tuple(m.name for m in _BUILTIN)
METHODS: dict[str, Method] = {m.name: m for m in _BUILTIN}


def register(method: Method) -> None:
    """Make `method` selectable by its name (`config.method`); a built-in name is refused."""
    if method.name in BUILTIN_NAMES:
        raise ValueError(f"{method.name!r} is a built-in method name")
    METHODS[method.name] = method


__all__ = [
    "Arch",
    "arch",
    "arch_for",
    "Frozen",
    "Method",
    "make_frozen",
    "invert_batch",
    "auto_strategy",
    "METHODS",
    "BUILTIN_NAMES",
    "register",
    "latent_opt",
    "pti",
    "clone",
    "gmm",
    "encoder_methods",
    "init_latents",
]
