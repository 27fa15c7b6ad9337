"""Trained GAN encoders: paper 000's adaptive encoders (StyleGAN2, PGGAN, BigGAN) and paper 003's
CRG encoder (StyleGAN2).

    cfg = encoders.config_for_generator("adaptive", gan.config)     # widths from G (Table 9)
    params = encoders.init_params(cfg, key, latent_mean=w_avg)
    ws = encoders.encode(cfg, params, images)                       # adaptive: [N, num_ws, w_dim]
    ws = encoders.to_ws(cfg, encoders.encode(cfg, p_crg, images),   # crg: [N, z_dim | w_dim]
                        mapping=lambda z: gan.mapping_fn(gan.G, z))
    encoders.write_dir(DIR, cfg, params, meta)  /  cfg, params, doc = encoders.read_dir(DIR)

The generator is `EncoderConfig.generator` and the prediction `target`:
    stylegan2  adaptive -> 'wplus' [num_ws, w_dim];  crg -> 'z' [z_dim] | 'w' [w_dim]
    pggan      adaptive -> 'z' [z_dim]                     (`other_gans.PGGANEncoder`)
    biggan     adaptive -> 'z_class' [z_dim + num_classes]  (`other_gans.BigGANEncoder`)
PGGAN's and BigGAN's predictions are their `inversion.arch` latents as they are (BigGAN's:
concat(z, class probabilities)): render them with `arch_for(gan_config).render`, not `to_ws`.

An `EncoderConfig` is the whole architecture (a frozen dataclass: a jit static argument, and
config.json's `encoder` entry), so a saved encoder is rebuilt from its DIR alone:
    DIR/config.json   {format_version, architecture: 'encoder', encoder: EncoderConfig.to_dict(),
                       generator: {path, config: <G's config>.to_dict()}, source: {...}}
    DIR/params/       orbax checkpoint of the encoder's params tree
Training (StyleGAN2 only): `ganinv_jax.training.encoder`. Images are NHWC in [-1, 1] with 1 or
3 channels (BigGAN: 3).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ganinv_jax import atomic, checkpointing
from ganinv_jax.encoders.adaptive import AdaptiveEncoder
from ganinv_jax.encoders.crg import VGG19_STAGES, VGG19_WIDTHS, CRGEncoder
from ganinv_jax.encoders.other_gans import BigGANEncoder, PGGANEncoder
from ganinv_jax.errors import UserError
from ganinv_jax.models import biggan, pggan
from ganinv_jax.models import stylegan2 as sg2

KINDS = ("adaptive", "crg")
GENERATORS = ("stylegan2", "pggan", "biggan")
# (generator, kind) -> the targets that encoder can predict (the first is the default)
TARGETS = {
    ("stylegan2", "adaptive"): ("wplus",),
    ("stylegan2", "crg"): ("z", "w"),
    ("pggan", "adaptive"): ("z",),
    ("biggan", "adaptive"): ("z_class",),
}
# Fields added after FORMAT_VERSION 1's first encoders, with the values those encoders had:
# to_dict leaves them out at these values, so a StyleGAN2 encoder's config.json is unchanged.
_ADDED_FIELDS = {"generator": "stylegan2", "num_classes": 0}
CONFIG_NAME = "config.json"
PARAMS_NAME = "params"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """The architecture of a trained encoder and of the latent it predicts.

    generator: the G family it inverts, 'stylegan2' | 'pggan' | 'biggan' (see `TARGETS`).
    kind 'adaptive': `channels` = each block's output width, full resolution first
      (len = log2(resolution) - 1); `in_channels` = the first block's input width.
    kind 'crg' (StyleGAN2): `channels` = the five VGG19 stage widths; `dropout` = spatial
      dropout rate.
    target: 'wplus' ([N, num_ws, w_dim]) | 'z' ([N, z_dim]) | 'w' ([N, w_dim]) |
      'z_class' (BigGAN: [N, z_dim + num_classes], concat(z, class probabilities)).
    num_ws, w_dim: StyleGAN2's W; stored as 0 for PGGAN / BigGAN (they have none).
    num_classes: BigGAN's class count (0 otherwise).
    """

    kind: str
    resolution: int
    img_channels: int = 3
    z_dim: int = 512
    w_dim: int = 512
    num_ws: int = 14
    channels: tuple[int, ...] = ()
    in_channels: int = 0
    target: str = "wplus"
    dropout: float = 0.5
    generator: str = "stylegan2"
    num_classes: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"encoder kind {self.kind!r}: expected one of {KINDS}")
        if self.generator not in GENERATORS:
            raise ValueError(f"encoder generator {self.generator!r}: expected one of {GENERATORS}")
        targets = TARGETS.get((self.generator, self.kind))
        if targets is None:
            raise ValueError(f"{self.kind} encoders are for StyleGAN2, not {self.generator}")
        if self.target not in targets:
            raise ValueError(
                f"{self.kind} encoder target {self.target!r}: expected one of {targets}"
                + ("" if self.generator == "stylegan2" else f" for {self.generator}")
            )
        if self.generator != "stylegan2":  # no W: one canonical value, so configs compare
            object.__setattr__(self, "num_ws", 0)
            object.__setattr__(self, "w_dim", 0)
        if self.img_channels not in (1, 3):
            raise ValueError(f"img_channels must be 1 or 3, got {self.img_channels}")
        if self.generator == "biggan" and (self.num_classes < 1 or self.img_channels != 3):
            raise ValueError(
                f"a biggan encoder needs num_classes >= 1 and RGB images, got num_classes="
                f"{self.num_classes}, img_channels={self.img_channels}"
            )
        if self.generator != "biggan" and self.num_classes != 0:
            raise ValueError(f"num_classes is BigGAN's; a {self.generator} encoder has 0")
        log2 = math.log2(self.resolution) if self.resolution > 0 else 0.5
        if self.resolution < 4 or log2 != int(log2):
            raise ValueError(f"resolution must be a power of two >= 4, got {self.resolution}")
        if self.kind == "adaptive":
            if len(self.channels) != int(log2) - 1:
                raise ValueError(
                    f"adaptive encoder at {self.resolution}px needs {int(log2) - 1} block "
                    f"widths (one per G block), got {len(self.channels)}"
                )
            if self.target == "wplus" and self.num_ws != 2 * len(self.channels):
                raise ValueError(
                    f"adaptive encoder: {len(self.channels)} blocks give "
                    f"{2 * len(self.channels)} ws, config says num_ws={self.num_ws}"
                )
        elif len(self.channels) != len(VGG19_STAGES):
            raise ValueError(f"crg encoder needs {len(VGG19_STAGES)} stage widths")

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one image's prediction."""
        if self.target == "wplus":
            return (self.num_ws, self.w_dim)
        if self.target == "z_class":
            return (self.z_dim + self.num_classes,)
        return (self.z_dim,) if self.target == "z" else (self.w_dim,)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for name, old in _ADDED_FIELDS.items():
            if d[name] == old:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "EncoderConfig":
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown EncoderConfig keys: {sorted(unknown)}")
        if "channels" in d:
            d["channels"] = tuple(int(c) for c in d["channels"])
        return cls(**d)


