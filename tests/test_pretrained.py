"""ganinv_jax.pretrained: load a GAN directory and use its pure functions.

Uses a tiny randomly initialised conditional GAN with InvGAN's w head, written through the
converter's own `write_dir`, so it needs no fixtures.
"""
from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ganinv_jax import pretrained
from ganinv_jax.models.stylegan2 import StyleGAN2Config, noise_shapes
from weights_convert.convert import Converted, write_dir

CFG = StyleGAN2Config(resolution=16, channels=(16, 8, 8), z_dim=8, w_dim=16, c_dim=2,
                      mapping_layers=2, d_mapping_layers=1, d_w_head=True, conv_clamp=256.0)
N = 3


def random_variables(cfg, nets, seed=0):
    """Random variables with the exact init structure, filled in numpy (no XLA compile):
    N(0, 1) weights, and modulation biases near 1 as StyleGAN initialises them."""
    rng = np.random.RandomState(seed)

    def fill(path, x):
        name = jax.tree_util.keystr(path)
        v = rng.standard_normal(x.shape).astype(np.float32)
        return 1.0 + 0.1 * v if "affine']['bias" in name else v
    return {net: jax.tree_util.tree_map_with_path(fill, tree)
            for net, tree in pretrained.abstract_variables(cfg, nets).items()}


@pytest.fixture(scope="module")
def trees():
    return random_variables(CFG, ("G_ema", "G", "D"))


@pytest.fixture(scope="module")
def gan_dir(trees, tmp_path_factory):
    meta = {"format_version": 1, "architecture": "stylegan2", "networks": sorted(trees),
            "source": {"format": "random-init", "path": None, "sha256": None}}
    return write_dir(str(tmp_path_factory.mktemp("gan") / "tiny"), Converted(CFG, trees, meta))


@pytest.fixture(scope="module")
def gan(gan_dir):
    return pretrained.load(gan_dir)


@pytest.fixture(scope="module")
def inputs():
    kz, kc, ki = jax.random.split(jax.random.key(1), 3)
    z = jax.random.normal(kz, (N, CFG.z_dim))
    c = jax.nn.one_hot(jnp.arange(N) % CFG.c_dim, CFG.c_dim)
    img = jax.random.uniform(ki, (N, 16, 16, 3), minval=-1, maxval=1)
    return z, c, img


@pytest.fixture(scope="module")
def ws(gan, inputs):
    z, c, _ = inputs
    return gan.mapping(z, c)


def test_round_trip(gan, trees):
    assert gan.config == CFG
    assert sorted(gan.params) == ["D", "G", "G_ema"]
    flat_a = jax.tree_util.tree_leaves_with_path(trees)
    flat_b = jax.tree_util.tree_leaves_with_path(gan.params)
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, a), (_, b) in zip(flat_a, flat_b):
        np.testing.assert_array_equal(np.asarray(b), a, err_msg=jax.tree_util.keystr(path))
    assert gan.meta["source"]["format"] == "random-init"


def test_mapping_shapes_and_truncation(gan, inputs, ws):
    z, c, _ = inputs
    assert ws.shape == (N, CFG.num_ws, CFG.w_dim) and ws.dtype == jnp.float32
    np.testing.assert_array_equal(ws, jnp.broadcast_to(ws[:, :1], ws.shape))
    # Give w_avg a non-trivial value so truncation towards it is visible.
    g = dict(gan.G, buffers={"mapping": {"w_avg": jnp.linspace(-1, 1, CFG.w_dim)},
                             "synthesis": gan.G["buffers"]["synthesis"]})
    w0 = gan.mapping_fn(g, z, c, truncation_psi=0.0)
    np.testing.assert_allclose(w0, jnp.broadcast_to(jnp.linspace(-1, 1, CFG.w_dim), w0.shape),
                               atol=1e-6)
    half = gan.mapping_fn(g, z, c, truncation_psi=0.5, truncation_cutoff=2)
    np.testing.assert_allclose(half[:, :2], 0.5 * (ws[:, :2] + g["buffers"]["mapping"]["w_avg"]),
                               atol=1e-5)
    np.testing.assert_allclose(half[:, 2:], ws[:, 2:], atol=1e-6)
    # psi may be traced (e.g. a jit argument) and gives the same result as a Python float.
    traced = jax.jit(gan.mapping_fn)(g, z, c, jnp.float32(0.5))
    np.testing.assert_allclose(traced, gan.mapping_fn(g, z, c, 0.5), atol=1e-6)
    np.testing.assert_allclose(gan.mapping(z, c, truncation_psi=jnp.float32(0.5)),
                               gan.mapping(z, c, truncation_psi=0.5), atol=1e-6)
    with pytest.raises(ValueError, match="conditional"):
        gan.mapping(z)


