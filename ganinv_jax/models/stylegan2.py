"""StyleGAN2 generator and discriminator as pure Flax Linen modules (NHWC, fp32).

One implementation reproduces both public PyTorch lineages exactly:
  * NVlabs stylegan2-ada-pytorch (`Generator`, `Discriminator`; architectures
    'orig' / 'skip' / 'resnet', conv clamping, conditional mapping and projection D);
  * rosinality stylegan2-pytorch (skip G, resnet D, `fan_in_scale_modconv=True`).

Variables:
  * `params`: trainable weights, raw (equalized-LR gains applied at run time, see
    `layers.py`). Names mirror NVlabs (`mapping/fc0`, `synthesis/b8/conv0/affine`, ...).
  * `buffers`: `mapping/w_avg` and one `noise_const` `[res, res]` per synthesis layer.

Noise is an explicit input: `noise_mode='const'` (the buffers), `'random'` (rng stream
'noise'), `'none'`, or a dict `noise={'b8.conv0': [res, res] or [N, res, res], ...}` that
overrides the mode for the layers it names (the StyleGAN2 projector optimizes these).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ganinv_jax.models import layers as L

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class StyleGAN2Config:
    """Architecture of a StyleGAN2 G/D pair. `channels[i]` is the width at resolution 4 * 2**i."""

    resolution: int = 256
    channels: tuple[int, ...] = ()
    z_dim: int = 512
    w_dim: int = 512
    c_dim: int = 0
    img_channels: int = 3
    mapping_layers: int = 8
    mapping_lr_multiplier: float = 0.01
    mapping_layer_features: Optional[int] = None  # default: w_dim
    architecture: str = "skip"  # G: 'orig' | 'skip' | 'resnet'
    conv_clamp: Optional[float] = None  # NVlabs uses 256; rosinality None
    fir: tuple[int, ...] = L.DEFAULT_FIR
    fan_in_scale_modconv: bool = False  # rosinality: True
    d_architecture: str = "resnet"  # D: 'orig' | 'skip' | 'resnet'
    mbstd_group_size: int = 4
    mbstd_num_channels: int = 1
    d_cmap_dim: Optional[int] = None  # conditional D; default channels[0]
    d_mapping_layers: int = 8  # conditional D's mapping of c
    d_w_head: bool = False  # InvGAN: a second D head that infers w

    def __post_init__(self):
        log2 = math.log2(self.resolution)
        if self.resolution < 4 or log2 != int(log2):
            raise ValueError(f"resolution must be a power of two >= 4, got {self.resolution}")
        if len(self.channels) != self.num_blocks:
            raise ValueError(
                f"channels needs {self.num_blocks} entries (4..{self.resolution}), "
                f"got {len(self.channels)}"
            )
        if self.architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"unknown G architecture {self.architecture!r}")
        if self.d_architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"unknown D architecture {self.d_architecture!r}")
        if self.img_channels not in (1, 3):
            raise ValueError(f"img_channels must be 1 or 3, got {self.img_channels}")

    @property
    def num_blocks(self) -> int:
        return int(math.log2(self.resolution)) - 1

    @property
    def resolutions(self) -> tuple[int, ...]:
        return tuple(4 * 2**i for i in range(self.num_blocks))

    @property
    def num_ws(self) -> int:
        return 2 * self.num_blocks  # = 2 * log2(res) - 2

    def ch(self, res: int) -> int:
        return self.channels[int(math.log2(res)) - 2]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StyleGAN2Config":
        d = dict(d)
        for key in ("channels", "fir"):
            if key in d:
                d[key] = tuple(d[key])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown StyleGAN2Config keys: {sorted(unknown)}")
        return cls(**d)


def channels_from_base(
    resolution: int, channel_base: int = 32768, channel_max: int = 512
) -> tuple[int, ...]:
    """NVlabs convention: `min(channel_base // res, channel_max)`."""
    return tuple(
        min(channel_base // r, channel_max)
        for r in (4 * 2**i for i in range(int(math.log2(resolution)) - 1))
    )


def channels_from_multiplier(
    resolution: int, channel_multiplier: int = 2, narrow: int = 1
) -> tuple[int, ...]:
    """rosinality convention: 512 up to 32x32, then `(2**14 / res) * channel_multiplier`.

    `narrow` divides every width (tests use tiny models).
    """
    table = {
        4: 512,
        8: 512,
        16: 512,
        32: 512,
        64: 256 * channel_multiplier,
        128: 128 * channel_multiplier,
        256: 64 * channel_multiplier,
        512: 32 * channel_multiplier,
        1024: 16 * channel_multiplier,
    }
    out = []
    for r in (4 * 2**i for i in range(int(math.log2(resolution)) - 1)):
        out.append(
            max(1, table[r] // narrow)
            if r in table
            else max(1, 16 * channel_multiplier * 1024 // r // narrow)
        )
    return tuple(out)


def noise_layer_names(cfg: StyleGAN2Config) -> list[str]:
    """Names of the noise inputs, in the rosinality `noises.noise_{i}` order."""
    names = ["b4.conv1"]
    for r in cfg.resolutions[1:]:
        names += [f"b{r}.conv0", f"b{r}.conv1"]
    return names


def noise_shapes(cfg: StyleGAN2Config) -> dict[str, tuple[int, int]]:
    return {n: (int(n.split(".")[0][1:]),) * 2 for n in noise_layer_names(cfg)}


# ----------------------------------------------------------------------------- mapping


class MappingNetwork(nn.Module):
    """z (+ class c) -> w, broadcast to `num_ws`, with truncation towards `w_avg`."""

    z_dim: int
    c_dim: int
    w_dim: int
    num_ws: Optional[int]
    num_layers: int
    lr_multiplier: float = 0.01
    layer_features: Optional[int] = None

    @nn.compact
    def __call__(
        self,
        z: Optional[Array],
        c: Optional[Array] = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: Optional[int] = None,
    ) -> Array:
        feats = []
        if self.z_dim > 0:
            feats.append(L.normalize_2nd_moment(z.astype(jnp.float32)))
        if self.c_dim > 0:
            if c is None:
                raise ValueError(f"this generator is conditional (c_dim={self.c_dim}): pass c")
            y = L.DenseLayer(self.w_dim, name="embed")(c.astype(jnp.float32))
            feats.append(L.normalize_2nd_moment(y))
        x = jnp.concatenate(feats, axis=1) if len(feats) > 1 else feats[0]
        hidden = self.layer_features or self.w_dim
        for i in range(self.num_layers):
            out = self.w_dim if i == self.num_layers - 1 else hidden
            x = L.DenseLayer(
                out, lr_multiplier=self.lr_multiplier, activation="lrelu", name=f"fc{i}"
            )(x)
        if self.num_ws is None:
            return x
        w_avg = self.variable("buffers", "w_avg", jnp.zeros, (self.w_dim,)).value
        ws = jnp.broadcast_to(x[:, None, :], (x.shape[0], self.num_ws, self.w_dim))
        if truncation_psi != 1:
            cut = self.num_ws if truncation_cutoff is None else truncation_cutoff
            trunc = w_avg + truncation_psi * (ws[:, :cut] - w_avg)  # w_avg.lerp(w, psi)
            ws = ws.at[:, :cut].set(trunc)
        return ws


# ----------------------------------------------------------------------------- synthesis


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (+ 2x up) -> noise -> bias -> lrelu*sqrt2 -> clamp."""

    out_channels: int
    resolution: int
    up: int = 1
    conv_clamp: Optional[float] = None
    fir: Sequence[int] = L.DEFAULT_FIR
    fan_in_scale: bool = False

    @nn.compact
    def __call__(
        self,
        x: Array,
        w: Array,
        noise_mode: str = "const",
        noise: Optional[Array] = None,
        gain: float = 1.0,
    ) -> Array:
        cin = x.shape[-1]
        styles = L.DenseLayer(cin, bias_init=1.0, name="affine")(w)
        weight = self.param("weight", nn.initializers.normal(1.0), (3, 3, cin, self.out_channels))
        x = L.modulated_conv2d(
            x,
            weight,
            styles,
            L.fir_taps(self.fir),
            demodulate=True,
            up=self.up,
            padding=1,
            fan_in_scale=self.fan_in_scale,
        )
        strength = self.param("noise_strength", nn.initializers.zeros, ())
        r = self.resolution
        const = self.variable(
            "buffers", "noise_const", lambda: jax.random.normal(self.make_rng("params"), (r, r))
        )
        if noise is None:
            if noise_mode == "const":
                noise = const.value
            elif noise_mode == "random":
                noise = jax.random.normal(self.make_rng("noise"), (x.shape[0], r, r))
            elif noise_mode != "none":
                raise ValueError(
                    f"noise_mode must be 'const', 'random' or 'none', got {noise_mode!r}"
                )
        if noise is not None:
            noise = jnp.broadcast_to(noise, (x.shape[0], r, r))
            x = x + (noise * strength)[..., None].astype(x.dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.out_channels,))
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return L.bias_act(x, bias, act="lrelu", gain=L.SQRT2 * gain, clamp=clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv without demodulation, styles scaled by 1/sqrt(fan_in)."""

    out_channels: int
    conv_clamp: Optional[float] = None

    @nn.compact
    def __call__(self, x: Array, w: Array) -> Array:
        cin = x.shape[-1]
        styles = L.DenseLayer(cin, bias_init=1.0, name="affine")(w) * (1.0 / math.sqrt(cin))
        weight = self.param("weight", nn.initializers.normal(1.0), (1, 1, cin, self.out_channels))
        x = L.modulated_conv2d(x, weight, styles, L.fir_taps(L.DEFAULT_FIR), demodulate=False)
        bias = self.param("bias", nn.initializers.zeros, (self.out_channels,))
        return L.bias_act(x, bias, act="linear", clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of G: (const | up-conv0) -> conv1 -> (ToRGB), per `architecture`."""

    cfg: StyleGAN2Config
    resolution: int

    @nn.compact
    def __call__(
        self,
        x: Optional[Array],
        img: Optional[Array],
        ws: Array,
        noise_mode: str,
        noise: Mapping[str, Array],
    ):
        cfg, r = self.cfg, self.resolution
        cout = cfg.ch(r)
        is_last = r == cfg.resolution
        kw = dict(conv_clamp=cfg.conv_clamp, fir=cfg.fir, fan_in_scale=cfg.fan_in_scale_modconv)
        name = f"b{r}"
        if r == 4:
            const = self.param("const", nn.initializers.normal(1.0), (4, 4, cout))
            x = jnp.broadcast_to(const[None], (ws.shape[0], 4, 4, cout)).astype(jnp.float32)
            x = SynthesisLayer(cout, r, name="conv1", **kw)(
                x, ws[:, 0], noise_mode, noise.get(f"{name}.conv1")
            )
            w_rgb = ws[:, 1] if (is_last or cfg.architecture == "skip") else None
        else:
            if cfg.architecture == "resnet":
                y = L.ConvLayer(cout, 1, use_bias=False, up=2, fir=cfg.fir, name="skip")(
                    x, gain=math.sqrt(0.5)
                )
            x = SynthesisLayer(cout, r, up=2, name="conv0", **kw)(
                x, ws[:, 0], noise_mode, noise.get(f"{name}.conv0")
            )
            gain = math.sqrt(0.5) if cfg.architecture == "resnet" else 1.0
            x = SynthesisLayer(cout, r, name="conv1", **kw)(
                x, ws[:, 1], noise_mode, noise.get(f"{name}.conv1"), gain=gain
            )
            if cfg.architecture == "resnet":
                x = y + x
            w_rgb = ws[:, 2] if (is_last or cfg.architecture == "skip") else None
        if img is not None:
            img = L.upsample2d(img, L.fir_taps(cfg.fir))
        if w_rgb is not None:
            y = ToRGBLayer(cfg.img_channels, conv_clamp=cfg.conv_clamp, name="torgb")(x, w_rgb)
            img = y if img is None else img + y
        return x, img


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> image [N, res, res, img_channels] (NHWC, unclamped)."""

    cfg: StyleGAN2Config

    @nn.compact
    def __call__(
        self, ws: Array, noise_mode: str = "const", noise: Optional[Mapping[str, Array]] = None
    ) -> Array:
        cfg = self.cfg
        if ws.ndim != 3 or ws.shape[1:] != (cfg.num_ws, cfg.w_dim):
            raise ValueError(f"ws must be [N, {cfg.num_ws}, {cfg.w_dim}], got {ws.shape}")
        ws = ws.astype(jnp.float32)
        noise = dict(noise or {})
        unknown = set(noise) - set(noise_layer_names(cfg))
        if unknown:
            raise ValueError(f"unknown noise inputs {sorted(unknown)}")
        x = img = None
        w_idx = 0
        for r in cfg.resolutions:
            num_conv = 1 if r == 4 else 2
            # A block reads its convs' ws plus the next w for ToRGB (shared with the next conv0).
            block_ws = ws[:, w_idx : w_idx + num_conv + 1]
            x, img = SynthesisBlock(cfg, r, name=f"b{r}")(x, img, block_ws, noise_mode, noise)
            w_idx += num_conv
        return img


class Generator(nn.Module):
    """StyleGAN2 G: `mapping` (z, c -> ws) and `synthesis` (ws -> image); `__call__` does both."""

    cfg: StyleGAN2Config

    def setup(self):
        cfg = self.cfg
        self.mapping_net = MappingNetwork(
            z_dim=cfg.z_dim,
            c_dim=cfg.c_dim,
            w_dim=cfg.w_dim,
            num_ws=cfg.num_ws,
            num_layers=cfg.mapping_layers,
            lr_multiplier=cfg.mapping_lr_multiplier,
            layer_features=cfg.mapping_layer_features,
            name="mapping",
        )
        self.synthesis_net = SynthesisNetwork(cfg, name="synthesis")

    def mapping(self, z, c=None, truncation_psi=1.0, truncation_cutoff=None):
        return self.mapping_net(z, c, truncation_psi, truncation_cutoff)

    def synthesis(self, ws, noise_mode="const", noise=None):
        return self.synthesis_net(ws, noise_mode, noise)

    def __call__(self, z, c=None, truncation_psi=1.0, noise_mode="const"):
        return self.synthesis(self.mapping(z, c, truncation_psi), noise_mode)


def style_mix(ws_a: Array, ws_b: Array, index: int) -> Array:
    """W+ that takes layers `[:index]` from `ws_a` and `[index:]` from `ws_b`."""
    return jnp.concatenate([ws_a[:, :index], ws_b[:, index:]], axis=1)


# ----------------------------------------------------------------------------- discriminator


def minibatch_stddev(x: Array, group_size: int, num_channels: int) -> Array:
    """Append the minibatch-stddev feature map(s), with the upstream *strided* grouping.

    Sample b belongs to group b % (N // G). N must be divisible by G; when it is not, the
    largest divisor of N not above `group_size` is used (upstream would raise).
    """
    n, h, w, c = x.shape
    g = min(group_size, n)
    while n % g:
        g -= 1
    f = num_channels
    y = x.reshape(g, n // g, h, w, f, c // f)
    y = y - jnp.mean(y, axis=0)
    y = jnp.sqrt(jnp.mean(jnp.square(y), axis=0) + 1e-8)  # [n/g, h, w, f, c/f]
    y = jnp.mean(y, axis=(1, 2, 4))  # [n/g, f]
    y = jnp.tile(y, (g, 1))  # sample b -> y[b % (n/g)]
    y = jnp.broadcast_to(y[:, None, None, :], (n, h, w, f))
    return jnp.concatenate([x, y.astype(x.dtype)], axis=-1)


def _flatten_nchw(x: Array) -> Array:
    """Flatten in PyTorch's NCHW order so converted FC weights apply unchanged."""
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


class DiscriminatorBlock(nn.Module):
    cfg: StyleGAN2Config
    resolution: int

    @nn.compact
    def __call__(self, x: Optional[Array], img: Array):
        cfg, r = self.cfg, self.resolution
        tmp, out = cfg.ch(r), cfg.ch(r // 2)
        clamp = cfg.conv_clamp
        if x is None or cfg.d_architecture == "skip":
            y = L.ConvLayer(tmp, 1, activation="lrelu", conv_clamp=clamp, name="fromrgb")(img)
            x = y if x is None else x + y
            if cfg.d_architecture == "skip":
                img = L.downsample2d(img, L.fir_taps(cfg.fir))
        if cfg.d_architecture == "resnet":
            y = L.ConvLayer(out, 1, use_bias=False, down=2, fir=cfg.fir, name="skip")(
                x, gain=math.sqrt(0.5)
            )
        x = L.ConvLayer(tmp, 3, activation="lrelu", conv_clamp=clamp, name="conv0")(x)
        gain = math.sqrt(0.5) if cfg.d_architecture == "resnet" else 1.0
        x = L.ConvLayer(
            out, 3, activation="lrelu", down=2, fir=cfg.fir, conv_clamp=clamp, name="conv1"
        )(x, gain=gain)
        if cfg.d_architecture == "resnet":
            x = y + x
        return x, img


class DiscriminatorEpilogue(nn.Module):
    """The b4 epilogue: (fromrgb) -> mbstd -> conv -> flatten (NCHW order) -> fc -> out."""

    cfg: StyleGAN2Config

    def setup(self):
        cfg = self.cfg
        c4 = cfg.ch(4)
        if cfg.resolution == 4 or cfg.d_architecture == "skip":
            self.fromrgb = L.ConvLayer(c4, 1, activation="lrelu", conv_clamp=cfg.conv_clamp)
        self.conv = L.ConvLayer(c4, 3, activation="lrelu", conv_clamp=cfg.conv_clamp)
        self.fc = L.DenseLayer(c4, activation="lrelu")
        self.out = L.DenseLayer((cfg.d_cmap_dim or c4) if cfg.c_dim else 1)

    def add_rgb(self, x: Optional[Array], img: Array) -> Array:
        if self.cfg.resolution == 4 or self.cfg.d_architecture == "skip":
            y = self.fromrgb(img)
            x = y if x is None else x + y
        return x

    def __call__(self, x: Array) -> Array:
        cfg = self.cfg
        x = minibatch_stddev(x, cfg.mbstd_group_size, cfg.mbstd_num_channels)
        return self.out(self.fc(_flatten_nchw(self.conv(x))))


class WHead(nn.Module):
    """InvGAN's second D head: 4x4 features -> conv -> fc -> w (no mbstd: per image)."""

    cfg: StyleGAN2Config

    @nn.compact
    def __call__(self, x4: Array) -> Array:
        c4 = self.cfg.ch(4)
        h = L.ConvLayer(c4, 3, activation="lrelu", name="conv")(x4)
        h = L.DenseLayer(c4, activation="lrelu", name="fc")(_flatten_nchw(h))
        return L.DenseLayer(self.cfg.w_dim, name="out")(h)


class Discriminator(nn.Module):
    """StyleGAN2 D: blocks b{res}..b8, then the b4 epilogue; optional conditional projection.

    Returns logits `[N, 1]`. With `return_features=True` also returns the list of block
    outputs (taken before mbstd, so they do not depend on the rest of the batch), which
    InvGAN's feature matching uses. With `cfg.d_w_head`, `return_w=True` (or the method
    `infer_w`) also gives InvGAN's inferred w `[N, w_dim]`, again per image.
    Initialize with `return_w=cfg.d_w_head` so the head's params exist.
    """

    cfg: StyleGAN2Config

    def setup(self):
        cfg = self.cfg
        self.blocks = [
            DiscriminatorBlock(cfg, r, name=f"b{r}") for r in reversed(cfg.resolutions[1:])
        ]
        self.b4 = DiscriminatorEpilogue(cfg)
        if cfg.c_dim:
            self.mapping = MappingNetwork(
                z_dim=0,
                c_dim=cfg.c_dim,
                w_dim=cfg.d_cmap_dim or cfg.ch(4),
                num_ws=None,
                num_layers=cfg.d_mapping_layers,
            )
        if cfg.d_w_head:
            self.w_head = WHead(cfg)

    def features(self, img: Array) -> tuple[Array, list[Array]]:
        """The 4x4 epilogue input and the list of block outputs."""
        x, feats = None, []
        img = img.astype(jnp.float32)
        for block in self.blocks:
            x, img = block(x, img)
            feats.append(x)
        x = self.b4.add_rgb(x, img)
        if not feats:
            feats.append(x)
        return x, feats

    def infer_w(self, img: Array) -> Array:
        if not self.cfg.d_w_head:
            raise ValueError("this discriminator has no w head (cfg.d_w_head=False)")
        return self.w_head(self.features(img)[0])

    def __call__(
        self,
        img: Array,
        c: Optional[Array] = None,
        return_features: bool = False,
        return_w: bool = False,
    ):
        cfg = self.cfg
        x, feats = self.features(img)
        logits = self.b4(x)
        if cfg.c_dim:
            if c is None:
                raise ValueError(f"this discriminator is conditional (c_dim={cfg.c_dim}): pass c")
            cmap = self.mapping(None, c)
            logits = jnp.sum(logits * cmap, axis=1, keepdims=True) / math.sqrt(cmap.shape[1])
        out = (logits,)
        if return_features:
            out += (feats,)
        if return_w:
            if not cfg.d_w_head:
                raise ValueError("this discriminator has no w head (cfg.d_w_head=False)")
            out += (self.w_head(x),)
        return out[0] if len(out) == 1 else out