def generator_family(gan_config: Any) -> str:
    """'stylegan2' | 'pggan' | 'biggan': the family of a generator config (by its type)."""
    for name, cls in (
        ("stylegan2", sg2.StyleGAN2Config),
        ("pggan", pggan.PGGANConfig),
        ("biggan", biggan.BigGANConfig),
    ):
        if isinstance(gan_config, cls):
            return name
    raise ValueError(
        f"no encoder for a {type(gan_config).__name__} generator (known: StyleGAN2Config, "
        "PGGANConfig, BigGANConfig)"
    )


def image_channels(gan_config: Any) -> int:
    """The channels of G's images. BigGAN's are the first 3 of its to-RGB conv's
    `channel_width` outputs (fewer only for toy widths below 3)."""
    if generator_family(gan_config) == "biggan":
        return min(3, gan_config.channel_width)
    return gan_config.img_channels


def generator_widths(gan_config: Any) -> tuple[int, ...]:
    """G's feature width at each resolution, full resolution first, down to 4x4.

    BigGAN: the output width of the last GenBlock at that resolution (4x4: `gen_z`'s 16 ch when
    no block stays at 4x4)."""
    family = generator_family(gan_config)
    if family == "stylegan2":
        return tuple(gan_config.ch(r) for r in reversed(gan_config.resolutions))
    if family == "pggan":
        return tuple(int(c) for c in reversed(gan_config.channels))
    ch, res, widths = gan_config.channel_width, 4, {4: 16 * gan_config.channel_width}
    for up, _, cout in gan_config.layers:
        res *= 2 if up else 1
        widths[res] = ch * cout
    return tuple(widths[r] for r in sorted(widths, reverse=True))


