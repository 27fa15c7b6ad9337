"""Declarative name tables: source state_dict key -> target variable path + layout transform.

A table is a function of the (inferred) `StyleGAN2Config` that returns
  * `rules`: `Rule(src, dst, transform)`; `dst` is a '/'-path in the Flax variables tree
    (`params/...` or `buffers/...`);
  * `fir`: `{src: gain}` for FIR kernel buffers, which are not parameters: they are checked
    against the taps the config implies and then count as used.
`convert.apply_table` enforces the coverage rules (every source key used exactly once,
every target leaf filled exactly once, shapes equal to `jax.eval_shape(init)`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from ganinv_jax.models.stylegan2 import StyleGAN2Config


def _rank(n: int, fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    def checked(a: np.ndarray) -> np.ndarray:
        if a.ndim != n:
            raise ValueError(f"expected a rank-{n} tensor, got shape {list(a.shape)}")
        return fn(a)

    return checked


def _leading_one(n: int, fn):
    def checked(a):
        if a.ndim != n or a.shape[0] != 1:
            raise ValueError(f"expected shape [1, ...] of rank {n}, got {list(a.shape)}")
        return fn(a[0])

    return checked


def _scalar(a: np.ndarray) -> np.ndarray:
    if a.size != 1 or a.ndim > 1:
        raise ValueError(f"expected a scalar or [1], got shape {list(a.shape)}")
    return a.reshape(())


# torch layouts -> our JAX layouts (see ganinv_jax/models/layers.py for the conventions).
TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "id": lambda a: a,
    "dense": _rank(2, lambda a: a.T),  # [out,in] -> [in,out]
    "conv": _rank(4, lambda a: a.transpose(2, 3, 1, 0)),  # OIHW -> HWIO
    "modconv": _leading_one(5, lambda a: a.transpose(2, 3, 1, 0)),  # [1,O,I,k,k] -> HWIO
    "const_chw": _rank(3, lambda a: a.transpose(1, 2, 0)),  # [C,4,4] -> [4,4,C]
    "const_1chw": _leading_one(4, lambda a: a.transpose(1, 2, 0)),  # [1,C,4,4] -> [4,4,C]
    "scalar": _scalar,  # [1] or [] -> []
    "bias_1c11": _leading_one(4, lambda a: a.reshape(-1)),  # [1,C,1,1] -> [C]
    "noise_11rr": _leading_one(4, lambda a: _leading_one(3, lambda b: b)(a)),  # -> [r,r]
}


@dataclasses.dataclass(frozen=True)
class Rule:
    src: str
    dst: str
    transform: str = "id"


@dataclasses.dataclass
class Table:
    rules: list[Rule]
    fir: dict[str, float]  # FIR kernel buffer key -> expected gain


def _dense(src: str, dst: str, bias: bool = True) -> list[Rule]:
    out = [Rule(f"{src}.weight", f"{dst}/weight", "dense")]
    return out + [Rule(f"{src}.bias", f"{dst}/bias")] if bias else out


def _conv(src_w: str, dst: str, src_b: str | None = None) -> list[Rule]:
    out = [Rule(src_w, f"{dst}/weight", "conv")]
    return out + [Rule(src_b, f"{dst}/bias")] if src_b else out


def _noise_dst(name: str) -> str:
    """'b8.conv0' -> 'buffers/synthesis/b8/conv0/noise_const'."""
    return "buffers/synthesis/" + name.replace(".", "/") + "/noise_const"


# ----------------------------------------------------------------------------- rosinality


def rosinality_generator(cfg: StyleGAN2Config) -> Table:
    from ganinv_jax.models.stylegan2 import noise_layer_names

    rules = []
    for i in range(cfg.mapping_layers):  # style.0 is PixelNorm (no params)
        rules += _dense(f"style.{i + 1}", f"params/mapping/fc{i}")
    rules.append(Rule("input.input", "params/synthesis/b4/const", "const_1chw"))

    def styled_conv(src: str, dst: str) -> list[Rule]:
        return [
            Rule(f"{src}.conv.weight", f"{dst}/weight", "modconv"),
            *_dense(f"{src}.conv.modulation", f"{dst}/affine"),
            Rule(f"{src}.noise.weight", f"{dst}/noise_strength", "scalar"),
            Rule(f"{src}.activate.bias", f"{dst}/bias"),
        ]

    def to_rgb(src: str, dst: str) -> list[Rule]:
        return [
            Rule(f"{src}.conv.weight", f"{dst}/weight", "modconv"),
            *_dense(f"{src}.conv.modulation", f"{dst}/affine"),
            Rule(f"{src}.bias", f"{dst}/bias", "bias_1c11"),
        ]

    syn = "params/synthesis"
    rules += styled_conv("conv1", f"{syn}/b4/conv1") + to_rgb("to_rgb1", f"{syn}/b4/torgb")
    fir = {}
    for k, r in enumerate(cfg.resolutions[1:]):
        rules += styled_conv(f"convs.{2 * k}", f"{syn}/b{r}/conv0")
        rules += styled_conv(f"convs.{2 * k + 1}", f"{syn}/b{r}/conv1")
        rules += to_rgb(f"to_rgbs.{k}", f"{syn}/b{r}/torgb")
        # rosinality stores the up-sampling kernels pre-multiplied by factor**2 = 4.
        fir[f"convs.{2 * k}.conv.blur.kernel"] = 4.0
        fir[f"to_rgbs.{k}.upsample.kernel"] = 4.0
    for i, name in enumerate(noise_layer_names(cfg)):
        rules.append(Rule(f"noises.noise_{i}", _noise_dst(name), "noise_11rr"))
    return Table(rules, fir)


def rosinality_discriminator(cfg: StyleGAN2Config) -> Table:
    top = cfg.resolution
    rules = _conv("convs.0.0.weight", f"params/b{top}/fromrgb", "convs.0.1.bias")
    fir = {}
    for i, r in enumerate(reversed(cfg.resolutions[1:]), start=1):
        b = f"params/b{r}"
        rules += _conv(f"convs.{i}.conv1.0.weight", f"{b}/conv0", f"convs.{i}.conv1.1.bias")
        rules += _conv(f"convs.{i}.conv2.1.weight", f"{b}/conv1", f"convs.{i}.conv2.2.bias")
        rules += _conv(f"convs.{i}.skip.1.weight", f"{b}/skip")
        fir[f"convs.{i}.conv2.0.kernel"] = 1.0
        fir[f"convs.{i}.skip.0.kernel"] = 1.0
    rules += _conv("final_conv.0.weight", "params/b4/conv", "final_conv.1.bias")
    rules += _dense("final_linear.0", "params/b4/fc") + _dense("final_linear.1", "params/b4/out")
    return Table(rules, fir)


# ----------------------------------------------------------------------------- NVlabs


def _nv_mapping(prefix: str, dst: str, num_layers: int, c_dim: int) -> list[Rule]:
    rules = _dense(f"{prefix}embed", f"{dst}/embed") if c_dim else []
    for i in range(num_layers):
        rules += _dense(f"{prefix}fc{i}", f"{dst}/fc{i}")
    return rules


def nvlabs_generator(cfg: StyleGAN2Config) -> Table:
    rules = _nv_mapping("mapping.", "params/mapping", cfg.mapping_layers, cfg.c_dim)
    rules.append(Rule("mapping.w_avg", "buffers/mapping/w_avg"))
    fir = {}
    for r in cfg.resolutions:
        src, dst = f"synthesis.b{r}", f"params/synthesis/b{r}"
        fir[f"{src}.resample_filter"] = 1.0
        convs = ["conv1"] if r == 4 else ["conv0", "conv1"]
        if r == 4:
            rules.append(Rule(f"{src}.const", f"{dst}/const", "const_chw"))
        for c in convs:
            rules += [
                Rule(f"{src}.{c}.weight", f"{dst}/{c}/weight", "conv"),
                Rule(f"{src}.{c}.bias", f"{dst}/{c}/bias"),
                Rule(f"{src}.{c}.noise_strength", f"{dst}/{c}/noise_strength", "scalar"),
                Rule(f"{src}.{c}.noise_const", _noise_dst(f"b{r}.{c}")),
                *_dense(f"{src}.{c}.affine", f"{dst}/{c}/affine"),
            ]
            fir[f"{src}.{c}.resample_filter"] = 1.0
        if r == cfg.resolution or cfg.architecture == "skip":
            rules += [
                *_conv(f"{src}.torgb.weight", f"{dst}/torgb", f"{src}.torgb.bias"),
                *_dense(f"{src}.torgb.affine", f"{dst}/torgb/affine"),
            ]
        if r > 4 and cfg.architecture == "resnet":
            rules += _conv(f"{src}.skip.weight", f"{dst}/skip")
            fir[f"{src}.skip.resample_filter"] = 1.0
    return Table(rules, fir)


def nvlabs_discriminator(cfg: StyleGAN2Config) -> Table:
    rules, fir = [], {}

    def conv(src: str, dst: str, bias: bool = True):
        rules.extend(_conv(f"{src}.weight", dst, f"{src}.bias" if bias else None))
        fir[f"{src}.resample_filter"] = 1.0

    for r in reversed(cfg.resolutions[1:]):
        fir[f"b{r}.resample_filter"] = 1.0
        if r == cfg.resolution or cfg.d_architecture == "skip":
            conv(f"b{r}.fromrgb", f"params/b{r}/fromrgb")
        conv(f"b{r}.conv0", f"params/b{r}/conv0")
        conv(f"b{r}.conv1", f"params/b{r}/conv1")
        if cfg.d_architecture == "resnet":
            conv(f"b{r}.skip", f"params/b{r}/skip", bias=False)
    if cfg.resolution == 4 or cfg.d_architecture == "skip":
        conv("b4.fromrgb", "params/b4/fromrgb")
    conv("b4.conv", "params/b4/conv")
    rules += _dense("b4.fc", "params/b4/fc") + _dense("b4.out", "params/b4/out")
    if cfg.c_dim:
        rules += _nv_mapping("mapping.", "params/mapping", cfg.d_mapping_layers, cfg.c_dim)
    return Table(rules, fir)