def test_synthesis_noise_modes(gan, ws):
    img = gan.synthesis(ws)
    assert img.shape == (N, 16, 16, 3) and img.dtype == jnp.float32
    none = gan.synthesis(ws, noise_mode="none")
    assert float(jnp.abs(img - none).max()) > 1e-3
    zeros = {n: jnp.zeros(s) for n, s in noise_shapes(CFG).items()}
    np.testing.assert_allclose(gan.synthesis(ws, noise=zeros), none, atol=1e-5)
    with pytest.raises(ValueError, match="key"):
        gan.synthesis(ws, noise_mode="random")
    r1 = gan.synthesis(ws, "random", key=jax.random.key(5))
    r1b = gan.synthesis(ws, "random", key=jax.random.key(5))
    r2 = gan.synthesis(ws, "random", key=jax.random.key(6))
    np.testing.assert_array_equal(r1, r1b)
    assert float(jnp.abs(r1 - r2).max()) > 1e-3 and float(jnp.abs(r1 - img).max()) > 1e-3
    with pytest.raises(ValueError, match="noise_mode"):
        gan.synthesis(ws, noise_mode="bogus")


def test_discriminate_and_encode(gan, inputs, ws):
    _, c, img = inputs
    logits = gan.discriminate(img, c)
    assert logits.shape == (N, 1) and bool(jnp.isfinite(logits).all())
    enc = gan.encode(img)
    assert enc.shape == (N, CFG.num_ws, CFG.w_dim)
    np.testing.assert_array_equal(enc, jnp.broadcast_to(enc[:, :1], enc.shape))
    # The encoded ws feed synthesis directly (InvGAN's reconstruction path).
    assert gan.synthesis(enc).shape == img.shape
    with pytest.raises(ValueError, match="NHWC"):
        gan.discriminate(jnp.transpose(img, (0, 3, 1, 2)), c)


def test_which_selects_the_raw_generator(gan_dir, gan, ws, trees):
    raw = pretrained.load(gan_dir, which="G")
    assert raw.which == "G"
    a, b = gan.synthesis(ws), raw.synthesis(ws)
    assert float(jnp.abs(a - b).max()) > 1e-3
    np.testing.assert_allclose(b, gan.synthesis(ws, variables=gan.params["G"]), atol=1e-5)
    only = pretrained.load(gan_dir, networks=["G_ema"])
    assert sorted(only.params) == ["G_ema"]
    with pytest.raises(ValueError, match="'G'"):
        pretrained.load(gan_dir, which="G", networks=["G_ema"])


def test_functional_forms_jit_grad(gan, ws):
    """What the G-tuning inversion methods need: params as explicit, differentiable inputs.
    (vmap over per-image params is covered in test_stylegan2.py.)"""
    syn = jax.jit(gan.synthesis_fn, static_argnames="noise_mode")
    target = gan.synthesis(ws) + 0.1

    def loss(params, w):
        return jnp.mean(jnp.square(syn(params, w) - target))
    g_params, g_ws = jax.grad(loss, argnums=(0, 1))(gan.G, ws)
    leaves = jax.tree_util.tree_leaves(g_params["params"])
    assert all(bool(jnp.isfinite(x).all()) for x in leaves)
    assert sum(float(jnp.abs(x).sum()) for x in leaves) > 0
    assert float(jnp.abs(g_ws).sum()) > 0


# ----------------------------------------------------------------------------- errors


def test_default_model():
    if os.path.isdir(pretrained.DEFAULT_DIR):
        gan = pretrained.load("default")
        ws = gan.mapping(jnp.zeros((1, gan.config.z_dim)),
                         jnp.zeros((1, gan.config.c_dim)) if gan.config.c_dim else None)
        assert gan.synthesis(ws).shape[1:3] == (gan.config.resolution,) * 2
    else:
        with pytest.raises(FileNotFoundError, match=pretrained.DEFAULT_DIR):
            pretrained.load("default")


def test_missing_and_corrupt_dirs(gan_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such"):
        pretrained.load(str(tmp_path / "absent"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        pretrained.load(str(empty))

    def copy(name):
        dst = tmp_path / name
        shutil.copytree(gan_dir, dst)
        return dst
    bad_json = copy("bad_json")
    (bad_json / "config.json").write_text("{ not json")
    with pytest.raises(ValueError, match="corrupt config"):
        pretrained.load(str(bad_json))
    bad_arch = copy("bad_arch")
    doc = json.loads((bad_arch / "config.json").read_text())
    doc["architecture"] = "biggan"
    (bad_arch / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="biggan"):
        pretrained.load(str(bad_arch))
    wrong_shape = copy("wrong_shape")
    doc = json.loads((wrong_shape / "config.json").read_text())
    doc["config"]["channels"] = [16, 8, 4]    # params on disk no longer fit
    (wrong_shape / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="cannot restore"):
        pretrained.load(str(wrong_shape))
    no_params = copy("no_params")
    shutil.rmtree(no_params / "params")
    with pytest.raises(FileNotFoundError, match="params"):
        pretrained.load(str(no_params))
    broken = copy("broken")
    for root, _, files in os.walk(broken / "params"):
        for f in files:
            if not f.startswith("_"):
                open(os.path.join(root, f), "wb").close()   # truncate every data file
    with pytest.raises(ValueError, match="cannot restore"):
        pretrained.load(str(broken))
