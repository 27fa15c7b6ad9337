"""ganinv_jax.pretrained: load a GAN directory and use its pure functions.

Uses a tiny randomly initialised conditional GAN with InvGAN's w head, written through the
converter's own `write_dir`, so it needs no fixtures; and the embedded default model (in git),
whose samples, encoder and reconstructions are checked against what it was exported with.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ganinv_jax import pretrained
from ganinv_jax.models.stylegan2 import StyleGAN2Config, noise_shapes
from weights_convert.convert import Converted, write_dir

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _ci  # noqa: E402

CFG = StyleGAN2Config(
    resolution=16,
    channels=(16, 8, 8),
    z_dim=8,
    w_dim=16,
    c_dim=2,
    mapping_layers=2,
    d_mapping_layers=1,
    d_w_head=True,
    conv_clamp=256.0,
)
N = 3


def random_variables(cfg, nets, seed=0):
    """Random variables with the exact init structure, filled in numpy (no XLA compile):
    N(0, 1) weights, and modulation biases near 1 as StyleGAN initialises them."""
    rng = np.random.RandomState(seed)

    def fill(path, x):
        name = jax.tree_util.keystr(path)
        v = rng.standard_normal(x.shape).astype(np.float32)
        return 1.0 + 0.1 * v if "affine']['bias" in name else v

    return {
        net: jax.tree_util.tree_map_with_path(fill, tree)
        for net, tree in pretrained.abstract_variables(cfg, nets).items()
    }


@pytest.fixture(scope="module")
def trees():
    return random_variables(CFG, ("G_ema", "G", "D"))


@pytest.fixture(scope="module")
def gan_dir(trees, tmp_path_factory):
    meta = {
        "format_version": 1,
        "architecture": "stylegan2",
        "networks": sorted(trees),
        "source": {"format": "random-init", "path": None, "sha256": None},
    }
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
    g = dict(
        gan.G,
        buffers={
            "mapping": {"w_avg": jnp.linspace(-1, 1, CFG.w_dim)},
            "synthesis": gan.G["buffers"]["synthesis"],
        },
    )
    w0 = gan.mapping_fn(g, z, c, truncation_psi=0.0)
    np.testing.assert_allclose(
        w0, jnp.broadcast_to(jnp.linspace(-1, 1, CFG.w_dim), w0.shape), atol=1e-6
    )
    half = gan.mapping_fn(g, z, c, truncation_psi=0.5, truncation_cutoff=2)
    np.testing.assert_allclose(
        half[:, :2], 0.5 * (ws[:, :2] + g["buffers"]["mapping"]["w_avg"]), atol=1e-5
    )
    np.testing.assert_allclose(half[:, 2:], ws[:, 2:], atol=1e-6)
    # psi may be traced (e.g. a jit argument) and gives the same result as a Python float.
    traced = jax.jit(gan.mapping_fn)(g, z, c, jnp.float32(0.5))
    np.testing.assert_allclose(traced, gan.mapping_fn(g, z, c, 0.5), atol=1e-6)
    np.testing.assert_allclose(
        gan.mapping(z, c, truncation_psi=jnp.float32(0.5)),
        gan.mapping(z, c, truncation_psi=0.5),
        atol=1e-6,
    )
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


# ----------------------------------------------------------------------------- default model
# The embedded default (InvGAN-StyleGAN2 on Fashion-MNIST, 32x32x3) ships in git under
# ganinv_jax/assets/default: it must be there, and its numbers must be those it was exported with.

BUNDLED_16 = os.path.join(
    os.path.dirname(pretrained.DEFAULT_DIR), "samples", "fashion_mnist_test16.npz"
)


def _png_cells(path, rows, cols, res=32):
    """A grid PNG written by export.py -> the cells' uint8 pixels [rows, cols, res, res, 3].

    Cells are res*k px (nearest-upscaled by k) separated by `pad` white pixels: the shipped
    pictures have pad 0 (an earlier make_grid), make_grid now writes pad 2; the pixel at the
    center of each k x k block is read."""
    from PIL import Image

    png = np.asarray(Image.open(path).convert("RGB"))
    for pad in (0, 2):
        cell = (png.shape[1] - pad) / cols - pad
        k = cell / res
        if k >= 1 and k == int(k) and png.shape[0] == rows * (cell + pad) + pad:
            k, step = int(k), int(cell) + pad
            ys = pad + np.arange(rows)[:, None] * step + np.arange(res)[None] * k + k // 2
            xs = pad + np.arange(cols)[:, None] * step + np.arange(res)[None] * k + k // 2
            return png[ys[:, None, :, None], xs[None, :, None, :]]
    raise AssertionError(f"{path}: {png.shape} is not a {rows}x{cols} grid of {res}-px cells")


def _to_uint8(x):
    return np.clip(np.rint((np.asarray(x, np.float64) + 1.0) * 127.5), 0, 255).astype(np.int64)


@pytest.fixture(scope="module")
def default_gan():
    assert os.path.isfile(os.path.join(pretrained.DEFAULT_DIR, "config.json")), (
        f"the embedded default model is missing from {pretrained.DEFAULT_DIR} (it ships in git)"
    )
    return pretrained.load("default")


def test_default_model_config_matches_its_config_json(default_gan):
    with open(os.path.join(pretrained.DEFAULT_DIR, "config.json")) as f:
        doc = json.load(f)
    cfg = default_gan.config
    assert cfg == StyleGAN2Config.from_dict(doc["config"])
    assert (cfg.resolution, cfg.img_channels, cfg.c_dim, cfg.d_w_head) == (32, 3, 0, True)
    assert sorted(default_gan.params) == sorted(doc["networks"]) == ["D", "G", "G_ema"]
    assert default_gan.which == "G_ema" and default_gan.meta["source"] == doc["source"]
    # psi = 0 truncation lands every w on the stored w_avg (a trained, non-zero buffer)
    w_avg = np.asarray(default_gan.G["buffers"]["mapping"]["w_avg"])
    assert w_avg.shape == (cfg.w_dim,) and np.abs(w_avg).max() > 1e-2
    w0 = default_gan.mapping(jnp.ones((2, cfg.z_dim)), truncation_psi=0.0)
    np.testing.assert_allclose(w0, np.broadcast_to(w_avg, w0.shape), atol=1e-6)


def test_default_model_samples_are_its_exported_samples(default_gan):
    """G_ema(mapping(z)) for export.py's z (seed 123, 64 samples) reproduces the shipped
    samples.png pixel for pixel (+-1 level), and the samples look like Fashion-MNIST: gray,
    black background, not constant, different per z, deterministic."""
    cfg = default_gan.config
    z = jax.random.normal(jax.random.key(123), (64, cfg.z_dim))
    img = np.asarray(default_gan.generate(z))
    assert img.shape == (64, 32, 32, 3) and img.dtype == np.float32
    np.testing.assert_array_equal(img, np.asarray(default_gan.generate(z)))  # deterministic
    shipped = _png_cells(os.path.join(pretrained.DEFAULT_DIR, "samples.png"), 8, 8)
    diff = np.abs(_to_uint8(img).reshape(8, 8, 32, 32, 3) - shipped)
    assert diff.max() <= 1, f"samples differ from samples.png by up to {diff.max()} levels"
    assert np.isfinite(img).all() and -2 < img.min() and img.max() < 2
    lo, hi = np.percentile(img, [1, 99])
    assert -1.25 < lo < -0.8 and 0.6 < hi < 1.25, (lo, hi)
    # not flat images (real test images: min std 0.18, 0.2% below 0.2; a thin sandal can be lower)
    assert np.all(img.reshape(64, -1).std(axis=1) > 0.1)
    assert np.abs(img[:32] - img[32:]).mean() > 0.2  # z matters
    assert np.abs(img[..., :1] - img[..., 1:]).max() < 0.1  # gray, as trained
    border = np.concatenate(
        [
            img[:, :2].reshape(64, -1),
            img[:, -2:].reshape(64, -1),
            img[:, :, :2].reshape(64, -1),
            img[:, :, -2:].reshape(64, -1),
        ],
        1,
    )
    assert np.all(border.mean(axis=1) < -0.85)  # black background


def _bundled_images():
    with np.load(BUNDLED_16) as z:
        u8 = z["images"]
    assert u8.shape == (16, 32, 32, 1) and u8.dtype == np.uint8
    return np.repeat(u8.astype(np.float32) / 127.5 - 1.0, 3, axis=-1)


def test_default_encoder_reconstructs_fashion_mnist(default_gan):
    """InvGAN's w head + G_ema on the 16 Fashion-MNIST test images shipped in git: MAE near the
    measured 0.158 (eval.json, 10k images) and far better than the mean latent or random z."""
    gan = default_gan
    x = _bundled_images()
    ws = gan.encode(jnp.asarray(x))
    assert ws.shape == (16, gan.config.num_ws, gan.config.w_dim)
    rec = np.asarray(gan.synthesis(ws))
    per_image = np.abs(rec - x).mean(axis=(1, 2, 3))
    mae = float(per_image.mean())  # measured 0.152
    w_avg = gan.G["buffers"]["mapping"]["w_avg"]
    mae_mean_w = float(
        np.abs(np.asarray(gan.synthesis(jnp.broadcast_to(w_avg, ws.shape))) - x).mean()
    )  # measured 0.364
    z = jax.random.normal(jax.random.key(0), (16, gan.config.z_dim))
    mae_random = float(np.abs(np.asarray(gan.generate(z)) - x).mean())  # measured 0.436
    print(f"\ndefault encoder MAE {mae:.4f}, mean w {mae_mean_w:.4f}, random z {mae_random:.4f}")
    assert mae < 0.2, mae
    assert mae < 0.6 * mae_mean_w and mae < 0.5 * mae_random, (mae, mae_mean_w, mae_random)
    assert per_image.max() < 0.35, per_image
    # reconstructions belong to their own image: nearest target (measured 14 of 16; two
    # near-identical garments swap)
    dist = np.abs(rec[:, None] - x[None]).mean(axis=(2, 3, 4))
    assert int(np.sum(dist.argmin(axis=1) == np.arange(16))) >= 12, dist.argmin(axis=1)


@_ci.needs_fmnist
def test_default_encoder_on_the_test_split(default_gan):
    """On the real test split (Debian's idx files): the first 16 reproduce the shipped
    reconstructions.png (export.py's reals / G_ema(D_w(x)) rows, +-1 level), and the first 256
    have MAE < 0.2 (eval.json: 0.158 on all 10k)."""
    from ganinv_jax import data as data_lib

    gan = default_gan
    x = data_lib.from_uint8(data_lib.load_fashion_mnist("test", resolution=32, channels=3)[:256])
    rec = np.asarray(gan.synthesis(gan.encode(jnp.asarray(x))))
    cells = _png_cells(os.path.join(pretrained.DEFAULT_DIR, "reconstructions.png"), 6, 8)
    np.testing.assert_array_equal(np.concatenate([cells[0], cells[3]]), _to_uint8(x[:16]))
    diff = np.abs(np.concatenate([cells[1], cells[4]]) - _to_uint8(np.clip(rec[:16], -1, 1)))
    assert diff.max() <= 1, f"reconstructions differ from reconstructions.png by {diff.max()}"
    mae = float(np.abs(rec - x).mean())  # measured 0.155
    with open(os.path.join(pretrained.DEFAULT_DIR, "eval.json")) as f:
        shipped = json.load(f)["test_mae_g_ema"]
    assert mae < 0.2 and abs(mae - shipped) < 0.03, (mae, shipped)


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
    doc["config"]["channels"] = [16, 8, 4]  # params on disk no longer fit
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
                open(os.path.join(root, f), "wb").close()  # truncate every data file
    with pytest.raises(ValueError, match="cannot restore"):
        pretrained.load(str(broken))


# ----------------------------------------------------------------------------- default encoder
# The paper-000 encoder of the default model ships in git under ganinv_jax/assets/default_encoder
# (`--config.encoder=default`, and what `auto` picks for the default model).


def test_default_encoder_ships_fits_and_beats_the_invgan_head(default_gan):
    assert os.path.isfile(os.path.join(pretrained.DEFAULT_ENCODER_DIR, "config.json")), (
        f"the default encoder is missing from {pretrained.DEFAULT_ENCODER_DIR} (it ships in git)"
    )
    enc = pretrained.load_encoder("default")
    enc.check_generator(default_gan.config)
    assert enc.config.kind == "adaptive" and enc.doc["source"]["objective"] == "finetune"
    with np.load(BUNDLED_16) as z:
        x = np.repeat(z["images"].astype(np.float32) / 127.5 - 1.0, 3, axis=-1)

    def mse(ws):
        rec = np.clip(np.asarray(default_gan.synthesis(jnp.asarray(ws))), -1, 1)
        return np.mean(np.square(rec - x).reshape(len(x), -1), axis=1)

    ws = np.asarray(enc.encode_ws(jnp.asarray(x), default_gan))
    assert ws.shape == (16, default_gan.config.num_ws, default_gan.config.w_dim)
    head = mse(default_gan.encode(jnp.asarray(x)))
    mine = mse(ws)
    print(
        f"\n16 bundled test images, MSE: paper-000 encoder {mine.mean():.4f}, "
        f"InvGAN head {head.mean():.4f}"
    )
    assert mine.mean() < head.mean()
