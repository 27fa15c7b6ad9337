"""Clone — "Near Perfect GAN Inversion" (paper 001), Algorithm 1, for one image.

Start from a latent w (W+; given by an encoder or latent optimization: Algorithm 1's h(x)) that
stays fixed; copies of G and D are tweaked. Every step t:
  u ~ U[0, 1); local = u < p
  L_recon     = Laplacian-pyramid L1 (sum over levels of mean |L_k(x) - L_k(G(w))|)
                (`recon_loss='mse'`: the MSE instead -- not the paper)
  L_adv_local = log D(x) + log(1 - D(G(w)))
  L_local     = L_recon + λ L_adv_local        if local else 0
  L_global    = the GAN's own StyleGAN2 loss on real samples and fresh z
  G ← Adam(∂(L_local + L_global)/∂G);  D ← Adam(its side of the same objective)
  stop when L_recon < ε   (the engine's convergence mask; L_recon of this step's G)
Paper defaults: p = 1/4 (faces), λ = 10, ε = 0.001, T = 100k (our `num_steps` is a cap).

Our choices (the paper is silent or defers to its supplement):
  * G's side of L_adv_local: `g_adv_local='minimax'` (default) minimizes the paper's literal
    log(1 - D(G(w))) = -softplus(l); 'nonsaturating' uses softplus(-l) like StyleGAN2's G loss.
    D's side: D maximizes L_adv_local, i.e. minimizes λ (softplus(-D(x)) + softplus(D(G(w)))).
  * L_global = StyleGAN2's: G non-saturating softplus(-D(G(z))); D logistic loss + lazy R1
    (gamma `r1_gamma`, every `r1_interval` steps, on the real batch, with StyleGAN2's lazy Adam
    correction). No path-length regularizer and no style mixing (they shape training, not this
    local tweak).
  * Real samples: `global_batch` images drawn (per-image key) from `Frozen.reals`, a batch of G's
    training data passed in frozen. FALLBACK when `Frozen.reals` is None: samples of the frozen
    ORIGINAL G (random z, random noise) stand in for p_x — this only anchors the tuned G to the
    original one; it is not the paper's setting.
  * D sees the query and the reals in ONE batch [x, reals] (and [G(w), fakes]) so its
    minibatch-stddev layer sees a normal group: global_batch + 1 should be a multiple of
    `mbstd_group_size` (default 3 + 1 = 4). R1 is taken on that real batch.
  * lr: both G and D use StyleGAN2's training Adam (lr 0.002, betas (0, 0.99), eps 1e-8) — the
    global term IS the pretrained GAN's training, so its own optimizer settings keep it stable;
    D's lr/betas get the lazy-R1 correction. D's are their own keys (`d_lr`, `d_betas`), so a
    job that speeds G's per-image step up does not speed D's game up with it.
  * λ = 0 and `global_weight` 0 (both GAN terms off; the main job's setting, README "Round 7")
    leave L_recon alone: the step then skips D, the fakes and the reals (`plays_the_gan`).
  * The whole G (mapping + synthesis) is tuned (L_global samples z through the mapping); fakes use
    random noise, the reconstruction uses constant noise. `tuned` in the result is the delta of G's
    params against the frozen base (the tuned D is kept in the state only).

Other architectures (`Frozen.arch`): the latent w is the arch's (PGGAN z, BigGAN z + class), the
fakes of L_global come from the arch's prior (PGGAN z ~ N(0, I); BigGAN truncated z + a random
one-hot class), and L_global is the model's OWN GAN loss (`arch.gan_loss`), as pytorch_GAN_zoo's
`BaseGAN.optimizeParameters` computes it for PGGAN, with the checkpoint's settings: the criterion
('wgangp': D -sum D(x) + sum D(G(z)), G -sum D(G(z)); 'logistic' / 'dcgan': softplus, means;
'mse': MSE of sigmoid(D) to 1 / 0), + lambda_gp * WGAN-GP gradient penalty (every step, one
uniform mix per sample of reals and fakes), + epsilon_d * sum D(x)^2, + logistic_grad_real * R1
(mean over samples). `r1_gamma` / `r1_interval` and the lazy-R1 Adam correction are StyleGAN2's
only; the `r1` metric reports the D penalty in force. BigGAN ships no D: Clone runs with a D of
one's own (`arch_for(cfg, d_apply=fn)` + `make_frozen(..., d_vars=...)`) or refuses.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ganinv_jax.inversion import base
from ganinv_jax.losses import gan as gan_losses
from ganinv_jax.losses import pyramid


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.num_steps = 1000  # cap (paper: T = 100k)
    c.p = 0.25  # probability of a local step (faces; 1/8 cars, 1/32 AFHQ)
    c.lam = 10.0  # λ (20 for horses)
    c.eps = 1e-3  # stop when L_recon < eps
    c.pyramid_levels = 5
    c.recon_loss = "pyramid_l1"  # L_recon: 'pyramid_l1' (paper) | 'mse' (not the paper; eps
    # then thresholds the MSE)
    c.g_adv_local = "minimax"  # 'minimax' (paper's log(1 - D)) | 'nonsaturating'
    c.global_batch = 3
    c.global_weight = 1.0  # 0 switches L_global (and D's R1) off: an ablation, not the paper
    c.lr = 0.002
    c.lr_rampdown = 0.0  # > 0: cosine ramp-down of G's lr over this last fraction (not the paper)
    c.lr_rampup = 0.0  # > 0: linear ramp-up of G's lr over this first fraction (not the paper)
    c.betas = (0.0, 0.99)
    c.d_lr = 0.002  # D's Adam: StyleGAN2's training settings (the paper: as G's), kept apart
    c.d_betas = (0.0, 0.99)  # so that a faster per-image G step does not speed D's game up
    c.tune_mapping = True  # False: only the synthesis network is tuned (StyleGAN2; not the
    # paper): the mapping is reached by L_global alone, which Adam steps at the full lr
    c.r1_gamma = 10.0
    c.r1_interval = 16
    return c


def _txs(cfg, arch=None):
    # the lazy-R1 correction belongs to StyleGAN2's loss (its R1 runs every r1_interval steps)
    lazy = arch is None or arch.gan_loss == "stylegan2"
    d_lr, d_betas = gan_losses.lazy_adam_hparams(
        cfg.d_lr, tuple(cfg.d_betas), cfg.r1_interval if lazy else None
    )
    return (
        optax.adam(
            base.tuning_lr(cfg.lr, cfg.num_steps, cfg.lr_rampdown, cfg.lr_rampup),
            b1=cfg.betas[0],
            b2=cfg.betas[1],
            eps=1e-8,
        ),
        optax.adam(d_lr, b1=d_betas[0], b2=d_betas[1], eps=1e-8),
    )


def init(key, image, frozen: base.Frozen, init_latent, cfg):
    if frozen.d is None or not frozen.arch.has_discriminator:
        extra = (
            ""
            if frozen.arch.has_discriminator
            else f" and arch_for(cfg, d_apply=fn): {frozen.arch.name} has none of its own"
        )
        raise ValueError(
            f"clone needs the discriminator: make_frozen(..., d_vars=D variables){extra}"
        )
    tx_g, tx_d = _txs(cfg, frozen.arch)
    g, d = frozen.g["params"], frozen.d["params"]
    return dict(
        t=jnp.asarray(0, jnp.int32),
        key=key,
        image=image,
        ws=frozen.arch.check_latent(init_latent),
        g=g,
        d=d,
        g_opt=tx_g.init(g),
        d_opt=tx_d.init(d),
    )


def local_indicator(key, p: float):
    """Algorithm 1 lines 5-6: u ~ U[0,1); local iff u < p."""
    return jax.random.uniform(key) < p


def sample_reals(frozen: base.Frozen, key, n: int):
    """n real samples from `Frozen.reals`, or (fallback) from the frozen original G."""
    if frozen.reals is not None:
        idx = jax.random.randint(key, (n,), 0, frozen.reals.shape[0])
        return frozen.reals[idx]
    kz, kn = jax.random.split(key)
    return jax.lax.stop_gradient(
        base.synthesize(frozen, base.random_ws(frozen, kz, n), noise_mode="random", rng=kn)
    )


def g_local_adv(fake_logit, kind: str):
    if kind == "minimax":
        return -jax.nn.softplus(fake_logit)  # log(1 - sigmoid(l))
    if kind == "nonsaturating":
        return jax.nn.softplus(-fake_logit)
    raise ValueError(f"clone: g_adv_local must be 'minimax' or 'nonsaturating', got {kind!r}")


def recon_loss(image, recon, cfg):
    """L_recon of one image: the paper's Laplacian-pyramid L1, or (recon_loss='mse') the MSE."""
    if cfg.recon_loss == "pyramid_l1":
        return pyramid.laplacian_pyramid_l1(image[None], recon[None], cfg.pyramid_levels)[0]
    if cfg.recon_loss == "mse":
        return base.mse1(recon, image)
    raise ValueError(f"clone: recon_loss must be 'pyramid_l1' or 'mse', got {cfg.recon_loss!r}")


