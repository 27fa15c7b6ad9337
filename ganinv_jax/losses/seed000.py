"""Seed-000 ("fine-tuned adaptive GAN encoders") image and latent losses, with cropped attentions.

  L_img(x, x') = 5 MSE + 3 (1 - cos) + 2 LPIPS_vgg + 1 (1 - SSIM)
SSIM and LPIPS are computed on images average-pooled to <= 256 px (MSE and cos at full size).
Pre-training adds cropped attentions, each crop resized back to the full image size as the paper
does: L = L_img(x, x') + mu1 L_img(AT1) + mu2 L_img(AT2), and a latent term 0.01 L_lat(w, w').
  aligned images:    AT1 keeps all rows and columns [W/8, W - W/8); AT2 removes a 5/32 margin on
                     every side (integer pixel bounds: floor).
  misaligned images: Grad-CAM (see gradcam.py) -> AT1 = the heat map used as a weight on both
                     images ('weight', default) or the box of heat >= 0.2 ('box');
                     AT2 = the box of heat >= 0.5. The heat map comes from x and x' without
                     gradient.
  (mu1, mu2) presets: 'paper' (0.375, 0.625), 'strategy1' (1, 1), 'strategy2' (5, 9).
Latent losses: L_lat = 5 MSE + 3 (1 - cos); fine-tuning adds eps * L_LS with
  L_LS = L_lat(w, w') + L_lat(z_c, z_c'), w' = E(G(E(y))) (cycle consistency), eps = 0.01.

Every function returns per-image values [N]. cos_mode='batch' reproduces the public code's
whole-batch cosine (see common.cosine_similarity) and couples the images of a batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Mapping

import jax
import jax.numpy as jnp

from ganinv_jax.losses import common
from ganinv_jax.losses import gradcam as gradcam_lib
from ganinv_jax.losses import perceptual as lpips_lib
from ganinv_jax.losses import structural as ssim_lib

MU_PRESETS = {"paper": (0.375, 0.625), "strategy1": (1.0, 1.0), "strategy2": (5.0, 9.0)}


@dataclasses.dataclass(frozen=True)
class ImageLossConfig:
    """Weights of L_img; frozen so it can be a static jit argument."""

    w_mse: float = 5.0
    w_cos: float = 3.0
    w_lpips: float = 2.0
    w_ssim: float = 1.0
    cos_mode: common.CosMode = "per_sample"
    max_size: int = 256  # SSIM / LPIPS on images pooled to at most this size
    lpips_net: str = "vgg"
    lpips_dtype: Any = jnp.float32


def image_loss_config_from(c, lpips_net: str = "vgg") -> ImageLossConfig:
    """An `ImageLossConfig` from a config node with w_mse, w_cos, w_lpips, w_ssim (and optionally
    cos_mode, max_size): the encoder trainer's `config.loss` and `encoder_ft`'s method config."""
    d = ImageLossConfig()
    return ImageLossConfig(
        w_mse=c.w_mse,
        w_cos=c.w_cos,
        w_lpips=c.w_lpips,
        w_ssim=c.w_ssim,
        cos_mode=c.get("cos_mode", d.cos_mode),
        max_size=c.get("max_size", d.max_size),
        lpips_net=lpips_net,
    )


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    """Cropped attentions. mode: 'aligned' (fixed AT1/AT2 boxes), 'gradcam' or 'none'."""

    mode: Literal["aligned", "gradcam", "none"] = "aligned"
    mu: tuple[float, float] = MU_PRESETS["paper"]
    gradcam_target: gradcam_lib.Target = "loss_energy"
    at1_mode: Literal["weight", "box"] = "weight"
    at1_threshold: float = 0.2
    at2_threshold: float = 0.5


# ----------------------------------------------------------------------------- image loss


TERMS = ("mse", "cos", "lpips", "ssim")


def weighted_terms(cfg: ImageLossConfig) -> tuple[str, ...]:
    """The L_img terms with a non-zero weight (the only ones `image_loss` computes)."""
    return tuple(t for t in TERMS if getattr(cfg, f"w_{t}") != 0)


def image_loss_terms(
    x: jax.Array,
    x_rec: jax.Array,
    lpips_params: Any = None,
    cfg: ImageLossConfig = ImageLossConfig(),
    names: tuple[str, ...] = TERMS,
) -> dict[str, jax.Array]:
    """The L_img terms per image ([N] each): mse, cos (=1-cos), lpips, ssim (=1-SSIM).

    `names` picks the terms computed (all four by default)."""
    common.check_image_pair(x, x_rec, "image_loss")
    if lpips_params is None and "lpips" in names:
        lpips_params = lpips_lib.load_lpips_params(cfg.lpips_net)
    xp = common.pool_to_max_size(x, cfg.max_size)
    rp = common.pool_to_max_size(x_rec, cfg.max_size)
    fns = {
        "mse": lambda: common.mse(x, x_rec),
        "cos": lambda: 1.0 - common.cosine_similarity(x, x_rec, cfg.cos_mode),
        "lpips": lambda: lpips_lib.lpips_apply(
            lpips_params, xp, rp, net=cfg.lpips_net, dtype=cfg.lpips_dtype
        ),
        "ssim": lambda: 1.0 - ssim_lib.ssim(xp, rp),
    }
    return {t: fns[t]() for t in names}


def image_loss(
    x: jax.Array,
    x_rec: jax.Array,
    lpips_params: Any = None,
    cfg: ImageLossConfig = ImageLossConfig(),
) -> jax.Array:
    """L_img = 5 MSE + 3 (1 - cos) + 2 LPIPS + 1 (1 - SSIM) per image ([N]).

    Terms with weight 0 are not computed (XLA would not drop a `0 * LPIPS` by itself)."""
    names = weighted_terms(cfg)
    t = image_loss_terms(x, x_rec, lpips_params, cfg, names)
    return sum((getattr(cfg, f"w_{k}") * t[k] for k in names), jnp.zeros((x.shape[0],)))


# ----------------------------------------------------------------------------- attentions


def aligned_boxes(h: int, w: int) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """(AT1, AT2) boxes (top, left, bottom, right; exclusive) for center-aligned images."""
    m1 = w // 8
    mh, mw = (5 * h) // 32, (5 * w) // 32
    return (0, m1, h, w - m1), (mh, mw, h - mh, w - mw)


def _crop_static(x: jax.Array, box: tuple[int, int, int, int]) -> jax.Array:
    t, l, b, r = box
    crop = x[:, t:b, l:r, :]
    return jax.image.resize(crop, x.shape, "bilinear")  # back to full size, as in the paper


def attention_pairs(
    x: jax.Array,
    x_rec: jax.Array,
    att: AttentionConfig,
    lpips_params: Any = None,
    classifier_params: Mapping | None = None,
) -> list[tuple[jax.Array, jax.Array]]:
    """[(x1, x1'), (x2, x2')] for AT1 and AT2 (empty for mode='none'), each at full image size."""
    if att.mode == "none":
        return []
    if att.mode == "aligned":
        b1, b2 = aligned_boxes(x.shape[1], x.shape[2])
        return [
            (_crop_static(x, b1), _crop_static(x_rec, b1)),
            (_crop_static(x, b2), _crop_static(x_rec, b2)),
        ]
    if att.mode != "gradcam":
        raise ValueError(
            f"attention: unknown mode {att.mode!r}; expected 'aligned', 'gradcam', 'none'"
        )
    heat = gradcam_lib.gradcam_heatmap(
        x,
        x_rec,
        target=att.gradcam_target,
        lpips_params=lpips_params,
        classifier_params=classifier_params,
    )
    hw = x.shape[1:3]
    b2 = gradcam_lib.heatmap_box(heat, att.at2_threshold)
    at2 = (gradcam_lib.crop_and_resize(x, b2, hw), gradcam_lib.crop_and_resize(x_rec, b2, hw))
    if att.at1_mode == "weight":
        wmap = heat[..., None]
        at1 = (x * wmap, x_rec * wmap)
    elif att.at1_mode == "box":
        b1 = gradcam_lib.heatmap_box(heat, att.at1_threshold)
        at1 = (gradcam_lib.crop_and_resize(x, b1, hw), gradcam_lib.crop_and_resize(x_rec, b1, hw))
    else:
        raise ValueError(
            f"attention: unknown at1_mode {att.at1_mode!r}; expected 'weight' or 'box'"
        )
    return [at1, at2]


def attention_image_loss(
    x: jax.Array,
    x_rec: jax.Array,
    lpips_params: Any = None,
    cfg: ImageLossConfig = ImageLossConfig(),
    att: AttentionConfig = AttentionConfig(),
    classifier_params: Mapping | None = None,
) -> jax.Array:
    """L_img(x, x') + mu1 L_img(AT1) + mu2 L_img(AT2) per image ([N])."""
    if lpips_params is None and ("lpips" in weighted_terms(cfg) or att.mode == "gradcam"):
        lpips_params = lpips_lib.load_lpips_params(cfg.lpips_net)
    total = image_loss(x, x_rec, lpips_params, cfg)
    for mu, (a, b) in zip(att.mu, attention_pairs(x, x_rec, att, lpips_params, classifier_params)):
        total = total + mu * image_loss(a, b, lpips_params, cfg)
    return total


# ----------------------------------------------------------------------------- latent losses


def latent_loss(
    w: jax.Array,
    w_rec: jax.Array,
    w_mse: float = 5.0,
    w_cos: float = 3.0,
    cos_mode: common.CosMode = "per_sample",
) -> jax.Array:
    """L_lat = 5 MSE + 3 (1 - cos) per sample ([N]); latents [N, ...] (z, w or W+ flattened)."""
    common.check_batch_pair(w, w_rec, "latent_loss")
    return w_mse * common.mse(w, w_rec) + w_cos * (
        1.0 - common.cosine_similarity(w, w_rec, cos_mode)
    )


def latent_cycle_loss(
    w: jax.Array,
    w_cycle: jax.Array,
    zc: jax.Array,
    zc_cycle: jax.Array,
    cos_mode: common.CosMode = "per_sample",
) -> jax.Array:
    """L_LS = L_lat(w, w') + L_lat(z_c, z_c'): codes and 4x4 features of E(y) vs E(G(E(y)))."""
    return latent_loss(w, w_cycle, cos_mode=cos_mode) + latent_loss(zc, zc_cycle, cos_mode=cos_mode)


def pretrain_loss(
    x: jax.Array,
    x_rec: jax.Array,
    w: jax.Array,
    w_rec: jax.Array,
    lpips_params: Any = None,
    cfg: ImageLossConfig = ImageLossConfig(),
    att: AttentionConfig = AttentionConfig(),
    latent_weight: float = 0.01,
    classifier_params: Mapping | None = None,
) -> jax.Array:
    """Pre-training on G's samples: attention image loss + 0.01 L_lat(w, w') per image."""
    return attention_image_loss(
        x, x_rec, lpips_params, cfg, att, classifier_params
    ) + latent_weight * latent_loss(w, w_rec, cos_mode=cfg.cos_mode)


def finetune_loss(
    y: jax.Array,
    y_rec: jax.Array,
    w: jax.Array,
    w_cycle: jax.Array,
    zc: jax.Array,
    zc_cycle: jax.Array,
    lpips_params: Any = None,
    cfg: ImageLossConfig = ImageLossConfig(),
    eps: float = 0.01,
) -> jax.Array:
    """Fine-tuning on real images: L_img(y, y') + eps L_LS per image (image terms not detached)."""
    return image_loss(y, y_rec, lpips_params, cfg) + eps * latent_cycle_loss(
        w, w_cycle, zc, zc_cycle, cfg.cos_mode
    )
