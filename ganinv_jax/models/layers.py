"""StyleGAN2 building blocks as small Linen modules and pure functions (NHWC, fp32).

Parameter conventions (they are what the converters in `weights_convert/` fill):
  * Weights are stored *raw*, as the PyTorch implementations store them, and the
    equalized-learning-rate gains are applied at run time. This keeps conversion a pure
    transpose and keeps training dynamics identical to the originals.
  * Dense weight: `[in, out]`; runtime `y = x @ (W * lr_mul / sqrt(in)) + b * lr_mul`.
  * Conv weight: HWIO `[kh, kw, in, out]`; runtime gain `1 / sqrt(in * kh * kw)`.
  * FIR resampling filters are not parameters: they are fixed 1-D taps (default
    `[1, 3, 3, 1]`), normalised to sum 1, applied separably. Up-sampling by 2 multiplies
    by the gain 4 (= factor**2), exactly as both NVlabs and rosinality do.
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ganinv_jax.ops import conv as conv_ops

SQRT2 = math.sqrt(2.0)
DEFAULT_FIR = (1, 3, 3, 1)


# ----------------------------------------------------------------------------- activations


def bias_act(
    x: jax.Array,
    bias: Optional[jax.Array] = None,
    *,
    act: str = "lrelu",
    gain: float = 1.0,
    clamp: Optional[float] = None,
    alpha: float = 0.2,
) -> jax.Array:
    """bias -> activation -> x gain -> clamp, as NVlabs' `bias_act` (channels last).

    For `act='lrelu'` the default gain of sqrt(2) is folded into `gain` by the caller
    (`gain=sqrt(2) * layer_gain`), which is how NVlabs writes it.
    """
    if bias is not None:
        x = x + bias.astype(x.dtype)
    if act == "lrelu":
        # One multiply by a per-element slope with the gain folded in: its gradient is the
        # cotangent times the same slope, where autodiff of a where() selects against
        # broadcast zeros (and a separate constant multiply lands in the gradient's reductions).
        slope = jnp.where(x >= 0, jnp.asarray(gain, x.dtype), jnp.asarray(alpha * gain, x.dtype))
        x = x * slope
    elif act != "linear":
        raise ValueError(f"unknown activation {act!r}")
    elif gain != 1.0:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = jnp.clip(x, -clamp, clamp)
    return x


def normalize_2nd_moment(x: jax.Array, axis: int = -1, eps: float = 1e-8) -> jax.Array:
    """`x * rsqrt(mean(x^2) + eps)`: PixelNorm of z (and of the class embedding)."""
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=axis, keepdims=True) + eps)


# ----------------------------------------------------------------------------- FIR filters


def fir_taps(taps: Sequence[float]) -> np.ndarray:
    """1-D FIR taps normalised so that the separable 2-D kernel outer(t, t) sums to 1."""
    t = np.asarray(taps, dtype=np.float64)
    return (t / t.sum()).astype(np.float32)


def _fir_1d(x: jax.Array, taps: np.ndarray, axis: int) -> jax.Array:
    """'Valid' correlation of x with 1-D taps along one spatial axis.

    Written as a weighted sum of shifted slices: cheap for 4 taps, exact, differentiable,
    and it avoids depthwise (grouped) convolutions, which XLA CPU runs slowly. The taps are
    symmetric, so correlation equals the true convolution upfirdn2d computes.
    """
    return _fir_valid(x, tuple(float(t) for t in taps), axis)


def _shifted_taps_sum(x: jax.Array, taps: tuple[float, ...], axis: int) -> jax.Array:
    n = x.shape[axis] - len(taps) + 1
    out = None
    for k, t in enumerate(taps):
        term = jax.lax.slice_in_dim(x, k, k + n, axis=axis) * t
        out = term if out is None else out + term
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _fir_valid(x: jax.Array, taps: tuple[float, ...], axis: int) -> jax.Array:
    return _shifted_taps_sum(x, taps, axis)


def _fir_valid_fwd(x, taps, axis):
    return _shifted_taps_sum(x, taps, axis), None


def _fir_valid_bwd(taps, axis, _, g):
    # The transpose of a 'valid' correlation: the 'full' correlation of the gradient with the
    # reversed taps (zero-pad by len - 1, then the same shifted sum). Autodiff's transpose pads
    # every slice back to full size and adds them; this form runs faster inside the engine's
    # loop (+2.6% on bench_vs_torch's PTI step, paired A/B).
    pad = [(0, 0)] * g.ndim
    pad[axis] = (len(taps) - 1, len(taps) - 1)
    return (_shifted_taps_sum(jnp.pad(g, pad), taps[::-1], axis),)


_fir_valid.defvjp(_fir_valid_fwd, _fir_valid_bwd)


def upfirdn2d(
    x: jax.Array,
    taps: np.ndarray,
    *,
    up: int = 1,
    down: int = 1,
    pad: tuple[int, int] = (0, 0),
    gain: float = 1.0,
) -> jax.Array:
    """Upsample (zero insertion) -> pad -> separable FIR -> downsample, NHWC.

    `pad` is (before, after), the same on both spatial axes, as in the reference ops.
    The 2-D kernel is outer(taps, taps) * gain.
    """
    n, h, w, c = x.shape
    if up > 1:
        # Zero insertion: [N, H, 1, W, 1, C] padded to [N, H, up, W, up, C].
        x = x.reshape(n, h, 1, w, 1, c)
        x = jnp.pad(x, ((0, 0), (0, 0), (0, up - 1), (0, 0), (0, up - 1), (0, 0)))
        x = x.reshape(n, h * up, w * up, c)
    p0, p1 = pad
    x = jnp.pad(x, ((0, 0), (max(p0, 0), max(p1, 0)), (max(p0, 0), max(p1, 0)), (0, 0)))
    if p0 < 0 or p1 < 0:  # negative padding crops, as upfirdn2d allows
        hh, ww = x.shape[1], x.shape[2]
        x = x[:, max(-p0, 0) : hh - max(-p1, 0), max(-p0, 0) : ww - max(-p1, 0), :]
    x = _fir_1d(x, taps, axis=1)
    # The gain rides on the second pass's taps (for a power of 2, as here, bitwise the same as
    # scaling the result): a separate multiply by a constant ends up inside the gradient's
    # reductions, which XLA:CPU's YNN fusions take only as a materialized full-size operand.
    x = _fir_1d(x, np.asarray(taps, np.float32) * np.float32(gain), axis=2)
    if down > 1:
        x = x[:, ::down, ::down, :]
    return x


def upsample2d(x: jax.Array, taps: np.ndarray) -> jax.Array:
    """2x FIR upsampling (ToRGB skip path): pad (2, 1) for 4 taps, gain 4."""
    f = len(taps)
    p = f - 2  # (f + up - 1) // 2 and (f - up) // 2 for up = 2
    return upfirdn2d(x, taps, up=2, pad=((p + 1) // 2 + 1, p // 2), gain=4.0)


def downsample2d(x: jax.Array, taps: np.ndarray) -> jax.Array:
    """2x FIR downsampling (blur pad (1, 1) for 4 taps, then take every second pixel)."""
    p = len(taps) - 2
    return upfirdn2d(x, taps, down=2, pad=((p + 1) // 2, p // 2))


# ----------------------------------------------------------------------------- convolutions


def conv2d(x: jax.Array, w: jax.Array, *, stride: int = 1, padding=0) -> jax.Array:
    """Plain NHWC x HWIO correlation (what torch's conv2d computes); form per `ops.conv`."""
    return conv_ops.conv2d(x, w, stride=stride, padding=padding)


def conv_transpose2x(x: jax.Array, w: jax.Array) -> jax.Array:
    """torch `conv_transpose2d(x, W', stride=2, padding=0)` for a HWIO kernel `w` (in/out
    swapped, not flipped, as both reference implementations pass it); see `ops.conv`.
    Output size: 2 * H + k - 2 (e.g. 2H + 1 for k = 3)."""
    return conv_ops.conv_transpose2x(x, w)


def conv2d_resample(
    x: jax.Array, w: jax.Array, taps: np.ndarray, *, up: int = 1, down: int = 1, padding: int = 0
) -> jax.Array:
    """Conv with optional 2x FIR up/down-sampling (the arithmetic of NVlabs/rosinality).

    * up=2, k>1: transposed conv (stride 2) then FIR with pad (1, 1) and gain 4.
    * up=2, k=1: FIR upsample then 1x1 conv.
    * down=2, k>1: FIR with pad (2, 2) (for 4 taps and k=3) then stride-2 conv.
    * down=2, k=1: FIR downsample then 1x1 conv with stride 1 on the subsampled map.
    """
    k = w.shape[0]
    f = len(taps)
    if up == 1 and down == 1:
        return conv2d(x, w, padding=padding)
    if up == 2 and down == 1:
        if k == 1:
            return conv2d(upsample2d(x, taps), w)
        x = conv_transpose2x(x, w)
        p = (f - 2) - (k - 1)
        return upfirdn2d(x, taps, pad=((p + 1) // 2 + 1, p // 2 + 1), gain=4.0)
    if down == 2 and up == 1:
        if k == 1:
            return conv2d(downsample2d(x, taps), w)
        p = (f - 2) + (k - 1)
        x = upfirdn2d(x, taps, pad=((p + 1) // 2, p // 2))
        return conv2d(x, w, stride=2)
    raise ValueError(f"unsupported resampling up={up} down={down}")


# ----------------------------------------------------------------------------- modules


class DenseLayer(nn.Module):
    """Equalized-LR fully connected layer (NVlabs FullyConnectedLayer / rosinality EqualLinear)."""

    features: int
    use_bias: bool = True
    bias_init: float = 0.0
    lr_multiplier: float = 1.0
    activation: str = "linear"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        # Stored as randn / lr_mul so that the runtime product has unit variance.
        w = self.param(
            "weight",
            lambda k, s: jax.random.normal(k, s) / self.lr_multiplier,
            (fan_in, self.features),
        )
        y = x @ (w * (self.lr_multiplier / math.sqrt(fan_in))).astype(x.dtype)
        b = None
        if self.use_bias:
            b = self.param("bias", nn.initializers.constant(self.bias_init), (self.features,))
            b = b * self.lr_multiplier
        gain = SQRT2 if self.activation == "lrelu" else 1.0
        return bias_act(y, b, act=self.activation, gain=gain)


class ConvLayer(nn.Module):
    """Equalized-LR conv with optional FIR resampling, bias, lrelu and clamp (D and G skips)."""

    features: int
    kernel_size: int
    use_bias: bool = True
    activation: str = "linear"
    up: int = 1
    down: int = 1
    fir: Sequence[int] = DEFAULT_FIR
    conv_clamp: Optional[float] = None

    @nn.compact
    def __call__(self, x: jax.Array, gain: float = 1.0) -> jax.Array:
        k, cin = self.kernel_size, x.shape[-1]
        w = self.param("weight", nn.initializers.normal(1.0), (k, k, cin, self.features))
        w = w * (1.0 / math.sqrt(cin * k * k))
        x = conv2d_resample(x, w, fir_taps(self.fir), up=self.up, down=self.down, padding=k // 2)
        b = self.param("bias", nn.initializers.zeros, (self.features,)) if self.use_bias else None
        act_gain = (SQRT2 if self.activation == "lrelu" else 1.0) * gain
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, b, act=self.activation, gain=act_gain, clamp=clamp)


def modulated_conv2d(
    x: jax.Array,
    weight: jax.Array,
    styles: jax.Array,
    taps: np.ndarray,
    *,
    demodulate: bool,
    up: int = 1,
    padding: int = 0,
    fan_in_scale: bool = False,
) -> jax.Array:
    """Modulated convolution with *shared* weights and per-sample styles.

    Implemented as NVlabs' non-fused path: modulate activations, run one ordinary conv
    for the whole batch, then scale outputs by the demodulation coefficients. This is
    mathematically the per-sample weight `w = W * s` of the paper, but it never builds
    per-sample kernels, so XLA sees a dense conv (per-sample kernels under vmap lower to
    grouped convolutions, which XLA CPU runs 6-20x slower).

    `fan_in_scale`: rosinality multiplies W by 1/sqrt(fan_in) before demodulating; NVlabs
    does not. The two differ only through the 1e-8 in the demodulation, but we keep both
    exactly so converted checkpoints reproduce their originals.
    """
    k, _, cin, _ = weight.shape
    if fan_in_scale:
        weight = weight * (1.0 / math.sqrt(cin * k * k))
    x = x * styles[:, None, None, :].astype(x.dtype)
    x = conv2d_resample(x, weight, taps, up=up, padding=padding)
    if demodulate:
        # d[b, o] = rsqrt(sum_{kh,kw,i} (W[kh,kw,i,o] * s[b,i])^2 + eps)
        wsq = jnp.sum(jnp.square(weight), axis=(0, 1))  # [in, out]
        d = jax.lax.rsqrt(jnp.square(styles) @ wsq + 1e-8)  # [N, out]
        x = x * d[:, None, None, :].astype(x.dtype)
    return x