def config_for_generator(
    kind: str,
    gan_config: Any,
    width: float = 1.0,
    max_channels: int = 512,
    target: str = "",
    dropout: float = 0.5,
) -> EncoderConfig:
    """The encoder for a generator: a `StyleGAN2Config`, `PGGANConfig` or `BigGANConfig`.

    adaptive: block widths = G's channels read from full resolution down to 4x4
    (`generator_widths`), times `width`, capped at `max_channels`; the first block's input is
    half the first width. That is paper Table 9 exactly for NVlabs/rosinality 256/512/1024
    StyleGAN2s. Paper Table 10 (BigGAN) does not follow G: its widths are Table 9's rule
    min(512, 32768 / r) for a block at r x r, so BigGAN-deep-128 (128 channels at 128x128)
    gets (128, 256, 512, ...) from 64 here where Table 10 has (256, 512, ...) from 128;
    width=2 gives Table 10's. Targets: StyleGAN2 'wplus', PGGAN 'z', BigGAN 'z_class'.
    crg (StyleGAN2 only): VGG19 widths (64, 128, 256, 512, 512) times `width`; target 'z'
    (default) or 'w'.
    """
    family = generator_family(gan_config)
    scale = lambda c: max(1, min(max_channels, int(round(width * c))))
    if family == "stylegan2":
        common = dict(
            resolution=gan_config.resolution,
            img_channels=gan_config.img_channels,
            z_dim=gan_config.z_dim,
            w_dim=gan_config.w_dim,
            num_ws=gan_config.num_ws,
        )
    else:
        is_big = family == "biggan"
        common = dict(
            resolution=gan_config.resolution,
            img_channels=image_channels(gan_config),
            z_dim=gan_config.z_dim,
            generator=family,
            num_classes=gan_config.num_classes if is_big else 0,
        )
    if kind == "adaptive":
        channels = tuple(scale(c) for c in generator_widths(gan_config))
        return EncoderConfig(
            kind="adaptive",
            channels=channels,
            in_channels=max(1, channels[0] // 2),
            target=target or TARGETS[(family, "adaptive")][0],
            **common,
        )
    if kind == "crg":
        return EncoderConfig(
            kind="crg",
            channels=tuple(scale(c) for c in VGG19_WIDTHS),
            target=target or "z",
            dropout=dropout,
            **common,
        )
    raise ValueError(f"encoder kind {kind!r}: expected one of {KINDS}")


# ----------------------------------------------------------------------------- functions


def build(cfg: EncoderConfig) -> nn.Module:
    """The Flax module of `cfg`: `apply({'params': p}, images, train)`."""
    if cfg.generator == "pggan":
        return PGGANEncoder(cfg.channels, cfg.z_dim, cfg.in_channels)
    if cfg.generator == "biggan":
        return BigGANEncoder(cfg.channels, cfg.z_dim, cfg.num_classes, cfg.in_channels)
    if cfg.kind == "adaptive":
        return AdaptiveEncoder(cfg.channels, cfg.w_dim, cfg.in_channels)
    out_dim = cfg.z_dim if cfg.target == "z" else cfg.w_dim
    return CRGEncoder(out_dim, cfg.channels, VGG19_STAGES, cfg.dropout)


def init_params(cfg: EncoderConfig, key: jax.Array, latent_mean: Optional[jax.Array] = None):
    """Random params; with `latent_mean` ([w_dim] or [z_dim]; BigGAN [z_dim + num_classes])
    every output layer's bias starts there (adaptive: each style FC; crg: the head; PGGAN: the
    z FC; BigGAN: the z FC at the z part, the logits FC at log(class part)), so E(x) starts
    near the mean latent.

    Only the initialization differs from the papers' (zero biases): the FCs have biases anyway,
    so the function class is the same, and training starts from G's mean-w reconstruction
    instead of an arbitrary point of W+ (e4e/pSp add w_avg to their output for the same reason).
    """
    img = jnp.zeros((1, cfg.resolution, cfg.resolution, cfg.img_channels), jnp.float32)
    params = build(cfg).init({"params": key}, img)["params"]
    if latent_mean is None:
        return params
    mean = jnp.asarray(latent_mean, jnp.float32).reshape(-1)
    if cfg.generator != "stylegan2":
        if mean.shape != cfg.latent_shape:
            raise ValueError(f"latent_mean must be {cfg.latent_shape}, got {mean.shape}")
        biases = _head_biases(cfg, mean)
        return {**params, **{k: {**params[k], "bias": b} for k, b in biases.items()}}

    def set_bias(path, leaf):
        names = [getattr(k, "key", None) for k in path]
        is_out = names[-1] == "bias" and (
            (cfg.kind == "adaptive" and names[-2] in ("style1", "style2"))
            or (cfg.kind == "crg" and names[-2] == "head")
        )
        return jnp.broadcast_to(mean, leaf.shape).astype(leaf.dtype) if is_out else leaf

    return jax.tree_util.tree_map_with_path(set_bias, params)


def _head_biases(cfg: EncoderConfig, mean: jax.Array) -> dict[str, jax.Array]:
    """PGGAN / BigGAN: {output head (a top-level module): its bias} for a mean latent."""
    if cfg.generator == "pggan":
        return {"z": mean}
    # BigGAN: the class part is probabilities, its head gives logits (softmax(log p) = p)
    return {"z": mean[: cfg.z_dim], "logits": jnp.log(jnp.maximum(mean[cfg.z_dim :], 1e-6))}


def _rngs(train: bool, key: Optional[jax.Array]):
    if not train:
        return None
    if key is None:
        raise ValueError("encode(train=True) needs a PRNG key (noise / dropout)")
    return {"noise": key, "dropout": key}


def encode_with_features(
    cfg: EncoderConfig, params, images: jax.Array, train: bool = False, key=None
) -> tuple[jax.Array, Optional[jax.Array]]:
    """(latents, z_c) where z_c is the adaptive encoders' 4x4 feature (None for crg)."""
    out = build(cfg).apply({"params": params}, images, train, rngs=_rngs(train, key))
    return out if cfg.kind == "adaptive" else (out, None)


def encode(cfg: EncoderConfig, params, images: jax.Array, train: bool = False, key=None):
    """images [N, R, R, C] in [-1, 1] -> latents [N, *cfg.latent_shape]."""
    return encode_with_features(cfg, params, images, train, key)[0]


def to_ws(cfg: EncoderConfig, latents: jax.Array, mapping: Optional[Callable] = None) -> jax.Array:
    """A StyleGAN2 encoder's prediction as G's ws [N, num_ws, w_dim]: W+ as is, w broadcast, z
    through `mapping(z) -> ws` (e.g. `lambda z: gan.mapping_fn(gan.G, z)`). PGGAN and BigGAN
    have no ws: their encoders' predictions are their latents (`inversion.arch`)."""
    if cfg.generator != "stylegan2":
        raise ValueError(
            f"a {cfg.generator} encoder predicts {cfg.generator}'s own latent "
            f"{list(cfg.latent_shape)}, not StyleGAN2 ws: render it with "
            "inversion.arch.arch_for(gan_config).render"
        )
    if cfg.target == "wplus":
        return latents
    if cfg.target == "w":
        return jnp.broadcast_to(latents[:, None, :], (latents.shape[0], cfg.num_ws, cfg.w_dim))
    if mapping is None:
        raise ValueError("a z encoder needs G's mapping to give ws: to_ws(cfg, z, mapping=...)")
    return mapping(latents)


# ----------------------------------------------------------------------------- DIR I/O


def write_dir(
    out: str,
    cfg: EncoderConfig,
    params,
    generator: Optional[Mapping[str, Any]] = None,
    source: Optional[Mapping[str, Any]] = None,
    replace: bool = False,
) -> str:
    """Write DIR/config.json + DIR/params atomically (all or nothing). Returns DIR."""
    doc = {
        "format_version": FORMAT_VERSION,
        "architecture": "encoder",
        "encoder": cfg.to_dict(),
        "generator": dict(generator or {}),
        "source": dict(source or {}),
    }
    with atomic.atomic_dir(out, replace=replace) as tmp:
        atomic.write_json(os.path.join(tmp, CONFIG_NAME), doc, indent=2)
        checkpointing.save_pytree(os.path.join(tmp, PARAMS_NAME), jax.device_get(params))
    return os.path.abspath(out)


def read_dir(path: str) -> tuple[EncoderConfig, Any, dict]:
    """(EncoderConfig, params, config.json document) of an encoder DIR; one-line UserErrors."""
    # Lazy: pretrained (the one loader of DIRs, with its error types) will import this package.
    from ganinv_jax import pretrained

    path = os.path.abspath(os.fspath(path))
    fname = os.path.join(path, CONFIG_NAME)
    if not os.path.isdir(path):
        raise pretrained.MissingDirError(f"{path}: no such encoder directory")
    if not os.path.isfile(fname):
        raise pretrained.MissingDirError(f"{path}: not an encoder directory (no {CONFIG_NAME})")
    try:
        with open(fname) as f:
            doc = json.load(f)
        if doc.get("architecture") != "encoder":
            raise ValueError(f"architecture is {doc.get('architecture')!r}, not 'encoder'")
        cfg = EncoderConfig.from_dict(doc["encoder"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise pretrained.BadDirError(
            f"{fname}: corrupt encoder config ({type(e).__name__}: {e})"
        ) from None
    params_dir = os.path.join(path, PARAMS_NAME)
    if not os.path.isdir(params_dir):
        raise pretrained.MissingDirError(f"{path}: no {PARAMS_NAME}/ checkpoint directory")
    abstract = jax.eval_shape(lambda k: init_params(cfg, k), jax.random.key(0))
    try:
        params = checkpointing.restore_pytree(params_dir, target=abstract)
    except Exception as e:  # orbax raises many types; the user needs the path and the cause
        msg = str(e).splitlines()[0] if str(e) else ""
        raise pretrained.BadDirError(
            f"{params_dir}: cannot restore encoder parameters ({type(e).__name__}: {msg[:300]})"
        ) from None
    pretrained._check_like(params, abstract, params_dir)
    return cfg, params, doc


class EncoderMismatchError(UserError, ValueError):
    """An encoder made for a generator of another shape."""


def _latents(family: str, z_dim: int, num_ws=0, w_dim=0, num_classes=0) -> tuple:
    """((name, shape), ...) of a generator's latents; StyleGAN2's W+ and z (a z encoder maps
    through G), PGGAN's z, BigGAN's z and class vector."""
    if family == "stylegan2":
        return (("W+", (num_ws, w_dim)), ("z", (z_dim,)))
    if family == "pggan":
        return (("z", (z_dim,)),)
    return (("z", (z_dim,)), ("class", (num_classes,)))


def generator_shape(gan_config: Any) -> tuple[str, tuple, tuple]:
    """(family, image shape (R, R, C), `_latents`) of a generator: what an encoder made for it
    must match."""
    family, g = generator_family(gan_config), gan_config
    if family == "stylegan2":
        latents = _latents(family, g.z_dim, g.num_ws, g.w_dim)
    else:
        latents = _latents(family, g.z_dim, num_classes=g.num_classes if family == "biggan" else 0)
    return family, (g.resolution, g.resolution, image_channels(g)), latents


def encoder_generator_shape(cfg: EncoderConfig) -> tuple[str, tuple, tuple]:
    """`generator_shape` of the generator `cfg` was made for."""
    latents = _latents(cfg.generator, cfg.z_dim, cfg.num_ws, cfg.w_dim, cfg.num_classes)
    return cfg.generator, (cfg.resolution, cfg.resolution, cfg.img_channels), latents


def _shape_text(family: str, image: tuple, latents: tuple) -> str:
    dims = ", ".join(f"{name} {list(shape)}" for name, shape in latents)
    return f"({family}, image {'x'.join(map(str, image))}, {dims})"


def check_fits(cfg: EncoderConfig, gan_config, where: str) -> None:
    """One-line EncoderMismatchError unless the encoder was made for a G of `gan_config`'s
    family, image shape and latent shapes (`generator_shape`)."""
    got, want = encoder_generator_shape(cfg), generator_shape(gan_config)
    if got != want:
        raise EncoderMismatchError(
            f"{where}: encoder is for a G with {_shape_text(*got)}, "
            f"the generator has {_shape_text(*want)}"
        )


class TrainedEncoder:
    """A trained encoder read from its DIR: `encode(images) -> latents` at one forward pass.

    `encode` returns the encoder's own latent ([N, *config.latent_shape]: W+, z or w for
    StyleGAN2; PGGAN's z; BigGAN's concat(z, class)); `encode_ws(images, gan)` gives a
    StyleGAN2's ws whatever the target (z through `gan`'s mapping)."""

    def __init__(self, cfg: EncoderConfig, params: Any, doc: Optional[Mapping] = None, path=""):
        self.config, self.params, self.doc, self.path = cfg, params, dict(doc or {}), path
        self._encode = jax.jit(functools.partial(encode, cfg))

    @classmethod
    def load(cls, path: str) -> "TrainedEncoder":
        cfg, params, doc = read_dir(path)
        return cls(cfg, params, doc, os.path.abspath(path))

    def check_generator(self, gan_config, where: str = "") -> None:
        check_fits(self.config, gan_config, where or self.path)

    def encode(self, images: jax.Array) -> jax.Array:
        """images [N, R, R, C] in [-1, 1] -> latents [N, *config.latent_shape]."""
        return self._encode(self.params, jnp.asarray(images, jnp.float32))

    def encode_ws(self, images: jax.Array, gan) -> jax.Array:
        """images -> G's ws [N, num_ws, w_dim] (a z encoder goes through `gan`'s mapping)."""
        return to_ws(self.config, self.encode(images), mapping=lambda z: gan.mapping(z))

    def __repr__(self):
        c = self.config
        return (
            f"TrainedEncoder({c.kind}, generator={c.generator}, target={c.target}, "
            f"res={c.resolution}, path={self.path!r})"
        )
