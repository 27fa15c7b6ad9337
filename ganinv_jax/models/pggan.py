"""Progressive GAN (facebookresearch/pytorch_GAN_zoo `GNet` / `DNet`) as Flax Linen modules.

NHWC, fp32. One config covers any depth (4x4 plus `len(channels) - 1` doubled scales) and
the fade-in blend that the zoo applies while a new scale is being grown (`alpha > 0`).

Upstream conventions reproduced here (they differ from StyleGAN's, see `layers.py`):
  * Equalized LR scales the layer *output*, bias included: `y = (W x + b) * sqrt(2 / fan_in)`,
    `fan_in = in * kh * kw`. Weights are stored raw (as torch stores them) and the He constant
    is applied at run time, so conversion is a pure transpose. Dense weight `[in, out]`, conv
    weight HWIO `[kh, kw, in, out]`.
  * Up-sampling is nearest-neighbour x2, down-sampling a 2x2 average pool.
  * PixelNorm normalizes over channels: `x * rsqrt(mean(x^2) + 1e-8)`.
  * The 4x4 feature map is laid out NCHW by the format layer and flattened NCHW before D's
    dense layer, so both dense weights keep torch's feature order.
  * Minibatch-stddev uses *consecutive* groups and the *unbiased* variance (see
    `minibatch_stddev`), unlike StyleGAN's strided groups and biased variance.

Variable names (all under `params`), with r the resolution of a scale:
  G: `format`, `b4_conv`, `b{r}_conv0`, `b{r}_conv1` (r > 4), `b{r}_torgb` (every r).
  D: `b{r}_fromrgb` (every r), `b{r}_conv0`, `b{r}_conv1` (r > 4), `b4_conv`, `b4_fc`,
     `decision`.
Every scale keeps its toRGB / fromRGB layer (upstream keeps them in the state_dict), even
though only the last one or two are used.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ganinv_jax.models import layers as L

Array = jax.Array

OUTPUT_ACTIVATIONS = ("linear", "tanh")


@dataclasses.dataclass(frozen=True)
class PGGANConfig:
    """Architecture of a zoo PGGAN G/D pair.

    `channels[0]` is the 4x4 depth (`depthScale0`), `channels[i]` the depth of the scale at
    4 * 2**i (`depthOtherScales[i - 1]`).
    """

    channels: tuple[int, ...] = (512,)
    z_dim: int = 512  # latentVectorDim = noise dim + AC-GAN category dim
    img_channels: int = 3  # dimOutput
    alpha: float = 0.0  # fade-in weight of the previous scale's output (0: none)
    leaky_relu: float = 0.2  # leakyReluLeak
    pixel_norm: bool = True  # perChannelNormalization
    output_activation: str = "linear"  # 'tanh' for the DCGAN / MSE losses
    equalized_lr: bool = True  # equalizedlR
    mbstd: bool = True  # miniBatchStdDev
    mbstd_group_size: int = 4  # upstream calls miniBatchStdDev(x) with its default 4
    decision_dim: int = 1  # D outputs: 1 + categoryVectorDim

    def __post_init__(self):
        if not self.channels or any(int(c) < 1 for c in self.channels):
            raise ValueError(f"channels must be positive depths, got {self.channels}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.alpha > 0 and self.depth == 0:
            # Upstream has no lower scale to blend with (and never sets alpha at depth 0).
            raise ValueError("alpha > 0 needs at least one scale above 4x4")
        if self.output_activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(
                f"output_activation must be one of {OUTPUT_ACTIVATIONS}, "
                f"got {self.output_activation!r}"
            )
        for name in ("z_dim", "img_channels", "mbstd_group_size", "decision_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def depth(self) -> int:
        """Number of scales above 4x4 (upstream `len(scaleLayers)`)."""
        return len(self.channels) - 1

    @property
    def resolution(self) -> int:
        return 4 * 2**self.depth

    @property
    def resolutions(self) -> tuple[int, ...]:
        return tuple(4 * 2**i for i in range(len(self.channels)))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PGGANConfig":
        d = dict(d)
        if "channels" in d:
            d["channels"] = tuple(int(c) for c in d["channels"])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown PGGANConfig keys: {sorted(unknown)}")
        return cls(**d)


# ----------------------------------------------------------------------------- ops


def he_gain(fan_in: int) -> float:
    """Upstream's equalized-LR constant, sqrt(2 / fan_in) (StyleGAN uses 1 / sqrt(fan_in))."""
    return math.sqrt(2.0 / fan_in)


def leaky_relu(x: Array, slope: float) -> Array:
    return jnp.where(x >= 0, x, x * slope)


def pixel_norm(x: Array) -> Array:
    """Upstream `NormalizationLayer` over the channel axis (last, in NHWC / [N, C])."""
    return L.normalize_2nd_moment(x, axis=-1, eps=1e-8)


