"""GAN objectives: non-saturating logistic G/D losses, R1 with lazy regularization, path length.

These are the StyleGAN2 objectives (Karras et al. 2020, and the stylegan2-ada-pytorch `loss.py`
conventions), which Clone calls its "global" loss: while Clone tweaks G and D locally for one
image, G and D keep training on their original objective so they do not forget the distribution.

Conventions:
  * logits are raw discriminator outputs (before any sigmoid); elementwise functions keep the
    logits' shape so Clone's per-image local adversarial term is vmap-safe;
  * `d_fn` is a pure function images -> logits with D's params closed over, so that R1 can
    differentiate with respect to the images;
  * lazy regularization (StyleGAN2 sec. 4.1): R1 runs every `interval` D steps, scaled by
    gain = interval so that its average strength is unchanged; the optimizer of a lazily
    regularized network uses lr * c and betas ** c with c = interval / (interval + 1).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

LogitsFn = Callable[[jax.Array], jax.Array]


def g_nonsaturating_loss(fake_logits: jax.Array) -> jax.Array:
    """-log sigmoid(D(G(z))) = softplus(-D(G(z))), elementwise."""
    return jax.nn.softplus(-fake_logits)


def d_logistic_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """-log sigmoid(D(x)) - log(1 - sigmoid(D(G(z)))), elementwise (shapes must broadcast)."""
    return jax.nn.softplus(fake_logits) + jax.nn.softplus(-real_logits)


def r1_penalty(d_fn: LogitsFn, reals: jax.Array) -> jax.Array:
    """R1 = |grad_x D(x)|^2 per sample ([N]), on real images only (Mescheder et al. 2018).

    The gradient of the SUM of logits gives every sample's own gradient when D treats samples
    independently (and equals StyleGAN2's definition when D has a minibatch-stddev layer).
    """
    grads = jax.grad(lambda x: jnp.sum(d_fn(x)))(reals)
    return jnp.sum(jnp.reshape(grads * grads, (grads.shape[0], -1)), axis=1)


def lazy_reg_gain(interval: int | None) -> float:
    """Scale of a regularizer that runs every `interval` steps (1 when it runs every step)."""
    if interval is None or interval <= 1:
        return 1.0
    return float(interval)


def lazy_reg_active(step: jax.Array | int, interval: int | None) -> jax.Array:
    """True on the steps where a lazily evaluated regularizer runs (step % interval == 0)."""
    if interval is None or interval <= 1:
        return jnp.asarray(True)
    return jnp.asarray(step) % interval == 0


def lazy_adam_hparams(
    lr: float, betas: tuple[float, float], interval: int | None
) -> tuple[float, tuple[float, float]]:
    """StyleGAN2's optimizer correction for lazy regularization: lr * c, betas ** c."""
    if interval is None or interval <= 1:
        return lr, betas
    c = interval / (interval + 1)
    return lr * c, (betas[0] ** c, betas[1] ** c)


def stylegan2_global_loss(
    real_logits: jax.Array,
    fake_logits: jax.Array,
    r1: jax.Array | None = None,
    *,
    r1_gamma: float = 10.0,
    r1_gain: float = 1.0,
) -> dict[str, jax.Array]:
    """StyleGAN2's own objective from given logits: {'g', 'd', 'd_adv', 'r1'} (scalars).

    g: mean softplus(-D(G(z))) (differentiate w.r.t. G's params through fake_logits);
    d: mean logistic D loss + r1_gain * r1_gamma / 2 * mean(r1) (w.r.t. D's params; pass fake
       logits of stop-gradient fakes). `r1` is the per-sample `r1_penalty` (None: no R1 this step).
    """
    g = jnp.mean(g_nonsaturating_loss(fake_logits))
    d_adv = jnp.mean(jax.nn.softplus(fake_logits)) + jnp.mean(jax.nn.softplus(-real_logits))
    r1_mean = jnp.zeros((), jnp.float32) if r1 is None else jnp.mean(r1)
    d = d_adv + r1_gain * (r1_gamma / 2.0) * r1_mean
    return {"g": g, "d": d, "d_adv": d_adv, "r1": r1_mean}


def stylegan2_d_loss(
    d_fn: LogitsFn,
    reals: jax.Array,
    fakes: jax.Array,
    step: jax.Array | int,
    *,
    r1_gamma: float = 10.0,
    r1_interval: int | None = 16,
) -> dict:
    """D's StyleGAN2 loss with lazy R1 computed only on active steps (lax.cond skips the cost)."""
    real_logits = d_fn(reals)
    fake_logits = d_fn(jax.lax.stop_gradient(fakes))
    gain = lazy_reg_gain(r1_interval)
    r1 = jax.lax.cond(
        lazy_reg_active(step, r1_interval),
        lambda x: r1_penalty(d_fn, x),
        lambda x: jnp.zeros((x.shape[0],), jnp.float32),
        reals,
    )
    return stylegan2_global_loss(real_logits, fake_logits, r1, r1_gamma=r1_gamma, r1_gain=gain)


def path_length_penalty(
    synth_fn: Callable[[jax.Array], jax.Array],
    ws: jax.Array,
    key: jax.Array,
    pl_mean: jax.Array,
    decay: float = 0.01,
) -> tuple[jax.Array, jax.Array]:
    """StyleGAN2 path-length regularizer: ((|J_w^T y| - a)^2 per sample, updated a).

    ws: [N, L, D] per-layer latents; y ~ N(0, I) / sqrt(H W) image-space noise; a is the running
    mean of path lengths (carry it in the training state, start at 0). Weight 2 and interval 4 in
    StyleGAN2 (use `lazy_reg_gain`).
    """
    images, vjp = jax.vjp(synth_fn, ws)
    h, w = images.shape[1], images.shape[2]
    noise = jax.random.normal(key, images.shape, images.dtype) / jnp.sqrt(float(h * w))
    (grads,) = vjp(noise)
    lengths = jnp.sqrt(
        jnp.mean(jnp.sum(grads * grads, axis=-1), axis=tuple(range(1, grads.ndim - 1)))
    )
    new_mean = jax.lax.stop_gradient(pl_mean + decay * (jnp.mean(lengths) - pl_mean))
    return (lengths - new_mean) ** 2, new_mean
