"""A PyTorch twin of our StyleGAN2 synthesis network and LPIPS-VGG, built from OUR Flax trees.

Why: to compare the JAX PTI loop against the loop a PyTorch user would write, both sides must
run the *same* function with the *same* numbers. This module re-implements, in plain PyTorch
(our own code, no third-party source), exactly what

  * `ganinv_jax.models.stylegan2.SynthesisNetwork` computes (architectures 'skip', 'orig' and
    'resnet'; NVlabs' non-fused modulated conv: modulate the activations, one conv for the
    batch, demodulate the outputs; `fan_in_scale_modconv`; transposed stride-2 conv + FIR for
    up-sampling; ToRGB and its FIR skip up-sampling; noise; bias + lrelu*sqrt2 + clamp), and
  * `ganinv_jax.losses.perceptual.LPIPS` (net='vgg': v0.1 with lin heads)

compute, with parameters converted from the Flax variable trees (numpy or jax arrays). The
tests in `tests/test_torch_reference.py` check both against our JAX modules (and the
synthesis against the unmodified rosinality forward pass through its fixture).

Layout: every tensor here is **NCHW** (torch's native layout), images float32. `pti_loop`
takes the project's NHWC images (the arrays the JAX benchmarks use) and transposes them once,
outside the timed region.

    g = TorchSynthesis(g_cfg, variables)          # nn.Module; params are nn.Parameters
    img = g(torch.from_numpy(ws))                 # ws [N, num_ws, w_dim] -> [N, C, H, W]
    tree = g.to_flax_params()                     # numpy tree, layout of params['synthesis']
    lp = TorchLPIPS(load_lpips_params('vgg'))     # frozen
    d = lp(x, y)                                  # [N]; x, y NCHW in [-1, 1]
    f = lp.features(y); d = lp.distance_to_features(x, f)   # target features cached
    pti_loop(g_cfg, variables, lpips_params, images_nhwc, ws, steps=50)

Parameter layouts (Flax -> torch): dense `[in, out]` -> `[out, in]`; conv HWIO -> OIHW;
const `[4, 4, C]` -> `[C, 4, 4]`; biases and the scalar noise strengths unchanged. Weights stay
raw (equalized-LR gains applied at run time), exactly as in the Flax tree, so tuning them with
Adam is the same optimization problem on both sides.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ganinv_jax.losses.perceptual import _SCALE, _SHIFT, VGG16_CONVS, VGG16_TAPS
from ganinv_jax.models import layers as L

SQRT2 = math.sqrt(2.0)
DEMOD_EPS = 1e-8


def _np(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _param(x: np.ndarray, requires_grad: bool = True) -> nn.Parameter:
    # A C-contiguous copy: the Parameter must own its memory (jax arrays are read-only and Adam
    # writes in place), and a transposed (strided) weight would send torch's conv down its slow
    # non-contiguous path on every call.
    arr = np.array(x, dtype=np.float32, order="C", copy=True)
    return nn.Parameter(torch.from_numpy(arr), requires_grad=requires_grad)


def _hwio_to_oihw(w) -> np.ndarray:
    return _np(w).transpose(3, 2, 0, 1)


def _oihw_to_hwio(w: torch.Tensor) -> np.ndarray:
    return w.detach().cpu().numpy().transpose(2, 3, 1, 0)


def _t2np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


# ----------------------------------------------------------------------------- functional ops


def bias_act(
    x: torch.Tensor,
    bias: Optional[torch.Tensor],
    *,
    act: str = "lrelu",
    gain: float = 1.0,
    clamp: Optional[float] = None,
    alpha: float = 0.2,
) -> torch.Tensor:
    """bias -> activation -> x gain -> clamp (NCHW; `layers.bias_act`)."""
    if bias is not None:
        x = x + bias.view(1, -1, 1, 1)
    if act == "lrelu":
        x = F.leaky_relu(x, alpha)
    elif act != "linear":
        raise ValueError(f"unknown activation {act!r}")
    if gain != 1.0:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def fir_kernel(taps: Sequence[float], gain: float = 1.0) -> torch.Tensor:
    """The 2-D FIR kernel outer(t, t) * gain, t normalised as `layers.fir_taps` does."""
    t = torch.from_numpy(L.fir_taps(taps))
    return torch.outer(t, t) * gain


def upfirdn2d(
    x: torch.Tensor, kernel: torch.Tensor, *, up: int = 1, pad: tuple[int, int] = (0, 0)
) -> torch.Tensor:
    """Zero-insertion upsample -> pad -> 2-D FIR (NCHW; `layers.upfirdn2d` with down=1).

    `kernel` already carries the gain. Our JAX FIR is a correlation with the (unflipped) taps,
    which is what torch's conv2d computes, so the kernel is used as is (and it is symmetric).
    The FIR runs as a depthwise conv (groups=C), as NVlabs' reference path does.
    """
    n, c, h, w = x.shape
    if up > 1:
        # [N, C, H, 1, W, 1] -> pad the two singleton axes to `up` -> [N, C, H*up, W*up].
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(n, c, h * up, w * up)
    p0, p1 = pad
    if p0 < 0 or p1 < 0:
        raise ValueError("negative (cropping) pads are not needed by the synthesis network")
    x = F.pad(x, (p0, p1, p0, p1))
    f = kernel.shape[-1]
    weight = kernel.to(x.dtype).view(1, 1, f, f).expand(c, 1, f, f)
    return F.conv2d(x, weight, groups=c)


def upsample2d(x: torch.Tensor, kernel4: torch.Tensor) -> torch.Tensor:
    """2x FIR upsampling with gain 4 (`layers.upsample2d`): pad (2, 1) for 4 taps."""
    p = kernel4.shape[-1] - 2
    return upfirdn2d(x, kernel4, up=2, pad=((p + 1) // 2 + 1, p // 2))


def conv2d_up2(x: torch.Tensor, weight: torch.Tensor, kernel4: torch.Tensor) -> torch.Tensor:
    """`layers.conv2d_resample(up=2)` for an OIHW weight; kernel4 = FIR kernel with gain 4.

    k > 1: our JAX `conv_transpose2x` is a correlation of the 2x lhs-dilated input, padded by
    k - 1, with the spatially flipped HWIO kernel. Working through the indices, that is
    exactly torch's `conv_transpose2d(x, W_t, stride=2, padding=0)` with
    `W_t[i, o, kh, kw] = W_hwio[kh, kw, i, o]`, i.e. OIHW with in/out swapped and *no* flip
    (the flip of the correlation form cancels the flip inside a transposed conv). Output
    2H + k - 2; the FIR with pad (1, 1) (for 4 taps, k=3) brings it back to 2H.
    k == 1: FIR upsample, then the 1x1 conv.
    """
    k = weight.shape[-1]
    if k == 1:
        return F.conv2d(upsample2d(x, kernel4), weight)
    x = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
    p = (kernel4.shape[-1] - 2) - (k - 1)
    return upfirdn2d(x, kernel4, pad=((p + 1) // 2 + 1, p // 2 + 1))


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    *,
    demodulate: bool,
    up: int = 1,
    padding: int = 0,
    fan_in_scale: bool = False,
    kernel4: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """NVlabs' non-fused modulated conv (`layers.modulated_conv2d`), OIHW weight, NCHW x.

    Modulate the activations by the per-sample styles, run ONE ordinary conv for the whole
    batch with the shared weight, then scale the outputs by the demodulation coefficients
    d[b, o] = rsqrt(sum_{i,kh,kw} (W[o,i,kh,kw] s[b,i])^2 + 1e-8). No per-sample kernels.
    """
    _, cin, kh, kw = weight.shape
    if fan_in_scale:  # rosinality: W / sqrt(fan_in) before demodulating (matters via the eps)
        weight = weight * (1.0 / math.sqrt(cin * kh * kw))
    x = x * styles[:, :, None, None]
    if up == 1:
        x = F.conv2d(x, weight, padding=padding)
    elif up == 2:
        x = conv2d_up2(x, weight, kernel4)
    else:
        raise ValueError(f"unsupported up={up}")
    if demodulate:
        wsq = weight.square().sum(dim=(2, 3))  # [out, in]
        d = torch.rsqrt(styles.square() @ wsq.t() + DEMOD_EPS)  # [N, out]
        x = x * d[:, :, None, None]
    return x


# ----------------------------------------------------------------------------- synthesis modules


class _Affine(nn.Module):
    """Equalized-LR dense layer, lr multiplier 1 (the style affines): x @ (W/sqrt(in)).T + b."""

    def __init__(self, tree: Mapping[str, Any]):
        super().__init__()
        self.weight = _param(_np(tree["weight"]).T)  # [in, out] -> [out, in]
        self.bias = _param(tree["bias"])

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return F.linear(w, self.weight * (1.0 / math.sqrt(self.weight.shape[1])), self.bias)

    def to_flax(self) -> dict:
        return {"weight": _t2np(self.weight).T.copy(), "bias": _t2np(self.bias)}


class _SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (+ 2x up) -> noise -> bias -> lrelu*sqrt2*gain -> clamp*gain."""

    def __init__(
        self,
        tree: Mapping[str, Any],
        noise_const,
        *,
        up: int,
        conv_clamp: Optional[float],
        fan_in_scale: bool,
        kernel4: torch.Tensor,
    ):
        super().__init__()
        self.affine = _Affine(tree["affine"])
        self.weight = _param(_hwio_to_oihw(tree["weight"]))
        self.noise_strength = _param(np.asarray(tree["noise_strength"], np.float32).reshape(()))
        self.bias = _param(tree["bias"])
        self.register_buffer("noise_const", torch.from_numpy(np.array(_np(noise_const))))
        self.register_buffer("kernel4", kernel4.clone())
        self.up, self.conv_clamp, self.fan_in_scale = up, conv_clamp, fan_in_scale

    def forward(
        self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "const", gain: float = 1.0
    ) -> torch.Tensor:
        styles = self.affine(w)
        x = modulated_conv2d(
            x,
            self.weight,
            styles,
            demodulate=True,
            up=self.up,
            padding=1,
            fan_in_scale=self.fan_in_scale,
            kernel4=self.kernel4,
        )
        r = self.noise_const.shape[-1]
        if noise_mode == "const":
            x = x + (self.noise_const * self.noise_strength)[None, None]
        elif noise_mode == "random":
            x = x + torch.randn(x.shape[0], 1, r, r, dtype=x.dtype) * self.noise_strength
        elif noise_mode != "none":
            raise ValueError(f"noise_mode must be 'const', 'random' or 'none', got {noise_mode!r}")
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, act="lrelu", gain=SQRT2 * gain, clamp=clamp)

    def to_flax(self) -> dict:
        return {
            "affine": self.affine.to_flax(),
            "weight": _oihw_to_hwio(self.weight).copy(),
            "noise_strength": _t2np(self.noise_strength),
            "bias": _t2np(self.bias),
        }