def upscale2x(x: Array) -> Array:
    """Nearest-neighbour x2 (upstream `Upscale2d`)."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def avg_pool2x(x: Array) -> Array:
    """`nn.AvgPool2d((2, 2))` / `F.avg_pool2d(x, (2, 2))` (even sizes)."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def minibatch_stddev(x: Array, group_size: int = 4) -> Array:
    """Append upstream's `miniBatchStdDev` feature map (one channel, last).

    Groups are *consecutive* samples (`view(-1, G, C, H, W)`): sample b is in group b // G.
    G = min(N, group_size), or N when N % G != 0. Per group: the unbiased (`torch.var`)
    variance over the group, `sqrt(var + 1e-8)`, averaged over C, H, W. A batch of one
    gets a zero channel, as upstream.
    """
    n, h, w, c = x.shape
    g = min(n, group_size)
    if n % g:
        g = n
    if g == 1:
        y = jnp.zeros((n, h, w, 1), x.dtype)
    else:
        groups = x.reshape(n // g, g, h, w, c)
        std = jnp.sqrt(jnp.var(groups, axis=1, ddof=1) + 1e-8)  # [N/G, H, W, C]
        y = jnp.repeat(jnp.mean(std, axis=(1, 2, 3)), g)  # sample b -> group b // G
        y = jnp.broadcast_to(y[:, None, None, None], (n, h, w, 1)).astype(x.dtype)
    return jnp.concatenate([x, y], axis=-1)


def flatten_nchw(x: Array) -> Array:
    """Flatten in torch's NCHW order so converted dense weights apply unchanged."""
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


def _weight_init(equalized: bool):
    # Equalized layers start from N(0, 1) (upstream `ConstrainedLayer`); plain ones from
    # torch's default, U(+-1/sqrt(fan_in)).
    if equalized:
        return nn.initializers.normal(1.0)
    return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class EqualizedConv(nn.Module):
    """`EqualizedConv2d`: 'same'-padded k x k conv, `(conv(x, W) + b) * sqrt(2 / fan_in)`."""

    features: int
    kernel_size: int
    equalized: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k, cin = self.kernel_size, x.shape[-1]
        w = self.param("weight", _weight_init(self.equalized), (k, k, cin, self.features))
        b = self.param("bias", nn.initializers.zeros, (self.features,))
        y = L.conv2d(x, w, padding=k // 2) + b
        return y * he_gain(cin * k * k) if self.equalized else y


class EqualizedDense(nn.Module):
    """`EqualizedLinear`: `(x @ W + b) * sqrt(2 / in)`."""

    features: int
    equalized: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cin = x.shape[-1]
        w = self.param("weight", _weight_init(self.equalized), (cin, self.features))
        b = self.param("bias", nn.initializers.zeros, (self.features,))
        y = x @ w + b
        return y * he_gain(cin) if self.equalized else y


def _alpha(cfg: PGGANConfig, alpha: Optional[float]) -> float:
    a = cfg.alpha if alpha is None else float(alpha)
    if not 0.0 <= a <= 1.0 or (a > 0 and cfg.depth == 0):
        raise ValueError(f"alpha must be in [0, 1] (and 0 at 4x4), got {a}")
    return a


# ----------------------------------------------------------------------------- generator


class Generator(nn.Module):
    """z `[N, z_dim]` -> image `[N, res, res, img_channels]` (NHWC, float32).

    Output range: unbounded for `output_activation='linear'` (WGAN-GP / Logistic zoo models),
    [-1, 1] for 'tanh'. `alpha` overrides `cfg.alpha` (a static Python float).
    """

    cfg: PGGANConfig

    @nn.compact
    def __call__(self, z: Array, alpha: Optional[float] = None) -> Array:
        cfg = self.cfg
        a = _alpha(cfg, alpha)
        eq = cfg.equalized_lr
        lrelu = functools.partial(leaky_relu, slope=cfg.leaky_relu)
        # Upstream calls the norm layer unconditionally after the format layer, so a model
        # without pixel norm cannot run there; here `pixel_norm=False` just skips every norm.
        norm = pixel_norm if cfg.pixel_norm else (lambda t: t)
        n, c0 = z.shape[0], cfg.channels[0]

        x = norm(z.reshape(n, -1).astype(jnp.float32))
        if x.shape[1] != cfg.z_dim:
            raise ValueError(f"z must have {cfg.z_dim} features, got shape {z.shape}")
        x = lrelu(EqualizedDense(16 * c0, eq, name="format")(x))
        x = jnp.transpose(x.reshape(n, c0, 4, 4), (0, 2, 3, 1))  # upstream view(N, -1, 4, 4)
        x = norm(x)
        x = norm(lrelu(EqualizedConv(c0, 3, eq, name="b4_conv")(x)))
        feats = [x]
        for r, ch in zip(cfg.resolutions[1:], cfg.channels[1:]):
            x = upscale2x(x)
            x = norm(lrelu(EqualizedConv(ch, 3, eq, name=f"b{r}_conv0")(x)))
            x = norm(lrelu(EqualizedConv(ch, 3, eq, name=f"b{r}_conv1")(x)))
            feats.append(x)

        to_rgb = [
            EqualizedConv(cfg.img_channels, 1, eq, name=f"b{r}_torgb") for r in cfg.resolutions
        ]
        img = to_rgb[-1](x)
        if a > 0:
            # Fade-in: the previous scale's RGB, upsampled, weighted by alpha (before the
            # output activation, as upstream).
            low = upscale2x(to_rgb[-2](feats[-2]))
            img = a * low + (1.0 - a) * img
        if self.is_initializing():  # create the unused toRGB layers' params too
            for layer, f in zip(to_rgb[:-1], feats[:-1]):
                layer(f)
        if cfg.output_activation == "tanh":
            img = jnp.tanh(img)
        return img


# ----------------------------------------------------------------------------- discriminator


class Discriminator(nn.Module):
    """image `[N, res, res, img_channels]` (NHWC) -> logits `[N, decision_dim]`.

    The minibatch-stddev feature makes each output depend on its group of 4 consecutive
    samples. `alpha` overrides `cfg.alpha`.
    """

    cfg: PGGANConfig

    @nn.compact
    def __call__(self, img: Array, alpha: Optional[float] = None) -> Array:
        cfg = self.cfg
        a = _alpha(cfg, alpha)
        eq = cfg.equalized_lr
        lrelu = functools.partial(leaky_relu, slope=cfg.leaky_relu)
        want = (cfg.resolution, cfg.resolution, cfg.img_channels)
        if img.ndim != 4 or tuple(img.shape[1:]) != want:
            raise ValueError(f"image must be [N, {', '.join(map(str, want))}], got {img.shape}")
        img = img.astype(jnp.float32)
        res, chs = cfg.resolutions, cfg.channels

        from_rgb = [EqualizedConv(c, 1, eq, name=f"b{r}_fromrgb") for r, c in zip(res, chs)]
        if a > 0:
            low = lrelu(from_rgb[-2](avg_pool2x(img)))
        x = lrelu(from_rgb[-1](img))
        # Upstream quirk, kept: the blend is applied only when there are >= 2 scales above
        # 4x4 (`len(scaleLayers) > 1`), so at 8x8 D ignores alpha although G uses it.
        merge = a > 0 and cfg.depth > 1
        for i in reversed(range(1, len(chs))):
            x = lrelu(EqualizedConv(chs[i], 3, eq, name=f"b{res[i]}_conv0")(x))
            x = lrelu(EqualizedConv(chs[i - 1], 3, eq, name=f"b{res[i]}_conv1")(x))
            x = avg_pool2x(x)
            if merge:
                x = a * low + (1.0 - a) * x
                merge = False
        if self.is_initializing():  # create the unused fromRGB layers' params too
            for layer in from_rgb[:-1]:
                layer(img)

        if cfg.mbstd:
            x = minibatch_stddev(x, cfg.mbstd_group_size)
        x = lrelu(EqualizedConv(chs[0], 3, eq, name="b4_conv")(x))
        x = lrelu(EqualizedDense(chs[0], eq, name="b4_fc")(flatten_nchw(x)))
        return EqualizedDense(cfg.decision_dim, eq, name="decision")(x)


# ----------------------------------------------------------------------------- init

NETWORKS = ("G_ema", "G", "D")


def init_variables(cfg: PGGANConfig, net: str, key: jax.Array) -> Any:
    """Randomly initialised variables (`{'params': ...}`) of 'G_ema' / 'G' or 'D'."""
    if net in ("G_ema", "G"):
        return Generator(cfg).init({"params": key}, jnp.zeros((1, cfg.z_dim), jnp.float32))
    if net == "D":
        shape = (1, cfg.resolution, cfg.resolution, cfg.img_channels)
        return Discriminator(cfg).init({"params": key}, jnp.zeros(shape, jnp.float32))
    raise ValueError(f"unknown network {net!r}; expected one of {NETWORKS}")


def abstract_variables(cfg: PGGANConfig, networks: Sequence[str]) -> dict[str, Any]:
    """`jax.eval_shape` of `init_variables` for each network: shapes only, no compute."""
    return {
        net: jax.eval_shape(functools.partial(init_variables, cfg, net), jax.random.key(0))
        for net in networks
    }
