"""SSIM, MS-SSIM and PSNR for NHWC images in [-1, 1], per image ([N]).

Definitions follow pytorch-msssim (the implementation most GAN-inversion papers report), so
numbers are comparable with the literature:
  * images are mapped to [0, 1] and compared with data range 1 (SSIM is not shift-invariant, so
    the SSIM of a [-1, 1] pair is DEFINED as the SSIM of its [0, 1] version, as scikit-image and
    pytorch-msssim report it);
  * separable 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03, 'valid' filtering (no
    padding); variances as E[x^2] - E[x]^2 (population, not sample, covariance);
  * per-channel SSIM is the mean of the SSIM map; the image value is the mean over channels;
  * an axis shorter than the window is not smoothed (pytorch-msssim skips it with a warning);
  * MS-SSIM: 5 scales with weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), 2x2 average pooling
    between scales (odd sizes are zero-padded by one on both sides and the padding counts in the
    average, exactly like torch's avg_pool2d(padding=1)); relu on cs at the first 4 scales and on
    the ssim at the last one; product over scales per channel, then mean over channels.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ganinv_jax.losses import common

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalized 1-D Gaussian window (a constant, computed in float64 on the host)."""
    if size % 2 != 1:
        raise ValueError(f"ssim: window size must be odd, got {size}")
    coords = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-(coords**2) / (2.0 * sigma**2))
    return (g / g.sum()).astype(np.float32)


def _filter_valid(x: jax.Array, win: np.ndarray) -> jax.Array:
    """Separable depthwise 'valid' filtering of NHWC x along H then W (skipping too-short axes)."""
    c = x.shape[-1]
    k = win.shape[0]
    for axis in (1, 2):
        if x.shape[axis] < k:
            continue
        shape = (k, 1, 1, c) if axis == 1 else (1, k, 1, c)
        kernel = jnp.broadcast_to(jnp.asarray(win, x.dtype).reshape(shape[:2] + (1, 1)), shape)
        x = jax.lax.conv_general_dilated(
            x,
            kernel,
            window_strides=(1, 1),
            padding="VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=c,
            precision=jax.lax.Precision.HIGHEST,
        )
    return x


def _ssim_and_cs(
    x01: jax.Array, y01: jax.Array, win: np.ndarray, k: tuple[float, float]
) -> tuple[jax.Array, jax.Array]:
    """Per-channel SSIM and contrast-structure means ([N, C] each) of [0, 1] images."""
    c1, c2 = k[0] ** 2, k[1] ** 2  # data range 1
    # One filter call on the 5 stacked statistics instead of five calls.
    stats = _filter_valid(jnp.concatenate([x01, y01, x01 * x01, y01 * y01, x01 * y01], axis=0), win)
    mu1, mu2, exx, eyy, exy = jnp.split(stats, 5, axis=0)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1, s2, s12 = exx - mu1_sq, eyy - mu2_sq, exy - mu12
    cs_map = (2.0 * s12 + c2) / (s1 + s2 + c2)
    ssim_map = ((2.0 * mu12 + c1) / (mu1_sq + mu2_sq + c1)) * cs_map
    return jnp.mean(ssim_map, axis=(1, 2)), jnp.mean(cs_map, axis=(1, 2))


@functools.partial(jax.jit, static_argnames=("win_size", "win_sigma", "k"))
def _ssim_jit(x, y, win_size, win_sigma, k):
    return _ssim_impl(x, y, win_size, win_sigma, k)


def ssim(
    x: jax.Array,
    y: jax.Array,
    win_size: int = 11,
    win_sigma: float = 1.5,
    k: tuple[float, float] = (0.01, 0.03),
) -> jax.Array:
    """SSIM per image ([N]) of NHWC images in [-1, 1] (computed on their [0, 1] versions)."""
    common.check_image_pair(x, y, "ssim")
    return _ssim_jit(x, y, int(win_size), float(win_sigma), tuple(float(v) for v in k))


def _ssim_impl(
    x: jax.Array, y: jax.Array, win_size: int, win_sigma: float, k: tuple[float, float]
) -> jax.Array:
    win = gaussian_window(win_size, win_sigma)
    x01 = common.to_unit_range(x.astype(jnp.float32))
    y01 = common.to_unit_range(y.astype(jnp.float32))
    s, _ = _ssim_and_cs(x01, y01, win, k)
    return jnp.mean(s, axis=-1)


def _avg_pool2_torch(x: jax.Array) -> jax.Array:
    """torch avg_pool2d(kernel 2, padding = size % 2, count_include_pad=True) on NHWC."""
    pad = [(0, 0), (x.shape[1] % 2,) * 2, (x.shape[2] % 2,) * 2, (0, 0)]
    s = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), pad)
    return s * 0.25


