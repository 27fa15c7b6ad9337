"""Pluggable feature-distance ("identity") losses.

GMM's ID and parsing terms, and identity losses in face inversion generally, compare images in the
feature space of a pretrained recognition or parsing network. No such network ships offline, so
this module fixes the INTERFACE and lets converted networks be registered later:

  net = FeatureNet(name="arcface", apply=arcface_apply, params=converted_params,
                   input_size=112, crop=(35, 32, 223, 220))
  d = feature_distance(net, x, y, kind="cosine")      # [N]

`apply(params, images) -> features` takes NHWC images in [-1, 1] at `input_size` and returns
either one array [N, ...] or a list/tuple/dict of arrays (multi-layer features; the distance is
the mean over layers). `vgg16_feature_net()` is a working example built from the real ImageNet
VGG16 weights that LPIPS ships.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp

from ganinv_jax.losses import common
from ganinv_jax.losses import perceptual as lpips_lib

Kind = Literal["cosine", "l2", "l1"]
_REGISTRY: dict[str, Callable[[], "FeatureNet"]] = {}


@dataclasses.dataclass(frozen=True)
class FeatureNet:
    """A frozen feature extractor: a pure apply function plus its (broadcast) params."""

    name: str
    apply: Callable[[Any, jax.Array], Any]
    params: Any
    input_size: int | None = None  # resize (bilinear) to this square size
    crop: tuple[int, int, int, int] | None = None  # (top, left, bottom, right) before resize

    def preprocess(self, x: jax.Array) -> jax.Array:
        if self.crop is not None:
            t, l, b, r = self.crop
            x = x[:, t:b, l:r, :]
        if self.input_size is not None and x.shape[1:3] != (self.input_size,) * 2:
            x = jax.image.resize(
                x, (x.shape[0], self.input_size, self.input_size, x.shape[-1]), "bilinear"
            )
        return x

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        out = self.apply(self.params, self.preprocess(x))
        if isinstance(out, dict):
            return [out[k] for k in sorted(out)]
        return list(out) if isinstance(out, (list, tuple)) else [out]


def _distance(fa: jax.Array, fb: jax.Array, kind: Kind) -> jax.Array:
    fa, fb = fa.astype(jnp.float32), fb.astype(jnp.float32)
    if kind == "cosine":
        return 1.0 - common.cosine_similarity(fa, fb)
    if kind == "l2":
        return common.mse(fa, fb)
    if kind == "l1":
        return jnp.mean(jnp.abs(jnp.reshape(fa - fb, (fa.shape[0], -1))), axis=1)
    raise ValueError(f"feature_distance: unknown kind {kind!r}; expected 'cosine', 'l2' or 'l1'")


def feature_distance(
    net: FeatureNet, x: jax.Array, y: jax.Array, kind: Kind = "cosine"
) -> jax.Array:
    """Mean over feature layers of the per-image distance ([N]); e.g. ID loss = 1 - cos."""
    common.check_image_pair(x, y, f"feature_distance[{net.name}]")
    n = x.shape[0]
    feats = net(jnp.concatenate([x, y], axis=0))
    return sum(_distance(f[:n], f[n:], kind) for f in feats) / len(feats)


def register_feature_net(name: str, factory: Callable[[], FeatureNet]) -> None:
    """Makes `get_feature_net(name)` build the net (factories load/convert weights lazily)."""
    _REGISTRY[name] = factory


def get_feature_net(name: str) -> FeatureNet:
    if name not in _REGISTRY:
        raise ValueError(f"feature net {name!r} is not registered; known: {sorted(_REGISTRY)}")
    return _REGISTRY[name]()


def vgg16_feature_net(layers: tuple[str, ...] = ("conv4_3", "conv5_3")) -> FeatureNet:
    """Example FeatureNet: ImageNet VGG16 activations (the LPIPS backbone weights)."""
    for layer in layers:
        if layer not in lpips_lib.VGG16_CONVS:
            raise ValueError(f"vgg16_feature_net: unknown layer {layer!r}")

    def apply(params, x):
        acts = lpips_lib.backbone_features(params, x, net="vgg")
        return [acts[layer] for layer in layers]

    return FeatureNet("vgg16", apply, lpips_lib.load_lpips_params("vgg"))


register_feature_net("vgg16", vgg16_feature_net)
