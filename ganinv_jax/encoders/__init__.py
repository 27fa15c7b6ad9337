"""Trained GAN encoders: paper 000's adaptive StyleGAN2 encoder and paper 003's CRG encoder.

    cfg = encoders.config_for_generator("adaptive", gan.config)     # widths from G (Table 9)
    params = encoders.init_params(cfg, key, latent_mean=w_avg)
    ws = encoders.encode(cfg, params, images)                       # adaptive: [N, num_ws, w_dim]
    ws = encoders.to_ws(cfg, encoders.encode(cfg, p_crg, images),   # crg: [N, z_dim | w_dim]
                        mapping=lambda z: gan.mapping_fn(gan.G, z))
    encoders.write_dir(DIR, cfg, params, meta)  /  cfg, params, doc = encoders.read_dir(DIR)

An `EncoderConfig` is the whole architecture (a frozen dataclass: a jit static argument, and
config.json's `encoder` entry), so a saved encoder is rebuilt from its DIR alone:
    DIR/config.json   {format_version, architecture: 'encoder', encoder: EncoderConfig.to_dict(),
                       generator: {path, config: StyleGAN2Config.to_dict()}, source: {...}}
    DIR/params/       orbax checkpoint of the encoder's params tree
Training: `ganinv_jax.training.encoder`. Images are NHWC in [-1, 1] with 1 or 3 channels.
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
from ganinv_jax.errors import UserError

KINDS = ("adaptive", "crg")
TARGETS = {"adaptive": ("wplus",), "crg": ("z", "w")}
CONFIG_NAME = "config.json"
PARAMS_NAME = "params"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """The architecture of a trained encoder and of the latent it predicts.

    kind 'adaptive': `channels` = each block's output width, full resolution first
      (len = log2(resolution) - 1); `in_channels` = the first block's input width.
    kind 'crg': `channels` = the five VGG19 stage widths; `dropout` = spatial dropout rate.
    target: 'wplus' (adaptive: [N, num_ws, w_dim]) | 'z' ([N, z_dim]) | 'w' ([N, w_dim]) (crg).
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

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"encoder kind {self.kind!r}: expected one of {KINDS}")
        if self.target not in TARGETS[self.kind]:
            raise ValueError(
                f"{self.kind} encoder target {self.target!r}: expected one of {TARGETS[self.kind]}"
            )
        if self.img_channels not in (1, 3):
            raise ValueError(f"img_channels must be 1 or 3, got {self.img_channels}")
        log2 = math.log2(self.resolution) if self.resolution > 0 else 0.5
        if self.resolution < 4 or log2 != int(log2):
            raise ValueError(f"resolution must be a power of two >= 4, got {self.resolution}")
        if self.kind == "adaptive":
            if len(self.channels) != int(log2) - 1:
                raise ValueError(
                    f"adaptive encoder at {self.resolution}px needs {int(log2) - 1} block "
                    f"widths (one per G block), got {len(self.channels)}"
                )
            if self.num_ws != 2 * len(self.channels):
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
        return (self.z_dim,) if self.target == "z" else (self.w_dim,)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

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


