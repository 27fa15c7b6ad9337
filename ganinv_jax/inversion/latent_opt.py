"""Latent optimization in W or W+ (+ optional noise): the "Projection" baseline and an initializer.

Follows the StyleGAN2 projector (Karras et al. 2020, `projector.py` of stylegan2-ada-pytorch):
  * start from the given latent (default: the mean w), Adam(0.9, 0.999), lr = initial_lr * ramp(t)
    with a linear ramp-up over `lr_rampup` and a cosine ramp-down over the last `lr_rampdown` of
    `num_steps`;
  * during optimization w is perturbed by Gaussian noise of std
    w_std * initial_noise_factor * max(0, 1 - t / (noise_ramp * num_steps))^2 (w_std from 10k
    mapping samples, `Frozen.w_std`);
  * with `optimize_noise`, every noise input of G is a free variable initialized N(0, 1), penalized
    by the multi-scale auto-correlation regularizer (weight `noise_reg_weight`, 1e5 in the
    projector) and renormalized to zero mean / unit variance after every step.
Ours (config switches): W+ (`space='w+'`, Abdal et al.) as well as W; an MSE term next to the
perceptual one (the projector uses LPIPS only: mse_weight=0 reproduces it); perceptual='lpips'
(real VGG LPIPS; images pooled to <= 256 px as the projector does), 'pooled_l2' (cheap stand-in for
tests/benchmarks, not LPIPS) or 'none'; optional early stop at MSE < stop_mse (off by default).
Other architectures (`Frozen.arch`, see `inversion/arch.py`): the optimized latent is PGGAN's z, or
BigGAN's z plus its class as logits (class = softmax) with the arch's class_mode='optimize' (the
class stays as given with 'given'); the noise ramp perturbs z only (`Frozen.w_std` is then the
spread of the prior's latents); `space` and `optimize_noise` are StyleGAN2's (space is ignored
elsewhere; optimize_noise raises).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ganinv_jax.inversion import base
from ganinv_jax.losses import common as loss_common


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.space = "w+"  # 'w' | 'w+'
    c.num_steps = 1000  # projector default; also the lr schedule's horizon
    c.initial_lr = 0.1
    c.lr_rampup = 0.05
    c.lr_rampdown = 0.25
    c.initial_noise_factor = 0.05
    c.noise_ramp = 0.75
    c.optimize_noise = False
    c.noise_reg_weight = 1e5
    c.mse_weight = 1.0
    c.perceptual_weight = 1.0
    c.perceptual = "lpips"  # 'lpips' | 'pooled_l2' | 'none'
    c.cache_target_features = True  # keep the target's LPIPS features in the state (see base)
    c.stop_mse = -1.0  # < 0: never stop early
    return c


def noise_regularizer(noise: dict) -> jax.Array:
    """Sum over noise maps and scales (down to 8x8) of squared 1-px auto-correlations."""
    reg = jnp.zeros((), jnp.float32)
    for v in noise.values():
        x = v
        while True:
            reg += (
                jnp.mean(x * jnp.roll(x, 1, axis=1)) ** 2
                + jnp.mean(x * jnp.roll(x, 1, axis=0)) ** 2
            )
            if x.shape[0] <= 8:
                break
            x = x.reshape(x.shape[0] // 2, 2, x.shape[1] // 2, 2).mean(axis=(1, 3))
    return reg


def _renormalize(noise: dict) -> dict:
    return {k: (v - jnp.mean(v)) / jnp.std(v) for k, v in noise.items()}


def init(key, image, frozen: base.Frozen, init_latent, cfg):
    arch = frozen.arch
    # StyleGAN2: w [w_dim] in W (a W+ start collapses to its mean w) or ws in W+; PGGAN: z;
    # BigGAN: z (+ class logits with class_mode='optimize'; the class is `fixed` otherwise)
    w, fixed = arch.to_free(arch.check_latent(init_latent), cfg.space)
    key, kn = jax.random.split(key)
    noise = {}
    if cfg.optimize_noise:
        shapes = arch.noise_shapes()
        ks = jax.random.split(kn, len(shapes))
        noise = {n: jax.random.normal(k, s) for k, (n, s) in zip(ks, sorted(shapes.items()))}
    params = {"w": w, "noise": noise}
    perc_target = base.cache_target(
        frozen, _perceptual_input(image), cfg.perceptual, cfg.cache_target_features
    )
    return dict(
        t=jnp.asarray(0, jnp.int32),
        key=key,
        image=image,
        params=params,
        fixed=fixed,
        perc_target=perc_target,
        opt=optax.scale_by_adam(0.9, 0.999, 1e-8).init(params),
    )


def _perceptual_input(img):
    """[H, W, C] -> [1, h, w, C] pooled to <= 256 px, as the projector feeds LPIPS."""
    return loss_common.pool_to_max_size(img[None], 256)


def _render(frozen, params, fixed, w=None):
    """The image of the free latent `w` (default params['w']) and the fixed rest."""
    latent = frozen.arch.from_free(params["w"] if w is None else w, fixed)
    noise = params["noise"] or None
    return base.synthesize(frozen, latent[None], noise_mode="const", noise=noise)[0]


def step(state, frozen: base.Frozen, cfg):
    arch = frozen.arch
    t = state["t"].astype(jnp.float32)
    key, kw = jax.random.split(state["key"])
    n = max(cfg.num_steps, 1)
    w_noise_scale = (
        frozen.w_std
        * cfg.initial_noise_factor
        * jnp.square(jnp.maximum(0.0, 1.0 - t / (cfg.noise_ramp * n)))
    )
    lr = cfg.initial_lr * base.lr_ramp(t, n, cfg.lr_rampup, cfg.lr_rampdown)
    target = state["image"]

    def loss_fn(params):
        img = _render(frozen, params, state["fixed"], arch.perturb(params["w"], kw, w_noise_scale))
        mse = base.mse1(img, target)
        perc = base.perceptual_to_image(
            frozen,
            _perceptual_input(img),
            _perceptual_input(target),
            state["perc_target"],
            cfg.perceptual,
        )[0]
        reg = noise_regularizer(params["noise"])
        loss = cfg.mse_weight * mse + cfg.perceptual_weight * perc + cfg.noise_reg_weight * reg
        return loss, dict(loss=loss, mse=mse, perceptual=perc, noise_reg=reg, lr=lr)

    grads, metrics = jax.grad(loss_fn, has_aux=True)(state["params"])
    updates, opt = optax.scale_by_adam(0.9, 0.999, 1e-8).update(grads, state["opt"])
    params = jax.tree_util.tree_map(lambda p, u: p - lr * u, state["params"], updates)
    if cfg.optimize_noise:
        params = dict(params, noise=_renormalize(params["noise"]))
    return dict(state, t=state["t"] + 1, key=key, params=params, opt=opt), metrics


def result(state, frozen: base.Frozen, cfg):
    params, fixed = state["params"], state["fixed"]
    out = dict(
        latent=frozen.arch.from_free(params["w"], fixed),
        recon=_render(frozen, params, fixed),
        tuned=None,
    )
    if cfg.optimize_noise:
        out["noise"] = params["noise"]
    return out


def converged(metrics, cfg):
    return metrics["mse"] < cfg.stop_mse


METHOD = base.Method(
    "latent_opt", init, step, result, default_config, converged, tunes_weights=False
)
