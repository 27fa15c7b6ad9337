"""Every loss: works under jit (same values), vmap over a batch equals a Python loop, finite
grads."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ganinv_jax.losses as L

try:
    from tests import _losses_fixtures as F
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import _losses_fixtures as F


@functools.lru_cache(maxsize=None)
def _vgg():
    return L.load_lpips_params("vgg")


# name -> (fn(x, y) -> [N], image size). Explicit params keep jit programs free of big constants.
IMAGE_LOSSES = {
    "lpips_vgg": (lambda x, y: L.lpips_apply(_vgg(), x, y, net="vgg"), 32),
    "lpips_alex": (lambda x, y: L.lpips(x, y, net="alex"), 32),
    "ssim": (L.ssim, 32),
    "ms_ssim": (L.ms_ssim, 161),
    "psnr": (L.psnr, 16),
    "mse": (L.mse, 16),
    "cosine": (L.cosine_similarity, 16),
    "laplacian_pyramid_l1": (L.laplacian_pyramid_l1, 32),
    "image_loss": (lambda x, y: L.image_loss(x, y, _vgg()), 32),
    "attention_aligned": (lambda x, y: L.attention_image_loss(x, y, _vgg()), 32),
    "feature_vgg16": (lambda x, y: L.feature_distance(L.vgg16_feature_net(), x, y), 32),
}
# Compiling VGG/AlexNet gradients takes tens of seconds on 2 shared cores: slow tier.
SLOW = {"ms_ssim", "attention_aligned", "image_loss", "lpips_vgg", "lpips_alex", "feature_vgg16"}


def _pair(size):
    x = F.photos(size)[:2]
    return jnp.asarray(x), jnp.asarray(F.noisy(x, 0.3, seed=size))


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in IMAGE_LOSSES]
)
def test_image_loss_jit_vmap_grad(name):
    fn, size = IMAGE_LOSSES[name]
    x, y = _pair(size)
    eager = np.asarray(fn(x, y))
    assert eager.shape == (2,) and np.all(np.isfinite(eager))
    np.testing.assert_allclose(jax.jit(fn)(x, y), eager, rtol=1e-5, atol=1e-6)
    per_image = jax.vmap(lambda a, b: fn(a[None], b[None])[0])(x, y)
    loop = np.array([fn(x[i : i + 1], y[i : i + 1])[0] for i in range(2)])
    np.testing.assert_allclose(per_image, loop, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loop, eager, rtol=1e-5, atol=1e-6)  # batch-independent
    g = jax.grad(lambda b: jnp.sum(fn(x, b)))(y)
    assert np.all(np.isfinite(np.asarray(g))) and float(jnp.max(jnp.abs(g))) > 0


def test_latent_losses_jit_vmap_grad():
    rng = np.random.default_rng(0)
    w, w2, z, z2 = (jnp.asarray(rng.standard_normal((3, 4, 8)), jnp.float32) for _ in range(4))
    fns = {
        "latent_loss": lambda a, b: L.latent_loss(a, b),
        "latent_cycle_loss": lambda a, b: L.latent_cycle_loss(a, b, a * 0.5, b * 0.5),
    }
    for name, fn in fns.items():
        eager = np.asarray(fn(w, w2))
        np.testing.assert_allclose(jax.jit(fn)(w, w2), eager, rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(
            jax.vmap(lambda a, b: fn(a[None], b[None])[0])(w, w2), eager, rtol=1e-5, err_msg=name
        )
        g = jax.grad(lambda b: jnp.sum(fn(w, b)))(w2)
        assert np.all(np.isfinite(np.asarray(g))), name


def test_mmd_jit_vmap_grad():
    sets = jax.random.normal(jax.random.key(0), (3, 2, 10, 4))
    fn = lambda s: L.mmd_rbf(s[0], s[1])
    loop = np.array([fn(s) for s in sets])
    # MMD^2 is a difference of terms of size ~len(sigmas); batched matmuls sum in another order,
    # so float32 cancellation leaves ~5e-6 absolute differences.
    np.testing.assert_allclose(jax.vmap(fn)(sets), loop, rtol=0, atol=2e-5)
    np.testing.assert_allclose(jax.jit(jax.vmap(fn))(sets), loop, rtol=0, atol=2e-5)
    # Identical sets: zero distances on the diagonal must not produce NaN gradients.
    a = sets[0, 0]
    g = jax.grad(lambda b: L.mmd_rbf(a, b))(a)
    assert np.all(np.isfinite(np.asarray(g)))


def test_gan_losses_jit_vmap_grad():
    w = jax.random.normal(jax.random.key(0), (1, 4, 4, 3))
    d_fn = lambda x: jnp.sum(jnp.tanh(w * x), axis=(1, 2, 3))
    reals = jax.random.normal(jax.random.key(1), (3, 4, 4, 3))
    r1 = L.r1_penalty(d_fn, reals)
    np.testing.assert_allclose(jax.jit(lambda x: L.r1_penalty(d_fn, x))(reals), r1, rtol=1e-6)
    np.testing.assert_allclose(
        jax.vmap(lambda x: L.r1_penalty(d_fn, x[None])[0])(reals), r1, rtol=1e-6
    )
    gw = jax.grad(
        lambda ww: jnp.sum(L.r1_penalty(lambda x: jnp.sum(jnp.tanh(ww * x), axis=(1, 2, 3)), reals))
    )(w)
    assert np.all(np.isfinite(np.asarray(gw)))
    logits = jnp.linspace(-5, 5, 7)
    for fn in (L.g_nonsaturating_loss, lambda f: L.d_logistic_loss(-f, f)):
        np.testing.assert_allclose(jax.vmap(fn)(logits), fn(logits), rtol=1e-6)
        assert np.all(np.isfinite(np.asarray(jax.grad(lambda f: jnp.sum(fn(f)))(logits))))


@pytest.mark.slow
def test_loss_on_identical_images_has_finite_gradient():
    # The optimum is where inversions end up: normalizations and sqrt must not NaN there.
    x = jnp.asarray(F.photos(32)[:1])
    for fn in (
        lambda a: L.lpips_apply(_vgg(), x, a),
        lambda a: L.ssim(x, a),
        lambda a: L.laplacian_pyramid_l1(x, a),
        lambda a: L.cosine_similarity(x, a),
    ):
        g = jax.grad(lambda a: jnp.sum(fn(a)))(x)
        assert np.all(np.isfinite(np.asarray(g)))