def plays_the_gan(cfg) -> bool:
    """False when both GAN terms are off (λ = 0 and L_global's weight 0): D, the fakes and the
    reals then do not enter the objective, and the step skips them (a Python-level branch: the
    config is static) -- the tuning is L_recon alone, one synthesis per step. A weight that is
    a traced value (a caller sweeping it under jit) counts as on."""
    static_zero = lambda x: isinstance(x, (int, float)) and x == 0  # noqa: E731
    return not (static_zero(cfg.lam) and static_zero(cfg.global_weight))


def g_loss(g_params, d_params, frozen, ws, image, local, z, noise_key, cfg):
    """G's side of L = 1_p[L_recon + λ L_adv_local] + L_global. Returns (loss, aux)."""
    x_star = base.synthesize(frozen, ws[None], g_params)
    if not plays_the_gan(cfg):
        recon = recon_loss(image, x_star[0], cfg)
        zero = jnp.zeros((), jnp.float32)
        aux = dict(x_star=x_star, recon=recon, g_global=zero, g_local=recon, logit_query=zero)
        return jnp.where(local, recon, 0.0), aux
    fakes = base.synthesize(
        frozen,
        base.latents_from_prior(frozen, z, g_params),
        g_params,
        noise_mode="random",
        rng=noise_key,
    )
    logits = base.discriminate(frozen, jnp.concatenate([x_star, fakes]), d_params)
    recon = recon_loss(image, x_star[0], cfg)
    local_loss = recon + cfg.lam * g_local_adv(logits[0], cfg.g_adv_local)
    global_loss = g_global_loss(frozen.arch, logits[1:])
    loss = jnp.where(local, local_loss, 0.0) + cfg.global_weight * global_loss
    return loss, dict(
        x_star=x_star,
        fakes=fakes,
        recon=recon,
        g_global=global_loss,
        g_local=local_loss,
        logit_query=logits[0],
    )