def _safe_pow(v: jax.Array, p: float) -> jax.Array:
    # relu(v) ** p has an infinite (-> NaN) derivative where v <= 0; the value there is 0 either
    # way, so route those entries through a dummy base of 1 to keep gradients finite.
    pos = v > 0
    return jnp.where(pos, jnp.where(pos, v, 1.0) ** p, 0.0)


def ms_ssim(
    x: jax.Array,
    y: jax.Array,
    weights: Sequence[float] = MS_SSIM_WEIGHTS,
    win_size: int = 11,
    win_sigma: float = 1.5,
    k: tuple[float, float] = (0.01, 0.03),
) -> jax.Array:
    """Multi-scale SSIM per image ([N]) of NHWC images in [-1, 1].

    With the default 5 scales and an 11 px window, both sides must exceed 160 px (as pytorch-msssim
    asserts); for smaller images pass fewer `weights` or a smaller `win_size`.
    """
    levels = len(weights)
    min_side = (win_size - 1) * 2 ** (levels - 1)
    common.check_image_pair(x, y, "ms_ssim")
    if min(x.shape[1:3]) <= min_side:
        raise ValueError(
            f"ms_ssim: images must be larger than {min_side} px for {levels} scales with "
            f"a {win_size} px window, got {x.shape[1]}x{x.shape[2]}"
        )
    return _ms_ssim_jit(
        x,
        y,
        tuple(float(w) for w in weights),
        int(win_size),
        float(win_sigma),
        tuple(float(v) for v in k),
    )


def ms_ssim_settings(size: int, min_levels: int = 3) -> tuple[tuple[float, ...], int]:
    """(weights, win_size) of MS-SSIM for images whose shorter side is `size` px.

    Above 160 px: the standard 5 scales with an 11 px window. Smaller images (the 32/64 px models
    of this project) keep the most scales an 11 px window allows, and when that is fewer than
    `min_levels`, shrink the window (7, 5, 3) until `min_levels` fit; the weights are the first
    scales' standard weights renormalized to sum to 1. 32 px -> 3 scales, 7 px window; 64 px ->
    3 scales, 11 px. Both settings are reported beside the values (they change the numbers)."""
    for win in (11, 7, 5, 3):
        levels = max(
            (lv for lv in range(1, len(MS_SSIM_WEIGHTS) + 1) if (win - 1) * 2 ** (lv - 1) < size),
            default=0,
        )
        if levels == len(MS_SSIM_WEIGHTS):
            return MS_SSIM_WEIGHTS, win
        if levels >= min_levels or (win == 3 and levels >= 1):
            w = MS_SSIM_WEIGHTS[:levels]
            return tuple(v / sum(w) for v in w), win
    raise ValueError(f"ms_ssim: images of {size} px are too small for any scale")


def ms_ssim_any_size(x: jax.Array, y: jax.Array) -> jax.Array:
    """`ms_ssim` with `ms_ssim_settings` for the images' size (per image, [N])."""
    weights, win = ms_ssim_settings(min(x.shape[1:3]))
    return ms_ssim(x, y, weights=weights, win_size=win)


@functools.partial(jax.jit, static_argnames=("weights", "win_size", "win_sigma", "k"))
def _ms_ssim_jit(x, y, weights, win_size, win_sigma, k):
    levels = len(weights)
    win = gaussian_window(win_size, win_sigma)
    xs = common.to_unit_range(x.astype(jnp.float32))
    ys = common.to_unit_range(y.astype(jnp.float32))
    out = None
    for i, w in enumerate(weights):
        s, cs = _ssim_and_cs(xs, ys, win, k)
        term = _safe_pow(cs if i < levels - 1 else s, float(w))
        out = term if out is None else out * term
        if i < levels - 1:
            xs, ys = _avg_pool2_torch(xs), _avg_pool2_torch(ys)
    return jnp.mean(out, axis=-1)


def psnr(x: jax.Array, y: jax.Array) -> jax.Array:
    """PSNR in dB per image ([N]) on the [0, 1] versions (data range 1).

    Identical images give +inf, as scikit-image reports; a metric, not meant to be minimized.
    """
    common.check_image_pair(x, y, "psnr")
    return _psnr_jit(x, y)


@jax.jit
def _psnr_jit(x, y):
    m = common.mse(common.to_unit_range(x), common.to_unit_range(y))
    return -10.0 * jnp.log10(m)


def psnr_from_mse(mse01: jax.Array) -> jax.Array:
    """PSNR (dB) from an MSE measured on [0, 1] images."""
    return -10.0 * jnp.log10(mse01)
