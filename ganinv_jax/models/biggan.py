"""BigGAN-deep generator of `pytorch-pretrained-biggan` 0.1.1 as a pure Flax Linen module.

Reproduces the package's `BigGAN.forward(z, class_vector, truncation)` in **eval mode**
(NHWC, fp32; the package computes NCHW):

  * class embedding: a bias-free linear map of the (one-hot or soft) class vector to z_dim;
    `cond = concat([z, embed])` (z first) feeds `gen_z` and every conditional BN, unsplit;
  * `gen_z`: SN linear to 4*4*16*ch, read as [N, 4, 4, 16*ch] (TF's NHWC order);
  * GenBlocks (bottleneck: 1x1 -> [nearest up x2] -> 3x3 -> 3x3 -> 1x1, each after a
    conditional BN + ReLU; the skip drops the upper half of the channels and upsamples);
  * one self-attention layer in front of GenBlock `attention_layer_position`;
  * non-conditional BN -> ReLU -> SN 3x3 conv (ch -> ch) -> first 3 channels -> tanh.

There is no discriminator: the package (like the TF Hub release it was converted from)
ships none.

Package conventions that matter for exactness:
  * Spectral norm is applied in torch's eval-mode form: `W = weight_orig / sigma` with
    `sigma = u . (W_mat @ v)` from the *stored* vectors (no power iteration, no eps).
    `W_mat` is `weight_orig.reshape(out, -1)`: for convs its columns run over (in, kh, kw).
  * BN running statistics are stored per truncation value (`n_stats` rows for truncation
    0, 1/(n_stats-1), ..., 1) and selected by `bn_stat_selection`, whose interpolation
    weights look reversed (`coef` weights the *lower* row). Truncation is therefore a static
    Python float; it does not truncate z (that is the caller's job, see the fixture README).

Variables (names mirror the torch state_dict; `layers_{i}` is torch's `generator.layers.{i}`,
where the attention layer takes an index of its own):
  * `params`: `embeddings/weight` [num_classes, z_dim]; per SN layer `weight` ([in, out]
    dense, HWIO conv) and `bias` where torch has one; conditional BN `scale`/`offset`
    (SN dense, no bias); attention `gamma` []; tail BN `bn/weight`, `bn/bias`.
  * `buffers`: per SN layer `sn_u` [out] and `sn_v` [in*kh*kw] (torch's (in, kh, kw) order,
    stored as is); per BN `running_means` / `running_vars` [n_stats, C].
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ganinv_jax.models import layers as L

Array = jax.Array

# The package's `BigGANConfig()` defaults (biggan-deep-128).
_DEEP128_LAYERS = (
    (False, 16, 16),
    (True, 16, 16),
    (False, 16, 16),
    (True, 16, 8),
    (False, 8, 8),
    (True, 8, 4),
    (False, 4, 4),
    (True, 4, 2),
    (False, 2, 2),
    (True, 2, 1),
)


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _normalize_layers(layers: Any) -> tuple[tuple[bool, int, int], ...]:
    """JSON `[[up, in_mult, out_mult], ...]` -> a tuple of tuples, type-checked."""
    if not isinstance(layers, Sequence) or isinstance(layers, str) or not layers:
        raise ValueError("layers must be a non-empty list of [up_sample, in_mult, out_mult]")
    out = []
    for i, layer in enumerate(layers):
        ok = isinstance(layer, Sequence) and not isinstance(layer, str) and len(layer) == 3
        if not (ok and isinstance(layer[0], bool) and _is_int(layer[1]) and _is_int(layer[2])):
            raise ValueError(f"layers[{i}] must be [bool, int, int], got {layer!r}")
        out.append((bool(layer[0]), int(layer[1]), int(layer[2])))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class BigGANConfig:
    """The package's `config.json` fields. `output_dim` and `class_embed_dim` are recorded but
    unused, as in the package: the resolution follows from `layers` and the class embedding
    is always z_dim wide."""

    output_dim: int = 128
    z_dim: int = 128
    class_embed_dim: int = 128
    channel_width: int = 128
    num_classes: int = 1000
    layers: tuple[tuple[bool, int, int], ...] = _DEEP128_LAYERS
    attention_layer_position: int = 8
    eps: float = 1e-4
    n_stats: int = 51

    def __post_init__(self):
        object.__setattr__(self, "layers", _normalize_layers(self.layers))
        for name in ("output_dim", "z_dim", "class_embed_dim", "channel_width", "num_classes"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        position = self.attention_layer_position
        if not _is_int(position):
            raise ValueError(f"attention_layer_position must be an integer, got {position!r}")
        if not _is_int(self.n_stats) or self.n_stats < 2:
            raise ValueError(f"n_stats must be an integer >= 2, got {self.n_stats!r}")
        if not isinstance(self.eps, numbers.Real) or isinstance(self.eps, bool) or self.eps <= 0:
            raise ValueError(f"eps must be a positive number, got {self.eps!r}")
        object.__setattr__(self, "eps", float(self.eps))
        self._check_layers()

    def _check_layers(self):
        # The package only works for layer lists that chain: gen_z makes 16*ch channels, the
        # skip path can only keep or halve channels, and to-RGB reads ch channels.
        layers, ch = self.layers, self.channel_width
        if layers[0][1] != 16:
            raise ValueError(f"the first layer's in-multiplier must be 16, got {layers[0][1]}")
        if layers[-1][2] != 1:
            raise ValueError(f"the last layer's out-multiplier must be 1, got {layers[-1][2]}")
        for i, (_, cin, cout) in enumerate(layers):
            if i and cin != layers[i - 1][2]:
                raise ValueError(
                    f"layers[{i}] in-multiplier {cin} != layers[{i - 1}] out-multiplier "
                    f"{layers[i - 1][2]}"
                )
            # The skip path keeps x[:, :in_channels // 2] when the channel count changes.
            if ch * cout not in (ch * cin, ch * cin // 2) or cout < 1:
                raise ValueError(
                    f"layers[{i}] must keep or halve the channels: {ch * cin} -> {ch * cout}"
                )
            if ch * cin // 4 < 1:
                raise ValueError(f"layers[{i}]: {ch * cin} channels leave no bottleneck (in/4)")
        if self.has_attention and self.attention_channels // 8 < 1:
            raise ValueError(f"attention on {self.attention_channels} channels (needs >= 8)")

    # ------------------------------------------------------------------ derived

    @property
    def resolution(self) -> int:
        return 4 * 2 ** sum(up for up, _, _ in self.layers)

    @property
    def condition_dim(self) -> int:
        """Width of `cond = concat([z, embed])`."""
        return 2 * self.z_dim

    @property
    def has_attention(self) -> bool:
        # The package inserts SelfAttn where `i == attention_layer_position`; any other value
        # (negative, or >= len(layers)) silently means no attention layer.
        return 0 <= self.attention_layer_position < len(self.layers)

    @property
    def attention_channels(self) -> int:
        return self.channel_width * self.layers[self.attention_layer_position][1]

    def modules(self) -> list[tuple[str, Any]]:
        """torch's `generator.layers` ModuleList: ('attn', channels) or ('block', (up, cin,
        cout)), in order; index i is the state_dict's `generator.layers.{i}`."""
        out: list[tuple[str, Any]] = []
        ch = self.channel_width
        for i, (up, cin, cout) in enumerate(self.layers):
            if i == self.attention_layer_position:
                out.append(("attn", ch * cin))
            out.append(("block", (up, ch * cin, ch * cout)))
        return out

    # ------------------------------------------------------------------ (de)serialisation

    def to_dict(self) -> dict:
        """The package's config.json content (JSON types: `layers` as lists)."""
        d = dataclasses.asdict(self)
        d["layers"] = [list(layer) for layer in self.layers]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BigGANConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown BigGANConfig keys: {sorted(unknown)}")
        return cls(**dict(d))