def g_global_loss(arch, fake_logits):
    """G's side of the model's own GAN loss on the fakes' logits [n] (`arch.gan_loss`)."""
    kind = arch.gan_loss
    if kind in ("stylegan2", "logistic", "dcgan"):
        return jnp.mean(gan_losses.g_nonsaturating_loss(fake_logits))
    if kind == "wgangp":
        return -jnp.sum(fake_logits)  # the zoo's WGANGP criterion sums over the batch
    if kind == "mse":
        return jnp.mean(jnp.square(jax.nn.sigmoid(fake_logits) - 1.0))
    raise ValueError(f"clone: unknown GAN loss {kind!r}")


def _zoo_d_global(arch, d_fn, real_logits, fake_logits, reals, fakes, key):
    """D's side of a non-StyleGAN2 loss (pytorch_GAN_zoo's `optimizeParameters`): (criterion +
    epsilon term, penalty metric, penalty term)."""
    kind = arch.gan_loss
    if kind == "wgangp":
        adv = -jnp.sum(real_logits) + jnp.sum(fake_logits)
    elif kind in ("logistic", "dcgan"):
        adv = jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))
    elif kind == "mse":
        adv = jnp.mean(jnp.square(jax.nn.sigmoid(real_logits) - 1.0)) + jnp.mean(
            jnp.square(jax.nn.sigmoid(fake_logits))
        )
    else:
        raise ValueError(f"clone: unknown GAN loss {kind!r}")
    eps = float(getattr(arch, "epsilon_d", 0.0))
    if eps > 0:
        adv = adv + eps * jnp.sum(jnp.square(real_logits))
    penalty = jnp.zeros((), jnp.float32)
    term = jnp.zeros((), jnp.float32)
    lam = float(getattr(arch, "lambda_gp", 0.0))
    if lam > 0:  # WGAN-GP on one uniform mix of each real with a fake
        if key is None:
            raise ValueError("clone: the gradient penalty needs a PRNG key")
        n = reals.shape[0]
        mix = jax.random.uniform(key, (n,) + (1,) * (reals.ndim - 1))
        x_hat = mix * reals + (1.0 - mix) * jax.lax.stop_gradient(fakes)
        grads = jax.grad(lambda x: jnp.sum(d_fn(x)))(x_hat)
        norms = jnp.sqrt(jnp.sum(jnp.square(grads.reshape(n, -1)), axis=1) + 1e-12)
        penalty = jnp.mean(jnp.square(norms - 1.0))
        term = lam * penalty
    r1w = float(getattr(arch, "logistic_grad_real", 0.0))
    if r1w > 0:
        r1 = jnp.mean(gan_losses.r1_penalty(d_fn, reals))
        penalty = penalty + r1
        term = term + r1w * r1
    return adv, penalty, term