class _ToRGB(nn.Module):
    """Modulated 1x1 conv, no demodulation, styles / sqrt(fan_in); bias; clamp."""

    def __init__(self, tree: Mapping[str, Any], conv_clamp: Optional[float]):
        super().__init__()
        self.affine = _Affine(tree["affine"])
        self.weight = _param(_hwio_to_oihw(tree["weight"]))
        self.bias = _param(tree["bias"])
        self.conv_clamp = conv_clamp

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * (1.0 / math.sqrt(x.shape[1]))
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return bias_act(x, self.bias, act="linear", clamp=self.conv_clamp)

    def to_flax(self) -> dict:
        return {
            "affine": self.affine.to_flax(),
            "weight": _oihw_to_hwio(self.weight).copy(),
            "bias": _t2np(self.bias),
        }


class _Skip(nn.Module):
    """resnet G's skip: FIR-upsample -> 1x1 conv (W/sqrt(in)), no bias, x sqrt(0.5)."""

    def __init__(self, tree: Mapping[str, Any], kernel4: torch.Tensor):
        super().__init__()
        self.weight = _param(_hwio_to_oihw(tree["weight"]))
        self.register_buffer("kernel4", kernel4.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * (1.0 / math.sqrt(self.weight.shape[1]))
        return conv2d_up2(x, w, self.kernel4) * math.sqrt(0.5)

    def to_flax(self) -> dict:
        return {"weight": _oihw_to_hwio(self.weight).copy()}


class _SynthesisBlock(nn.Module):
    """One resolution (`stylegan2.SynthesisBlock`): (const | up-conv0) -> conv1 -> (ToRGB)."""

    def __init__(
        self,
        cfg,
        resolution: int,
        tree: Mapping[str, Any],
        noise_tree: Mapping[str, Any],
        kernel4: torch.Tensor,
    ):
        super().__init__()
        self.resolution, self.architecture = resolution, cfg.architecture
        self.is_last = resolution == cfg.resolution
        kw = dict(conv_clamp=cfg.conv_clamp, fan_in_scale=cfg.fan_in_scale_modconv, kernel4=kernel4)
        if resolution == 4:
            self.const = _param(_np(tree["const"]).transpose(2, 0, 1))  # [4,4,C] -> [C,4,4]
        else:
            if cfg.architecture == "resnet":
                self.skip = _Skip(tree["skip"], kernel4)
            self.conv0 = _SynthesisLayer(
                tree["conv0"], noise_tree["conv0"]["noise_const"], up=2, **kw
            )
        self.conv1 = _SynthesisLayer(tree["conv1"], noise_tree["conv1"]["noise_const"], up=1, **kw)
        self.has_torgb = self.is_last or cfg.architecture == "skip"
        if self.has_torgb:
            self.torgb = _ToRGB(tree["torgb"], cfg.conv_clamp)
        self.register_buffer("kernel4", kernel4.clone())

    def forward(self, x, img, ws, noise_mode: str):
        if self.resolution == 4:
            x = self.const[None].expand(ws.shape[0], -1, -1, -1)
            x = self.conv1(x, ws[:, 0], noise_mode)
            w_rgb = ws[:, 1] if self.has_torgb else None
        else:
            if self.architecture == "resnet":
                y = self.skip(x)
            x = self.conv0(x, ws[:, 0], noise_mode)
            gain = math.sqrt(0.5) if self.architecture == "resnet" else 1.0
            x = self.conv1(x, ws[:, 1], noise_mode, gain=gain)
            if self.architecture == "resnet":
                x = y + x
            w_rgb = ws[:, 2] if self.has_torgb else None
        if img is not None:
            img = upsample2d(img, self.kernel4)
        if w_rgb is not None:
            y = self.torgb(x, w_rgb)
            img = y if img is None else img + y
        return x, img

    def to_flax(self) -> dict:
        out = {"conv1": self.conv1.to_flax()}
        if self.resolution == 4:
            out["const"] = _t2np(self.const).transpose(1, 2, 0).copy()
        else:
            out["conv0"] = self.conv0.to_flax()
            if self.architecture == "resnet":
                out["skip"] = self.skip.to_flax()
        if self.has_torgb:
            out["torgb"] = self.torgb.to_flax()
        return out


def _tree_signature(tree: Any, prefix: str = "") -> dict[str, tuple[int, ...]]:
    if isinstance(tree, Mapping):
        out = {}
        for k, v in tree.items():
            out.update(_tree_signature(v, f"{prefix}/{k}"))
        return out
    return {prefix: tuple(np.shape(tree))}


class TorchSynthesis(nn.Module):
    """`stylegan2.SynthesisNetwork` in PyTorch: ws [N, num_ws, w_dim] -> images NCHW float32.

    Built from `variables['params']['synthesis']` and `variables['buffers']['synthesis']` of a
    Flax G (numpy or jax arrays); every synthesis param becomes an `nn.Parameter`. Construction
    checks that the converted tree covers the Flax subtree exactly (no leaf dropped, none
    invented, same shapes), so a config/variables mismatch fails loudly.
    """

    def __init__(self, g_cfg, variables: Mapping[str, Any]):
        super().__init__()
        params = variables["params"]["synthesis"]
        buffers = variables["buffers"]["synthesis"]
        self.cfg = g_cfg
        if g_cfg.architecture not in ("skip", "orig", "resnet"):
            raise ValueError(f"unknown G architecture {g_cfg.architecture!r}")
        kernel4 = fir_kernel(g_cfg.fir, gain=4.0)  # every up-sampling FIR here has gain 4
        self.blocks = nn.ModuleDict(
            {
                f"b{r}": _SynthesisBlock(g_cfg, r, params[f"b{r}"], buffers[f"b{r}"], kernel4)
                for r in g_cfg.resolutions
            }
        )
        want, got = _tree_signature(params), _tree_signature(self.to_flax_params())
        if want != got:
            diff = sorted(set(want.items()) ^ set(got.items()))
            raise ValueError(f"TorchSynthesis: Flax synthesis params not matched: {diff[:6]}")

    def forward(self, ws: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        cfg = self.cfg
        if ws.ndim != 3 or tuple(ws.shape[1:]) != (cfg.num_ws, cfg.w_dim):
            raise ValueError(f"ws must be [N, {cfg.num_ws}, {cfg.w_dim}], got {tuple(ws.shape)}")
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for r in cfg.resolutions:
            num_conv = 1 if r == 4 else 2
            # A block reads its convs' ws plus the next one for ToRGB (shared with the next conv0).
            x, img = self.blocks[f"b{r}"](x, img, ws[:, w_idx : w_idx + num_conv + 1], noise_mode)
            w_idx += num_conv
        return img

    def to_flax_params(self) -> dict:
        """The current parameters as a numpy tree in the layout of `params['synthesis']`."""
        return {name: block.to_flax() for name, block in self.blocks.items()}


# ----------------------------------------------------------------------------- LPIPS


def _unit_normalize(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """f / (||f||_channels + eps), with the same 1e-30 floor inside the sqrt as perceptual.py."""
    norm = torch.sqrt(torch.clamp_min(torch.sum(f * f, dim=1, keepdim=True), 1e-30))
    return f / (norm + eps)


class TorchLPIPS(nn.Module):
    """LPIPS v0.1 (VGG16, lin heads) from `ganinv_jax.losses.load_lpips_params('vgg')`.

    Inputs NCHW in [-1, 1]; outputs [N] float32. Frozen (requires_grad=False), eval mode.
    `forward(x, y)` runs the backbone once on the 2N batch, as our Flax `LPIPS` module does;
    `features(y)` + `distance_to_features(x, feats)` is the split form with cached target
    features (`lpips_features` / `lpips_from_features` in JAX).
    """

    def __init__(self, params: Mapping[str, Any]):
        super().__init__()
        backbone = params["backbone"]
        self.convs = nn.ModuleDict()
        for name in VGG16_CONVS:
            w = _hwio_to_oihw(backbone[name]["kernel"])
            conv = nn.Conv2d(w.shape[1], w.shape[0], 3, padding=1)
            conv.weight = _param(w, requires_grad=False)
            conv.bias = _param(backbone[name]["bias"], requires_grad=False)
            self.convs[name] = conv
        # lin heads: Dense kernels [C, 1] -> 1x1 conv weights [1, C, 1, 1].
        self.lins = nn.ParameterList(
            [
                _param(_np(params[f"lin{i}"]["kernel"]).T[:, :, None, None], requires_grad=False)
                for i in range(len(VGG16_TAPS))
            ]
        )
        self.register_buffer("shift", torch.tensor(_SHIFT, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE, dtype=torch.float32).view(1, 3, 1, 1))
        self.eval()

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """ReLU activations at VGG16_TAPS of [-1, 1] images (scaling layer first)."""
        x = (x.to(torch.float32) - self.shift) / self.scale
        taps = []
        for i, name in enumerate(VGG16_CONVS):
            if i > 0 and name.endswith("_1"):  # a new block starts after a 2x2 max pool
                x = F.max_pool2d(x, 2, 2)
            x = F.relu(self.convs[name](x))
            if name in VGG16_TAPS:
                taps.append(x)
        return taps

    def features(self, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Unit-normalized tap features (one tensor per tap): compute once for a fixed target."""
        return tuple(_unit_normalize(f) for f in self._taps(y))

    def distance_to_features(self, x: torch.Tensor, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        return self._distance(self.features(x), feats)

    def _distance(self, fx: Sequence[torch.Tensor], fy: Sequence[torch.Tensor]) -> torch.Tensor:
        total = 0.0
        for lin, a, b in zip(self.lins, fx, fy):
            d = F.conv2d((a - b).square(), lin)  # [N, 1, h, w]
            total = total + d.mean(dim=(1, 2, 3))
        return total

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        feats = self.features(torch.cat([x, y], dim=0))
        return self._distance([f[:n] for f in feats], [f[n:] for f in feats])


# ----------------------------------------------------------------------------- PTI


def pti_loop(
    g_cfg,
    variables: Mapping[str, Any],
    lpips_params: Optional[Mapping[str, Any]],
    images,
    ws,
    steps: int = 50,
    lr: float = 3e-4,
    lpips_weight: float = 1.0,
    l2_weight: float = 1.0,
    threads: int = 2,
    noise_mode: str = "const",
    warmup_steps: int = 2,
    device: str = "cpu",
    autocast_bf16: bool = False,
) -> dict:
    """PTI's per-image generator tuning as a PyTorch user writes it (no locality regularizer).

    images: [N, H, W, C] (NHWC, the project's layout) in [-1, 1]; ws: [N, num_ws, w_dim], kept
    fixed. For each image: a fresh deep copy of the synthesis network, torch.optim.Adam(lr) over
    ALL its parameters, `steps` steps of
        loss = l2_weight * MSE(G(w), x) + lpips_weight * LPIPS(G(w), x)
    with the target's LPIPS features computed once per image under no_grad (the same caching
    our JAX PTI does). lpips_weight == 0 skips the LPIPS network entirely.

    device: 'cpu' or a torch device such as 'cuda' (the per-step `loss.item()` synchronizes, so
    the wall clock covers the device work).
    autocast_bf16: run G and LPIPS under `torch.autocast(device, torch.bfloat16)` (PyTorch's
    mixed precision: bf16 convs/matmuls, float32 weights and Adam; the loss is taken in float32).
    warmup_steps: before timing, this many steps are run on a throwaway copy with the first
    image (torch's one-time lazy set-up: oneDNN primitives, allocator, thread pool), the analogue
    of the JAX benchmarks' compile + warm-up call, which they do not time either. 0 disables.

    Returns dict(seconds, final_mse, img_steps_per_s, initial_mse, losses, threads, steps,
    warmup_steps):
      seconds: wall time of the per-image work (deep copy, optimizer, target features and the
        `steps` steps), summed over images; building the first G and the LPIPS net, the layout
        conversion, the warm-up and the before/after MSE evaluations are excluded;
      final_mse / initial_mse: per-image MSE of G(w) after the last step / with the untuned G;
      losses: per image, the loss at each step (before that step's update).
    """
    if not (l2_weight or lpips_weight):
        raise ValueError("pti_loop: l2_weight and lpips_weight are both 0: nothing to tune")
    device_type = torch.device(device).type
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        base = TorchSynthesis(g_cfg, variables).eval().to(device)
        lp = None
        if lpips_weight:
            if lpips_params is None:
                raise ValueError("lpips_weight != 0 needs lpips_params")
            lp = TorchLPIPS(lpips_params).eval().to(device)
        x_all = torch.from_numpy(_np(images).transpose(0, 3, 1, 2).copy()).to(device)
        ws_all = torch.from_numpy(_np(ws).copy()).to(device)
        if x_all.shape[0] != ws_all.shape[0]:
            raise ValueError(f"{x_all.shape[0]} images but {ws_all.shape[0]} latents")

        def tune(target, w, num_steps):
            """One image's PTI: fresh copy, fresh Adam, cached target features, num_steps."""
            g = copy.deepcopy(base)
            opt = torch.optim.Adam(g.parameters(), lr=lr)
            feats = None
            if lp is not None:
                with torch.no_grad():
                    feats = lp.features(target)
            hist = []
            for _ in range(num_steps):
                opt.zero_grad(set_to_none=True)
                with torch.autocast(device_type, torch.bfloat16, enabled=autocast_bf16):
                    img = g(w, noise_mode)
                    dist = lp.distance_to_features(img, feats) if lp is not None else None
                loss = 0.0
                if l2_weight:
                    loss = l2_weight * F.mse_loss(img.float(), target)
                if lp is not None:
                    loss = loss + lpips_weight * dist.float().mean()
                loss.backward()
                opt.step()
                hist.append(loss.item())
            return g, hist

        if warmup_steps > 0 and x_all.shape[0]:
            tune(x_all[:1], ws_all[:1], warmup_steps)

        seconds, final_mse, initial_mse, losses = 0.0, [], [], []
        for i in range(x_all.shape[0]):
            target, w = x_all[i : i + 1], ws_all[i : i + 1]
            with torch.no_grad():
                initial_mse.append(float(F.mse_loss(base(w, noise_mode), target)))
            t0 = time.perf_counter()
            g, hist = tune(target, w, steps)
            seconds += time.perf_counter() - t0
            with torch.no_grad():
                final_mse.append(float(F.mse_loss(g(w, noise_mode), target)))
            losses.append(hist)
        n = x_all.shape[0]
        return dict(
            seconds=seconds,
            final_mse=final_mse,
            img_steps_per_s=n * steps / seconds if seconds > 0 else float("inf"),
            initial_mse=initial_mse,
            losses=losses,
            threads=threads,
            steps=steps,
            warmup_steps=warmup_steps,
        )
    finally:
        torch.set_num_threads(prev_threads)
