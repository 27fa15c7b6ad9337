"""Paper 000's encoders as inversion methods: `encoder` and `encoder_ft`.

  encoder     the trained encoder's reconstruction G(E(x)) in one forward pass: zero steps. For
              datasets too large for any per-image optimization.
  encoder_ft  paper 000's per-image fine-tuning: every image tunes its own copy of E (the engine
              batches the copies like PTI's per-image generators) with the fine-tuning loss
                L_E = L_img(y, G(E(y))) + eps L_LS,
                L_img = 5 MSE + 3 (1 - cos) + 2 LPIPS + 1 (1 - SSIM),
                L_LS = L_lat(E(y), E(G(E(y)))) + L_lat(z_c, z_c')   (codes and 4x4 features)
              with Adam beta = (0, 0.99) (paper 000's optimizer). The latent is E_tuned(y); G stays
              frozen. The paper runs 3,500 iterations per image; here `config.steps`.

Both take the encoder from `Frozen.encoder` (`make_frozen(..., encoder=TrainedEncoder)`) and
encode the image themselves: the engine's `init_latent` is ignored (`Method.encodes`). E runs in
evaluation mode (no noise, no dropout), so a step is deterministic and the result is E's encoding.
A z encoder (CRG to z) goes through G's frozen mapping; a CRG encoder has no 4x4 feature, so its
L_LS is the code term alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ganinv_jax import encoders
from ganinv_jax.inversion import base
from ganinv_jax.losses import seed000


def _check(frozen: base.Frozen) -> None:
    if frozen.encoder is None:
        raise ValueError(
            "the encoder methods need a trained encoder: "
            "make_frozen(..., encoder=pretrained.load_encoder(DIR))"
        )


def encode_ws(frozen: base.Frozen, params, images):
    """images [N,H,W,C] -> (G's ws [N, num_ws, w_dim], the 4x4 feature z_c or None) with encoder
    params `params` (evaluation mode)."""
    cfg = frozen.encoder_cfg
    latents, zc = encoders.encode_with_features(cfg, params, images)
    return encoders.to_ws(cfg, latents, mapping=lambda z: base.mapping(frozen, z)), zc


# ----------------------------------------------------------------------------- encoder


def encoder_default_config() -> ml_collections.ConfigDict:
    # No num_steps: a method without a step schedule takes zero steps in the invert job.
    return ml_collections.ConfigDict()


def encoder_init(key, image, frozen: base.Frozen, init_latent, cfg):
    del key, init_latent, cfg
    _check(frozen)
    return dict(ws=encode_ws(frozen, frozen.encoder, image[None])[0][0])


def encoder_step(state, frozen, cfg):
    del frozen, cfg
    return state, dict(loss=jnp.zeros((), jnp.float32))


def encoder_result(state, frozen: base.Frozen, cfg):
    del cfg
    return dict(latent=state["ws"], recon=base.synthesize(frozen, state["ws"][None])[0], tuned=None)


def encoder_converged(metrics, cfg):
    del metrics, cfg
    return jnp.asarray(True)


# ----------------------------------------------------------------------------- encoder_ft


def ft_default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.num_steps = 200  # the paper: 3,500 per image
    c.lr = 0.0015  # paper 000's Adam lr (its domain fine-tuning uses 0.01 over 1,500 images)
    c.b1 = 0.0
    c.b2 = 0.99
    c.w_mse = 5.0
    c.w_cos = 3.0
    c.w_lpips = 2.0  # LPIPS with the job's net (Frozen.lpips)
    c.w_ssim = 1.0
    c.eps = 0.01  # weight of L_LS
    c.stop_mse = -1.0  # stop once the [-1, 1] MSE is below this (< 0: off)
    return c


def _tx(cfg):
    return optax.adam(cfg.lr, b1=cfg.b1, b2=cfg.b2)


def ft_init(key, image, frozen: base.Frozen, init_latent, cfg):
    del init_latent
    _check(frozen)
    if cfg.w_lpips and frozen.lpips is None:
        raise ValueError("encoder_ft: w_lpips > 0 but frozen.lpips is None")
    return dict(key=key, image=image, params=frozen.encoder, opt=_tx(cfg).init(frozen.encoder))


def ft_step(state, frozen: base.Frozen, cfg):
    y = state["image"][None]

    def loss_fn(params):
        ws, zc = encode_ws(frozen, params, y)
        y_rec = base.synthesize(frozen, ws)
        ws_c, zc_c = encode_ws(frozen, params, y_rec)
        flat = lambda a: a.reshape(a.shape[0], -1)  # noqa: E731
        img = seed000.image_loss(
            y, y_rec, frozen.lpips, seed000.image_loss_config_from(cfg, frozen.lpips_net)
        )
        cycle = seed000.latent_loss(flat(ws), flat(ws_c))
        if zc is not None:
            cycle = cycle + seed000.latent_loss(flat(zc), flat(zc_c))
        loss = (img + cfg.eps * cycle)[0]
        return loss, dict(loss=loss, mse=base.mse1(y_rec[0], y[0]), cycle=cycle[0])

    grads, metrics = jax.grad(loss_fn, has_aux=True)(state["params"])
    updates, opt = _tx(cfg).update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    return dict(state, params=params, opt=opt), metrics


def ft_result(state, frozen: base.Frozen, cfg):
    del cfg
    ws = encode_ws(frozen, state["params"], state["image"][None])[0]
    return dict(
        latent=ws[0],
        recon=base.synthesize(frozen, ws)[0],
        tuned=base.tree_sub(state["params"], frozen.encoder),
    )


def ft_converged(metrics, cfg):
    return metrics["mse"] < cfg.stop_mse


ENCODER = base.Method(
    "encoder",
    encoder_init,
    encoder_step,
    encoder_result,
    encoder_default_config,
    encoder_converged,
    tunes_weights=False,
    encodes=True,
)


def ft_state_metrics(state, frozen: base.Frozen, cfg):
    """drift: ||φ - φ0|| / ||φ0|| of the tuned encoder."""
    return dict(drift=base.relative_change(state["params"], frozen.encoder))


ENCODER_FT = base.Method(
    "encoder_ft",
    ft_init,
    ft_step,
    ft_result,
    ft_default_config,
    ft_converged,
    tunes_weights=True,
    encodes=True,
    state_metrics=ft_state_metrics,
)
