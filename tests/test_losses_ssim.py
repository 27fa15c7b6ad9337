"""SSIM / MS-SSIM / PSNR against pytorch-msssim and scikit-image on real photos and noise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ganinv_jax.losses as L

try:
    from tests import _losses_fixtures as F
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import _losses_fixtures as F

try:
    from tests import _ci
except ImportError:
    import _ci

# test extras: skip where missing, FAIL under CI=true (tests/_ci.py)
torch = _ci.importorskip("torch")
pytorch_msssim = _ci.importorskip("pytorch_msssim")
skm = _ci.importorskip("skimage.metrics")


def _cases(h, w):
    """(name, a01, b01) pairs in [0, 1]: photo vs noisy photo, photo vs other photo, noise."""
    a = F.photos01(h, w)
    rng = np.random.default_rng(h * 1000 + w)
    yield "photo_noisy", a, np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
    yield "photo_other", a, np.roll(a, 1, axis=0)
    yield (
        "uniform",
        rng.uniform(0, 1, a.shape).astype(np.float32),
        rng.uniform(0, 1, a.shape).astype(np.float32),
    )


def _torch(a):
    return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2)


@pytest.mark.parametrize("hw", [(24, 24), (47, 61), (64, 64)])
def test_ssim_matches_pytorch_msssim(hw):
    for name, a, b in _cases(*hw):
        ours = np.asarray(L.ssim(jnp.asarray(a * 2 - 1), jnp.asarray(b * 2 - 1)))
        ref = pytorch_msssim.ssim(_torch(a), _torch(b), data_range=1.0, size_average=False).numpy()
        assert ours.shape == (3,)
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("hw", [(24, 24), (47, 61), (64, 64)])
def test_ssim_matches_skimage(hw):
    # skimage filters with reflect padding but averages only the interior (it crops
    # (win-1)/2 px), which is the same region as our 'valid' filtering; it runs in float64.
    # Measured agreement is ~1e-7; we assert 1e-5.
    for name, a, b in _cases(*hw):
        ours = np.asarray(L.ssim(jnp.asarray(a * 2 - 1), jnp.asarray(b * 2 - 1)))
        ref = np.array(
            [
                skm.structural_similarity(
                    a[i].astype(np.float64),
                    b[i].astype(np.float64),
                    gaussian_weights=True,
                    sigma=1.5,
                    use_sample_covariance=False,
                    data_range=1.0,
                    channel_axis=-1,
                )
                for i in range(len(a))
            ]
        )
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("hw", [(161, 161), pytest.param((176, 200), marks=pytest.mark.slow)])
def test_ms_ssim_matches_pytorch_msssim(hw):
    # 176x200: odd sizes appear at coarser scales (e.g. 25 px), exercising the padded pooling.
    for name, a, b in _cases(*hw):
        ours = np.asarray(L.ms_ssim(jnp.asarray(a * 2 - 1), jnp.asarray(b * 2 - 1)))
        ref = pytorch_msssim.ms_ssim(
            _torch(a), _torch(b), data_range=1.0, size_average=False
        ).numpy()
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4, err_msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("hw", [(256, 256), (333, 257)])
def test_ssim_and_ms_ssim_large(hw):
    for name, a, b in _cases(*hw):
        x, y = jnp.asarray(a * 2 - 1), jnp.asarray(b * 2 - 1)
        np.testing.assert_allclose(
            L.ssim(x, y),
            pytorch_msssim.ssim(_torch(a), _torch(b), data_range=1.0, size_average=False).numpy(),
            atol=1e-4,
            err_msg=name,
        )
        np.testing.assert_allclose(
            L.ms_ssim(x, y),
            pytorch_msssim.ms_ssim(
                _torch(a), _torch(b), data_range=1.0, size_average=False
            ).numpy(),
            atol=1e-4,
            err_msg=name,
        )


def test_ssim_is_defined_on_unit_range():
    # SSIM is not shift-invariant: feeding [-1, 1] values as if they were [0, 1] gives a different
    # number, so this test fails if the [-1, 1] -> [0, 1] mapping is dropped.
    a = F.photos01(32)
    b = np.roll(a, 1, axis=0)
    ours = np.asarray(L.ssim(jnp.asarray(a * 2 - 1), jnp.asarray(b * 2 - 1)))
    wrong = pytorch_msssim.ssim(
        _torch(a * 2 - 1), _torch(b * 2 - 1), data_range=1.0, size_average=False
    ).numpy()
    assert np.max(np.abs(ours - wrong)) > 1e-3


def test_identical_images():
    x = jnp.asarray(F.photos(176))
    np.testing.assert_allclose(L.ssim(x, x), 1.0, atol=1e-5)
    np.testing.assert_allclose(L.ms_ssim(x, x), 1.0, atol=1e-5)
    assert np.all(np.isinf(np.asarray(L.psnr(x, x))))


def test_psnr_matches_skimage():
    a = F.photos01(40, 56)
    b = np.clip(a + 0.05 * np.random.default_rng(0).standard_normal(a.shape), 0, 1).astype(
        np.float32
    )
    ours = np.asarray(L.psnr(jnp.asarray(a * 2 - 1), jnp.asarray(b * 2 - 1)))
    ref = np.array([skm.peak_signal_noise_ratio(a[i], b[i], data_range=1.0) for i in range(3)])
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_ms_ssim_gradient_finite_when_cs_negative():
    # Anti-correlated images make cs < 0 at some scale; relu(cs) ** w would give NaN gradients.
    x = jnp.asarray(F.photos(176)[:1])
    g = jax.grad(lambda y: jnp.sum(L.ms_ssim(x, y)))(-x)
    assert np.all(np.isfinite(np.asarray(g)))


def test_errors():
    x = jnp.zeros((1, 64, 64, 3))
    with pytest.raises(ValueError, match="shape mismatch"):
        L.ssim(x, jnp.zeros((1, 64, 65, 3)))
    with pytest.raises(ValueError, match="larger than 160 px"):
        L.ms_ssim(x, x)
    with pytest.raises(ValueError, match="NHWC"):
        L.psnr(jnp.zeros((64, 64, 3)), jnp.zeros((64, 64, 3)))
    # fewer scales allow smaller images
    assert L.ms_ssim(x, x, weights=(0.5, 0.5), win_size=7).shape == (1,)


def test_ms_ssim_settings_for_small_images():
    weights, win = L.ms_ssim_settings(256)
    assert weights == L.MS_SSIM_WEIGHTS and win == 11  # the standard setting, untouched
    for size, (levels, want_win) in {32: (3, 7), 64: (3, 11), 128: (4, 11), 16: (3, 3)}.items():
        weights, win = L.ms_ssim_settings(size)
        assert (len(weights), win) == (levels, want_win), size
        assert abs(sum(weights) - 1) < 1e-9 and (win - 1) * 2 ** (levels - 1) < size
    x = F.photos(32)
    y = F.noisy(x, 0.2)
    got = np.asarray(L.ms_ssim_any_size(x, y))
    want = np.asarray(L.ms_ssim(x, y, weights=L.ms_ssim_settings(32)[0], win_size=7))
    np.testing.assert_array_equal(got, want)
    assert np.all(got < 0.99) and np.allclose(np.asarray(L.ms_ssim_any_size(x, x)), 1.0, atol=1e-5)