# ----------------------------------------------------------------------------- pure functions


def check_truncation(truncation: Any) -> float:
    """The truncation as a Python float in (0, 1], as the package asserts.

    It must be a static Python value (it selects BN-statistics rows at trace time). float32
    values are refused: float32(0.4) = 0.4000000059604645 selects a different row than 0.4.
    """
    if isinstance(truncation, (bool, np.bool_)) or not isinstance(truncation, numbers.Real):
        raise TypeError(
            f"truncation must be a static Python float, got {type(truncation).__name__} "
            "(under jax.jit mark it static)"
        )
    if isinstance(truncation, np.floating) and truncation.dtype != np.float64:
        raise TypeError(
            f"truncation must be a Python float, got {truncation.dtype} (a float32 truncation "
            "selects different BN statistics; pass the float64 value)"
        )
    t = float(truncation)
    if not 0.0 < t <= 1.0:
        raise ValueError(f"truncation must be in (0, 1], got {t}")
    return t


def bn_stat_selection(truncation: float, n_stats: int) -> tuple[int, float]:
    """(index, coef) of the BN-statistics rows for `truncation`, in float64 as the package.

    Rows are `running[idx] * coef + running[idx + 1] * (1 - coef)` when coef != 0, else
    `running[idx]`. The weighting is the package's (reversed-looking) one, on purpose.
    """
    t = check_truncation(truncation)
    step = 1.0 / (n_stats - 1)
    coef, idx = math.modf(t / step)
    idx = int(idx)
    if idx + (coef != 0.0) > n_stats - 1:  # the package would index past its table
        raise ValueError(f"truncation {t} selects BN-statistics row {idx + 1} of {n_stats}")
    return idx, coef