def config_for_generator(
    kind: str,
    gan_config: Any,
    width: float = 1.0,
    max_channels: int = 512,
    target: str = "",
    dropout: float = 0.5,
) -> EncoderConfig:
    """The encoder for a StyleGAN2 generator (`StyleGAN2Config`: resolution, channels, num_ws,
    z_dim, w_dim, img_channels).

    adaptive: block widths = G's channels read from full resolution down to 4x4, times `width`,
    capped at `max_channels` -- paper Table 9 exactly for NVlabs/rosinality 256/512/1024 G's.
    crg: VGG19 widths (64, 128, 256, 512, 512) times `width`; target 'z' (default) or 'w'.
    """
    scale = lambda c: max(1, min(max_channels, int(round(width * c))))
    common = dict(
        resolution=gan_config.resolution,
        img_channels=gan_config.img_channels,
        z_dim=gan_config.z_dim,
        w_dim=gan_config.w_dim,
        num_ws=gan_config.num_ws,
    )
    if kind == "adaptive":
        channels = tuple(scale(gan_config.ch(r)) for r in reversed(gan_config.resolutions))
        return EncoderConfig(
            kind="adaptive",
            channels=channels,
            in_channels=max(1, channels[0] // 2),
            target=target or "wplus",
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
    if cfg.kind == "adaptive":
        return AdaptiveEncoder(cfg.channels, cfg.w_dim, cfg.in_channels)
    out_dim = cfg.z_dim if cfg.target == "z" else cfg.w_dim
    return CRGEncoder(out_dim, cfg.channels, VGG19_STAGES, cfg.dropout)


def init_params(cfg: EncoderConfig, key: jax.Array, latent_mean: Optional[jax.Array] = None):
    """Random params; with `latent_mean` ([w_dim] or [z_dim]) every output layer's bias starts
    there (adaptive: each style FC; crg: the head), so E(x) starts near the mean latent.

    Only the initialization differs from the papers' (zero biases): the FCs have biases anyway,
    so the function class is the same, and training starts from G's mean-w reconstruction
    instead of an arbitrary point of W+ (e4e/pSp add w_avg to their output for the same reason).
    """
    img = jnp.zeros((1, cfg.resolution, cfg.resolution, cfg.img_channels), jnp.float32)
    params = build(cfg).init({"params": key}, img)["params"]
    if latent_mean is None:
        return params
    mean = jnp.asarray(latent_mean, jnp.float32).reshape(-1)

    def set_bias(path, leaf):
        names = [getattr(k, "key", None) for k in path]
        is_out = names[-1] == "bias" and (
            (cfg.kind == "adaptive" and names[-2] in ("style1", "style2"))
            or (cfg.kind == "crg" and names[-2] == "head")
        )
        return jnp.broadcast_to(mean, leaf.shape).astype(leaf.dtype) if is_out else leaf

    return jax.tree_util.tree_map_with_path(set_bias, params)


def _rngs(train: bool, key: Optional[jax.Array]):
    if not train:
        return None
    if key is None:
        raise ValueError("encode(train=True) needs a PRNG key (noise / dropout)")
    return {"noise": key, "dropout": key}


def encode_with_features(
    cfg: EncoderConfig, params, images: jax.Array, train: bool = False, key=None
) -> tuple[jax.Array, Optional[jax.Array]]:
    """(latents, z_c) where z_c is the adaptive encoder's 4x4 feature (None for crg)."""
    out = build(cfg).apply({"params": params}, images, train, rngs=_rngs(train, key))
    return out if cfg.kind == "adaptive" else (out, None)


def encode(cfg: EncoderConfig, params, images: jax.Array, train: bool = False, key=None):
    """images [N, R, R, C] in [-1, 1] -> latents [N, *cfg.latent_shape]."""
    return encode_with_features(cfg, params, images, train, key)[0]


def to_ws(cfg: EncoderConfig, latents: jax.Array, mapping: Optional[Callable] = None) -> jax.Array:
    """An encoder's prediction as G's ws [N, num_ws, w_dim]: W+ as is, w broadcast, z through
    `mapping(z) -> ws` (e.g. `lambda z: gan.mapping_fn(gan.G, z)`)."""
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


def check_fits(cfg: EncoderConfig, gan_config, where: str) -> None:
    """One-line EncoderMismatchError unless the encoder was made for a G of `gan_config`'s
    shape (resolution, channels, num_ws, w_dim, z_dim)."""
    got = (cfg.resolution, cfg.img_channels, cfg.num_ws, cfg.w_dim, cfg.z_dim)
    g = gan_config
    want = (g.resolution, g.img_channels, g.num_ws, g.w_dim, g.z_dim)
    if got != want:
        raise EncoderMismatchError(
            f"{where}: encoder is for a G with (resolution, channels, num_ws, w_dim, z_dim) = "
            f"{got}, the generator has {want}"
        )


class TrainedEncoder:
    """A trained encoder read from its DIR: `encode(images) -> latents` at one forward pass.

    `encode` returns the encoder's own latent ([N, num_ws, w_dim] W+, or [N, z_dim | w_dim]);
    `encode_ws(images, gan)` gives G's ws whatever the target (z through `gan`'s mapping)."""

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
            f"TrainedEncoder({c.kind}, target={c.target}, res={c.resolution}, path={self.path!r})"
        )
