"""benchmarks/torch_reference.py: the PyTorch twin of our synthesis network, LPIPS-VGG and PTI.

Checked against (a) the unmodified rosinality forward pass (fixture, through our converter),
(b) our JAX `SynthesisNetwork` on random tiny configs (values and gradients), (c) our JAX LPIPS
with the real VGG weights, and (d) the PTI loop runs and lowers the loss.

torch is a test extra: without it these tests skip, except under CI=true, where a missing torch
or a missing fixture is a failure (CI installs both).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ganinv_jax import losses, pretrained
from ganinv_jax.models import stylegan2 as S

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _ci  # noqa: E402
from _parity import max_err, nchw  # noqa: E402

torch = _ci.importorskip("torch")  # CI installs the test extras: a missing torch fails there

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4


def _load_torch_reference():
    path = os.path.join(REPO, "benchmarks", "torch_reference.py")
    spec = importlib.util.spec_from_file_location("torch_reference", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TR = _load_torch_reference()


def fixture_file(name: str) -> str:
    return _ci.fixture_file(name)  # skip, or fail under CI=true


def torch_synth(g, ws, noise_mode="const") -> np.ndarray:
    with torch.no_grad():
        return g(torch.from_numpy(np.array(ws, np.float32)), noise_mode).numpy()


def tiny(resolution, channels, **kw) -> S.StyleGAN2Config:
    base = dict(resolution=resolution, channels=channels, z_dim=16, w_dim=16, mapping_layers=2)
    return S.StyleGAN2Config(**{**base, **kw})


def random_g_variables(cfg, seed=0):
    """Init-shaped G variables filled with N(0, 1) in numpy (no compile; noise strengths != 0)."""
    rng = np.random.RandomState(seed)
    abstract = pretrained.abstract_variables(cfg, ["G_ema"])["G_ema"]
    return jax.tree_util.tree_map(
        lambda x: rng.standard_normal(x.shape).astype(np.float32), abstract
    )


def random_ws(cfg, n=2, seed=1) -> np.ndarray:
    return (
        np.random.RandomState(seed).standard_normal((n, cfg.num_ws, cfg.w_dim)).astype(np.float32)
    )


# ----------------------------------------------------------------------------- (a) fixture


@pytest.fixture(scope="module")
def rosinality_gan(tmp_path_factory):
    from weights_convert.cli import main

    src = fixture_file("rosinality_stylegan2_32.pt")
    out = tmp_path_factory.mktemp("torch_ref") / "rosinality"
    assert main(["--format", "rosinality", "--src", src, "--out", str(out), "--no-d"]) == 0
    return pretrained.load(str(out))


def test_rosinality_fixture(rosinality_gan):
    """Converted g_ema -> TorchSynthesis reproduces upstream rosinality (const noise buffers)."""
    io_ = np.load(fixture_file("rosinality_stylegan2_32_io.npz"))
    gan = rosinality_gan
    assert gan.config.fan_in_scale_modconv and gan.config.architecture == "skip"
    g = TR.TorchSynthesis(gan.config, gan.G).eval()
    # W+ input: a synthesis-only call upstream (input_is_latent=True, randomize_noise=False).
    err_wplus = max_err(torch_synth(g, io_["wplus"]), io_["img_wplus"])
    # z input: mapped by OUR JAX mapping network, then the torch synthesis.
    err_z = max_err(torch_synth(g, gan.mapping(jnp.asarray(io_["z"]))), io_["img"])
    print(f"\nrosinality fixture: img_wplus {err_wplus:.1e}, img (z via JAX mapping) {err_z:.1e}")
    assert err_wplus <= TOL and err_z <= TOL
    # The noise matters at this tolerance: without it the output is far off.
    assert max_err(torch_synth(g, io_["wplus"], "none"), io_["img_wplus"]) > 100 * TOL


# ----------------------------------------------------------------------------- (b) vs JAX


SYNTH_CONFIGS = {
    # NVlabs conventions; a small clamp so that the clamp actually cuts values.
    "16-skip-nvlabs-clamp": tiny(16, (16, 8, 8), conv_clamp=1.5),
    # rosinality's W / sqrt(fan_in) before demodulation; grayscale 'orig'.
    "16-orig-faninscale-gray": tiny(
        16, (8, 16, 8), architecture="orig", img_channels=1, fan_in_scale_modconv=True
    ),
    # resnet G (FIR-upsampled 1x1 skip, sqrt(0.5) gains) with fan_in scaling.
    "8-resnet-faninscale": tiny(8, (8, 8), architecture="resnet", fan_in_scale_modconv=True),
}


def _jax_synthesis(cfg, noise_mode):
    G = S.Generator(cfg)
    return jax.jit(lambda v, ws: G.apply(v, ws, noise_mode=noise_mode, method=G.synthesis))


@pytest.mark.parametrize("name", list(SYNTH_CONFIGS))
def test_synthesis_matches_jax(name):
    cfg = SYNTH_CONFIGS[name]
    variables = random_g_variables(cfg)
    ws = random_ws(cfg)
    g = TR.TorchSynthesis(cfg, variables).eval()
    modes = ("const", "none") if name.startswith("16-skip") else ("const",)
    for mode in modes:
        ref = nchw(_jax_synthesis(cfg, mode)(variables, jnp.asarray(ws)))
        got = torch_synth(g, ws, mode)
        err = max_err(got, ref)
        print(f"\n{name} noise={mode}: max abs {err:.1e} (|img| max {np.abs(ref).max():.1f})")
        assert err <= TOL, (name, mode, err)
    if cfg.conv_clamp is not None:  # the clamp is exercised: without it the image differs
        unclamped = TR.TorchSynthesis(dataclasses.replace(cfg, conv_clamp=None), variables)
        assert max_err(torch_synth(unclamped, ws, mode), got) > 100 * TOL
    # Parameters read back into the Flax layout bit-exactly.
    back = g.to_flax_params()
    flat_a = jax.tree_util.tree_leaves_with_path(back)
    flat_b = dict(jax.tree_util.tree_leaves_with_path(variables["params"]["synthesis"]))
    assert len(flat_a) == len(flat_b)
    for path, leaf in flat_a:
        np.testing.assert_array_equal(leaf, np.asarray(flat_b[path]), err_msg=str(path))


def test_synthesis_gradients_match_jax():
    """d/dθ of the same scalar agrees leaf by leaf: Adam sees the same problem on both sides.

    8x8 skip (up-conv0, FIR skip up-sampling of the image, both ToRGBs) keeps the JAX grad
    compile short."""
    cfg = tiny(8, (8, 8), fan_in_scale_modconv=True)
    variables = random_g_variables(cfg)
    ws = random_ws(cfg)
    probe = (
        np.random.RandomState(2)
        .standard_normal((2, cfg.resolution, cfg.resolution, cfg.img_channels))
        .astype(np.float32)
    )
    G = S.Generator(cfg)

    def scalar(p):
        v = {"params": {**variables["params"], "synthesis": p}, "buffers": variables["buffers"]}
        return jnp.sum(G.apply(v, jnp.asarray(ws), method=G.synthesis) * probe)

    ref = jax.jit(jax.grad(scalar))(variables["params"]["synthesis"])

    g = TR.TorchSynthesis(cfg, variables)
    (g(torch.from_numpy(ws)) * torch.from_numpy(nchw(probe))).sum().backward()
    # Gradients in the Flax layout: swap each param for its grad, read back with to_flax_params.
    with torch.no_grad():
        for p in g.parameters():
            p.copy_(p.grad)
    got = dict(jax.tree_util.tree_leaves_with_path(g.to_flax_params()))
    worst = 0.0
    for path, r in jax.tree_util.tree_leaves_with_path(ref):
        r = np.asarray(r)
        rel = max_err(got[path], r) / max(float(np.abs(r).max()), 1e-6)
        worst = max(worst, rel)
        assert rel <= TOL, (jax.tree_util.keystr(path), rel)
    print(f"\ngradients: worst leaf max-abs error / leaf max-abs {worst:.1e}")


# ----------------------------------------------------------------------------- (c) LPIPS


@pytest.fixture(scope="module")
def lpips_vgg():
    params = losses.load_lpips_params("vgg")
    return params, TR.TorchLPIPS(params)


@pytest.mark.parametrize("size", [32, 64])
def test_lpips_matches_jax(lpips_vgg, size):
    params, lp = lpips_vgg
    rng = np.random.RandomState(size)
    x = rng.uniform(-1, 1, (3, size, size, 3)).astype(np.float32)
    y = np.clip(x + 0.3 * rng.standard_normal(x.shape), -1, 1).astype(np.float32)
    y[2] = rng.uniform(-1, 1, (size, size, 3))  # one unrelated pair
    ref = np.asarray(losses.lpips_apply(params, jnp.asarray(x), jnp.asarray(y), net="vgg"))
    tx, ty = torch.from_numpy(nchw(x)), torch.from_numpy(nchw(y))
    with torch.no_grad():
        joint = lp(tx, ty).numpy()
        split = lp.distance_to_features(tx, lp.features(ty)).numpy()
    rel = float(np.max(np.abs(joint - ref) / np.abs(ref)))
    rel_split = float(np.max(np.abs(split - joint) / np.abs(joint)))
    print(
        f"\nLPIPS {size}x{size}: {ref} ; torch vs JAX rel {rel:.1e}, split vs joint {rel_split:.1e}"
    )
    assert joint.shape == (3,) and np.all(ref > 1e-2)
    np.testing.assert_allclose(joint, ref, rtol=1e-5, atol=0)
    np.testing.assert_allclose(split, joint, rtol=1e-5, atol=0)
    assert not any(p.requires_grad for p in lp.parameters())


# ----------------------------------------------------------------------------- (d) PTI loop


def test_pti_loop_lowers_the_loss(lpips_vgg):
    params, _ = lpips_vgg
    cfg = tiny(16, (8, 8, 8))
    variables = random_g_variables(cfg, seed=3)
    rng = np.random.RandomState(4)
    images = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)  # NHWC
    ws = random_ws(cfg, n=2, seed=5)
    before = np.asarray(variables["params"]["synthesis"]["b16"]["conv1"]["weight"]).copy()
    threads = torch.get_num_threads()

    res = TR.pti_loop(cfg, variables, params, images, ws, steps=2, threads=1)
    assert torch.get_num_threads() == threads  # restored
    assert len(res["final_mse"]) == 2 and all(math.isfinite(v) for v in res["final_mse"])
    for i in range(2):
        assert res["losses"][i][1] < res["losses"][i][0], res["losses"]
        assert res["final_mse"][i] < res["initial_mse"][i], res
    assert res["seconds"] > 0 and math.isclose(res["img_steps_per_s"], 2 * 2 / res["seconds"])
    # The tuning worked on copies: the caller's variables are untouched.
    np.testing.assert_array_equal(
        before, np.asarray(variables["params"]["synthesis"]["b16"]["conv1"]["weight"])
    )

    mse_only = TR.pti_loop(
        cfg,
        variables,
        None,
        images[:1],
        ws[:1],
        steps=2,
        lpips_weight=0.0,
        threads=1,
        warmup_steps=0,
    )
    assert mse_only["losses"][0][0] == pytest.approx(mse_only["initial_mse"][0], rel=1e-6)
    assert mse_only["final_mse"][0] < mse_only["initial_mse"][0]

    # PyTorch's mixed precision: the first loss is float32's to bf16 rounding, and it tunes
    bf16 = TR.pti_loop(
        cfg, variables, params, images, ws, steps=2, threads=1, warmup_steps=0, autocast_bf16=True
    )
    for i in range(2):
        assert bf16["losses"][i][0] == pytest.approx(res["losses"][i][0], rel=3e-2)
        assert bf16["losses"][i][0] != res["losses"][i][0]  # bf16 ran, not float32
        assert bf16["final_mse"][i] < bf16["initial_mse"][i]
    print(
        f"\npti_loop: {res['img_steps_per_s']:.1f} img-steps/s with LPIPS, "
        f"{mse_only['img_steps_per_s']:.1f} MSE only; mse {res['initial_mse']} -> "
        f"{res['final_mse']}"
    )