def select_stats(table: Array, idx: int, coef: float) -> Array:
    """Pick/interpolate one row of a [n_stats, C] statistics table (static idx, coef)."""
    if coef == 0.0:
        return table[idx]
    # torch multiplies the float32 rows by the Python scalars in float32.
    return table[idx] * np.float32(coef) + table[idx + 1] * np.float32(1.0 - coef)


def spectral_sigma(w_mat: Array, u: Array, v: Array) -> Array:
    """torch's eval-mode spectral norm estimate `u . (W_mat @ v)` (W_mat: [out, fan_in])."""
    return jnp.dot(u, jnp.dot(w_mat, v))


def conv_weight_matrix(w: Array) -> Array:
    """HWIO [kh, kw, in, out] -> torch's `weight_orig.reshape(out, -1)`, columns (in, kh, kw)."""
    return jnp.transpose(w, (3, 2, 0, 1)).reshape(w.shape[3], -1)


def power_iteration(w_mat: Array, key: Array, steps: int = 20) -> tuple[Array, Array]:
    """Approximate top singular vectors (u, v) of `w_mat`: the buffers of a fresh model."""

    def normalize(x):
        return x / jnp.maximum(jnp.linalg.norm(x), 1e-12)

    def step(_, uv):
        v = normalize(w_mat.T @ uv[0])
        return normalize(w_mat @ v), v

    v = normalize(jax.random.normal(key, (w_mat.shape[1],)))
    # A loop, not unrolled Python: init traces one of these per SN layer (~8 per block).
    return jax.lax.fori_loop(0, steps, step, (normalize(w_mat @ v), v))