def d_loss(d_params, frozen, image, x_star, fakes, reals, local, t, cfg, key=None):
    """D's side: 1_p[λ (softplus(-D(x)) + softplus(D(G(w))))] + the model's own loss (StyleGAN2:
    logistic loss + lazy R1; others: see the module docstring; `key` draws the GP mixes)."""
    real_batch = jnp.concatenate([image[None], reals])
    d_fn = lambda imgs: base.discriminate(frozen, imgs, d_params)
    real_logits = d_fn(real_batch)
    fake_logits = d_fn(jax.lax.stop_gradient(jnp.concatenate([x_star, fakes])))
    local_loss = cfg.lam * gan_losses.d_logistic_loss(real_logits[0], fake_logits[0])
    if frozen.arch.gan_loss == "stylegan2":
        global_loss = jnp.mean(jax.nn.softplus(fake_logits[1:])) + jnp.mean(
            jax.nn.softplus(-real_logits[1:])
        )
        r1 = jnp.zeros((), jnp.float32)
        if cfg.r1_gamma > 0:
            r1 = jax.lax.cond(
                gan_losses.lazy_reg_active(t, cfg.r1_interval),
                lambda x: jnp.mean(gan_losses.r1_penalty(d_fn, x)),
                lambda x: jnp.zeros((), jnp.float32),
                real_batch,
            )
        r1_term = gan_losses.lazy_reg_gain(cfg.r1_interval) * cfg.r1_gamma / 2.0 * r1
    else:
        global_loss, r1, r1_term = _zoo_d_global(
            frozen.arch, d_fn, real_logits[1:], fake_logits[1:], reals, fakes, key
        )
    loss = jnp.where(local, local_loss, 0.0) + cfg.global_weight * (global_loss + r1_term)
    return loss, dict(d_global=global_loss, d_local=local_loss, r1=r1, logit_target=real_logits[0])


