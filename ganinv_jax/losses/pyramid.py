"""Laplacian-pyramid L1 loss (Clone's reconstruction loss, Burt & Adelson 1983).

Clone stops tuning when this loss falls below eps = 1e-3, so its definition is part of the
method: sum over levels of the mean |L_k(x) - L_k(y)|, with L_k the band-pass levels and the
last level the low-pass residual. Kernel: the 5x5 binomial Gaussian (outer product of
[1, 4, 6, 4, 1] / 16). Borders are reflected (OpenCV's BORDER_REFLECT_101, which pyrDown uses).
Downsampling keeps every second pixel of the blurred image; upsampling inserts zeros and blurs
with 4x the kernel, cropped back to the finer level's size (so odd sizes work).

The pyramid is linear, so L_k(x) - L_k(y) = L_k(x - y): we build one pyramid of the difference,
which halves the work and is exactly equal.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ganinv_jax.losses import common

_BINOMIAL5 = np.array([1.0, 4.0, 6.0, 4.0, 1.0], np.float32) / 16.0


def _blur(x: jax.Array, gain: float = 1.0) -> jax.Array:
    """Separable 5x5 binomial blur of NHWC x with reflect padding (same size)."""
    c = x.shape[-1]
    mode = "reflect" if min(x.shape[1:3]) > 2 else "edge"  # reflect needs >= 3 px
    x = jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode=mode)
    k1 = jnp.asarray(_BINOMIAL5 * np.sqrt(gain), x.dtype)
    for shape in ((5, 1, 1, c), (1, 5, 1, c)):
        kernel = jnp.broadcast_to(k1.reshape(shape[:2] + (1, 1)), shape)
        x = jax.lax.conv_general_dilated(
            x,
            kernel,
            (1, 1),
            "VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=c,
            precision=jax.lax.Precision.HIGHEST,
        )
    return x


def pyr_down(x: jax.Array) -> jax.Array:
    """Blur then keep every second row and column (size ceil(H/2) x ceil(W/2))."""
    return _blur(x)[:, ::2, ::2, :]


def pyr_up(x: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
    """Zero-insertion 2x upsampling + blur with gain 4, cropped to out_hw."""
    n, h, w, c = x.shape
    up = jnp.zeros((n, 2 * h, 2 * w, c), x.dtype).at[:, ::2, ::2, :].set(x)
    return _blur(up[:, : out_hw[0], : out_hw[1], :], gain=4.0)


def laplacian_pyramid(x: jax.Array, levels: int = 5) -> list[jax.Array]:
    """[band_0, ..., band_{levels-2}, lowpass] of NHWC images."""
    if levels < 1:
        raise ValueError(f"laplacian_pyramid: levels must be >= 1, got {levels}")
    if min(x.shape[1:3]) < 2 ** (levels - 1):
        raise ValueError(
            f"laplacian_pyramid: {levels} levels need images of at least "
            f"{2 ** (levels - 1)} px, got {x.shape[1]}x{x.shape[2]}"
        )
    bands = []
    cur = x
    for _ in range(levels - 1):
        down = pyr_down(cur)
        bands.append(cur - pyr_up(down, cur.shape[1:3]))
        cur = down
    bands.append(cur)
    return bands


def laplacian_pyramid_l1(x: jax.Array, y: jax.Array, levels: int = 5) -> jax.Array:
    """Clone's L_recon per image ([N]): sum over levels of mean |L_k(x) - L_k(y)|."""
    common.check_image_pair(x, y, "laplacian_pyramid_l1")
    return _pyramid_l1_jit(x, y, int(levels))


@functools.partial(jax.jit, static_argnames=("levels",))
def _pyramid_l1_jit(x, y, levels):
    diff = (x - y).astype(jnp.float32)
    total = jnp.zeros((x.shape[0],), jnp.float32)
    for band in laplacian_pyramid(diff, levels):
        total = total + jnp.mean(jnp.abs(band), axis=(1, 2, 3))
    return total