def upsample_nearest2x(x: Array) -> Array:
    """`F.interpolate(scale_factor=2, mode='nearest')` for NHWC."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def max_pool2x2(x: Array) -> Array:
    """`nn.MaxPool2d(2, stride=2)` for NHWC (H and W even)."""
    n, h, w, c = x.shape
    return jnp.max(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))


# ----------------------------------------------------------------------------- layers


class SNDense(nn.Module):
    """Spectrally normalised linear layer (`snlinear`), weight [in, out]."""

    features: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        fan_in = x.shape[-1]
        w = self.param("weight", nn.initializers.normal(1.0), (fan_in, self.features))
        w_mat = w.T
        u, v = _sn_buffers(self, w_mat)
        y = x @ (w / spectral_sigma(w_mat, u, v))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,))
        return y


class SNConv(nn.Module):
    """Spectrally normalised 'same' conv (`snconv2d`, stride 1), weight HWIO."""

    features: int
    kernel_size: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k, cin = self.kernel_size, x.shape[-1]
        w = self.param("weight", nn.initializers.normal(1.0), (k, k, cin, self.features))
        w_mat = conv_weight_matrix(w)
        u, v = _sn_buffers(self, w_mat)
        y = L.conv2d(x, w / spectral_sigma(w_mat, u, v), padding=k // 2)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,))
        return y


def _sn_buffers(module: nn.Module, w_mat: Array) -> tuple[Array, Array]:
    """The stored (u, v) of a spectral-norm layer; a fresh model starts converged."""
    init = None
    if module.is_initializing():
        init = power_iteration(w_mat, module.make_rng("params"))
    u = module.variable("buffers", "sn_u", lambda: init[0])
    v = module.variable("buffers", "sn_v", lambda: init[1])
    return u.value, v.value


def _stats_buffers(module: nn.Module, n_stats: int, c: int) -> tuple[Array, Array]:
    means = module.variable("buffers", "running_means", jnp.zeros, (n_stats, c))
    var = module.variable("buffers", "running_vars", jnp.ones, (n_stats, c))
    return means.value, var.value


class ConditionalBatchNorm(nn.Module):
    """`(x - mean) / sqrt(var + eps) * (1 + scale(cond)) + offset(cond)`, eval-mode stats."""

    n_stats: int
    eps: float

    @nn.compact
    def __call__(self, x: Array, cond: Array, stat: tuple[int, float]) -> Array:
        c = x.shape[-1]
        means, var = _stats_buffers(self, self.n_stats, c)
        mean, var = select_stats(means, *stat), select_stats(var, *stat)
        weight = 1.0 + SNDense(c, use_bias=False, name="scale")(cond)
        bias = SNDense(c, use_bias=False, name="offset")(cond)
        return (x - mean) / jnp.sqrt(var + self.eps) * weight[:, None, None] + bias[:, None, None]


class BatchNorm(nn.Module):
    """The tail's plain eval-mode BN (`F.batch_norm` with weight and bias)."""

    n_stats: int
    eps: float

    @nn.compact
    def __call__(self, x: Array, stat: tuple[int, float]) -> Array:
        c = x.shape[-1]
        means, var = _stats_buffers(self, self.n_stats, c)
        mean, var = select_stats(means, *stat), select_stats(var, *stat)
        weight = self.param("weight", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * weight + bias


class GenBlock(nn.Module):
    """BigGAN-deep residual block (bottleneck reduction 4)."""

    out_channels: int
    up: bool
    n_stats: int
    eps: float

    @nn.compact
    def __call__(self, x: Array, cond: Array, stat: tuple[int, float]) -> Array:
        cin = x.shape[-1]
        mid = cin // 4
        bn = dict(n_stats=self.n_stats, eps=self.eps)
        h = x
        for i, (features, k) in enumerate(((mid, 1), (mid, 3), (mid, 3), (self.out_channels, 1))):
            h = nn.relu(ConditionalBatchNorm(**bn, name=f"bn_{i}")(h, cond, stat))
            if i == 1 and self.up:
                h = upsample_nearest2x(h)
            h = SNConv(features, k, name=f"conv_{i}")(h)
        skip = x
        if cin != self.out_channels:  # the package keeps the first half of the channels
            skip = skip[..., : cin // 2]
        if self.up:
            skip = upsample_nearest2x(skip)
        return h + skip


class SelfAttention(nn.Module):
    """SAGAN self-attention: phi and g max-pooled 2x2, `x + gamma * o_conv(attention)`."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        n, h, w, c = x.shape
        theta = SNConv(c // 8, 1, use_bias=False, name="theta")(x).reshape(n, h * w, -1)
        phi = max_pool2x2(SNConv(c // 8, 1, use_bias=False, name="phi")(x))
        g = max_pool2x2(SNConv(c // 2, 1, use_bias=False, name="g")(x))
        phi, g = phi.reshape(n, h * w // 4, -1), g.reshape(n, h * w // 4, -1)
        # Spatial positions flatten row-major in both layouts, so torch's
        # softmax(theta^T phi) and g @ attn^T become these channels-last products.
        attn = jax.nn.softmax(jnp.einsum("npc,nqc->npq", theta, phi), axis=-1)
        o = jnp.einsum("npq,nqc->npc", attn, g).reshape(n, h, w, -1)
        o = SNConv(c, 1, use_bias=False, name="o_conv")(o)
        gamma = self.param("gamma", nn.initializers.zeros, ())
        return x + gamma * o


class Generator(nn.Module):
    """(z [N, z_dim], class_vector [N, num_classes], truncation) -> image [N, R, R, 3] in
    [-1, 1] (tanh), R = `cfg.resolution`. `truncation` is a static Python float in (0, 1]."""

    cfg: BigGANConfig

    @nn.compact
    def __call__(self, z: Array, class_vector: Array, truncation: float) -> Array:
        cfg = self.cfg
        stat = bn_stat_selection(truncation, cfg.n_stats)
        n = z.shape[0]
        if z.shape != (n, cfg.z_dim) or class_vector.shape != (n, cfg.num_classes):
            raise ValueError(
                f"expected z [N, {cfg.z_dim}] and class_vector [N, {cfg.num_classes}], "
                f"got {z.shape} and {class_vector.shape}"
            )
        embed_w = _Embeddings(cfg.num_classes, cfg.z_dim, name="embeddings")()
        cond = jnp.concatenate(
            [z.astype(jnp.float32), class_vector.astype(jnp.float32) @ embed_w], axis=1
        )
        ch = cfg.channel_width
        # gen_z's output is laid out [4, 4, 16*ch] (TF's NHWC), which is already ours.
        x = SNDense(4 * 4 * 16 * ch, name="gen_z")(cond).reshape(n, 4, 4, 16 * ch)
        for i, (kind, spec) in enumerate(cfg.modules()):
            if kind == "attn":
                x = SelfAttention(name=f"layers_{i}")(x)
            else:
                up, _, cout = spec
                block = GenBlock(cout, up, cfg.n_stats, cfg.eps, name=f"layers_{i}")
                x = block(x, cond, stat)
        x = nn.relu(BatchNorm(cfg.n_stats, cfg.eps, name="bn")(x, stat))
        x = SNConv(ch, 3, name="conv_to_rgb")(x)
        return jnp.tanh(x[..., :3])


class _Embeddings(nn.Module):
    """The class embedding: a bias-free `nn.Linear(num_classes, z_dim)`, stored [in, out]."""

    num_classes: int
    z_dim: int

    @nn.compact
    def __call__(self) -> Array:
        return self.param("weight", nn.initializers.normal(1.0), (self.num_classes, self.z_dim))


def init_variables(cfg: BigGANConfig, key: Array) -> dict:
    """Random variables of `Generator(cfg)` (`jax.eval_shape` of this gives the shapes)."""
    z = jnp.zeros((1, cfg.z_dim), jnp.float32)
    c = jnp.zeros((1, cfg.num_classes), jnp.float32)
    return Generator(cfg).init(key, z, c, 1.0)