def tunable_grads_only(g_grads, arch):
    """G's gradients with every leaf outside `arch.tunable` (StyleGAN2: the mapping) zeroed; a
    zero gradient is a zero Adam step (its moments stay 0), so only the tunable sub-tree moves.
    Architectures that tune all of G are returned unchanged."""
    if arch.tunable_key is None:
        return g_grads
    zero = lambda t: jax.tree_util.tree_map(jnp.zeros_like, t)  # noqa: E731
    return {k: v if k == arch.tunable_key else zero(v) for k, v in g_grads.items()}


def _d_step(state, frozen, gaux, local, key, cfg, tx_d):
    """D's Adam step on its side of the objective; `key` draws the reals (and the GP mixes)."""
    reals = sample_reals(frozen, key, cfg.global_batch)
    (dl, daux), d_grads = jax.value_and_grad(d_loss, has_aux=True)(
        state["d"],
        frozen,
        state["image"],
        gaux["x_star"],
        gaux["fakes"],
        reals,
        local,
        state["t"],
        cfg,
        key=None if frozen.arch.gan_loss == "stylegan2" else jax.random.fold_in(key, 1),
    )
    d_up, d_opt = tx_d.update(d_grads, state["d_opt"], state["d"])
    return optax.apply_updates(state["d"], d_up), d_opt, dl, daux


def step(state, frozen: base.Frozen, cfg):
    key, ku, kz, kn, kr = jax.random.split(state["key"], 5)
    local = local_indicator(ku, cfg.p)
    z = frozen.arch.sample_prior(kz, cfg.global_batch)
    tx_g, tx_d = _txs(cfg, frozen.arch)

    (gl, gaux), g_grads = jax.value_and_grad(g_loss, has_aux=True)(
        state["g"], state["d"], frozen, state["ws"], state["image"], local, z, kn, cfg
    )
    if plays_the_gan(cfg):
        d_params, d_opt, dl, daux = _d_step(state, frozen, gaux, local, kr, cfg, tx_d)
    else:  # no GAN term: D is not in the objective and stays as it is
        zero = jnp.zeros((), jnp.float32)
        d_params, d_opt, dl = state["d"], state["d_opt"], zero
        daux = dict(d_global=zero, r1=zero, logit_target=zero)
    if not cfg.tune_mapping:
        g_grads = tunable_grads_only(g_grads, frozen.arch)
    g_up, g_opt = tx_g.update(g_grads, state["g_opt"], state["g"])
    new = dict(
        state,
        t=state["t"] + 1,
        key=key,
        g=optax.apply_updates(state["g"], g_up),
        d=d_params,
        g_opt=g_opt,
        d_opt=d_opt,
    )
    mse = base.mse1(gaux["x_star"][0], state["image"])
    # Diagnostics (curves in benchmarks/sweep_method.py): D's logits on the reconstruction
    # G(w) and on the target x; the weights' drift is `state_metrics`.
    metrics = dict(
        loss=gl,
        recon=gaux["recon"],
        mse=mse,
        local=local.astype(jnp.float32),
        g_global=gaux["g_global"],
        g_local=gaux["g_local"],
        d_loss=dl,
        d_global=daux["d_global"],
        r1=daux["r1"],
        logit_query=gaux["logit_query"],
        logit_target=daux["logit_target"],
    )
    return new, metrics


def result(state, frozen: base.Frozen, cfg):
    recon = base.synthesize(frozen, state["ws"][None], state["g"])[0]
    return dict(
        latent=state["ws"], recon=recon, tuned=base.tree_sub(state["g"], frozen.g["params"])
    )


def converged(metrics, cfg):
    return metrics["recon"] < cfg.eps


def tuned_g(state, frozen: base.Frozen, cfg):
    return state["g"]


def state_metrics(state, frozen: base.Frozen, cfg):
    return base.g_drift(frozen, frozen.arch.tunable(state["g"]))


METHOD = base.Method(
    "clone",
    init,
    step,
    result,
    default_config,
    converged,
    tunes_weights=True,
    tuned_g=tuned_g,
    state_metrics=state_metrics,
)
