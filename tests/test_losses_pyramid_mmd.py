"""Laplacian-pyramid L1 (against an independent scipy pyramid) and unbiased RBF MMD."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

import ganinv_jax.losses as L
from ganinv_jax.losses import pyramid

try:
    from tests import _losses_fixtures as F
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import _losses_fixtures as F

K1 = np.array([1, 4, 6, 4, 1], np.float64) / 16


def _np_blur(img, gain=1.0):
    k = np.outer(K1, K1)[:, :, None] * gain
    # scipy 'mirror' = reflect without repeating the edge = numpy 'reflect' = OpenCV REFLECT_101
    return ndimage.convolve(img, k, mode="mirror")


def _np_pyramid(img, levels):
    bands, cur = [], img.astype(np.float64)
    for _ in range(levels - 1):
        down = _np_blur(cur)[::2, ::2]
        up = np.zeros((2 * down.shape[0], 2 * down.shape[1], img.shape[2]))
        up[::2, ::2] = down
        bands.append(cur - _np_blur(up[: cur.shape[0], : cur.shape[1]], 4.0))
        cur = down
    return bands + [cur]


@pytest.mark.parametrize("hw,levels", [((32, 32), 5), ((37, 50), 4), ((16, 24), 1)])
def test_pyramid_l1_matches_numpy_reference(hw, levels):
    x = F.photos(*hw)
    y = F.noisy(x, 0.2)
    ours = np.asarray(L.laplacian_pyramid_l1(jnp.asarray(x), jnp.asarray(y), levels=levels))
    ref = np.array(
        [
            sum(
                np.mean(np.abs(bx - by))
                for bx, by in zip(_np_pyramid(x[i], levels), _np_pyramid(y[i], levels))
            )
            for i in range(len(x))
        ]
    )
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_pyramid_collapses_back_to_image():
    x = jnp.asarray(F.photos(37, 45))
    bands = pyramid.laplacian_pyramid(x, levels=4)
    assert [b.shape[1:3] for b in bands] == [(37, 45), (19, 23), (10, 12), (5, 6)]
    rec = bands[-1]
    for band in reversed(bands[:-1]):
        rec = band + pyramid.pyr_up(rec, band.shape[1:3])
    np.testing.assert_allclose(rec, x, atol=1e-5)


def test_pyramid_properties_and_errors():
    x = jnp.asarray(F.photos(32))
    assert np.all(np.asarray(L.laplacian_pyramid_l1(x, x)) == 0)
    # More levels add non-negative terms.
    y = jnp.asarray(F.noisy(F.photos(32), 0.1))
    assert np.all(
        np.asarray(L.laplacian_pyramid_l1(x, y, levels=3))
        <= np.asarray(L.laplacian_pyramid_l1(x, y, levels=5)) + 1e-7
    )
    with pytest.raises(ValueError, match="at least 64 px"):
        L.laplacian_pyramid_l1(x, x, levels=7)
    with pytest.raises(ValueError, match="shape mismatch"):
        L.laplacian_pyramid_l1(x, x[:, :16])


def _np_mmd_unbiased(a, b, sigmas):
    a, b = a.astype(np.float64), b.astype(np.float64)

    def k(p, q):
        d2 = ((p[:, None, :] - q[None, :, :]) ** 2).sum(-1)
        return sum(np.exp(-d2 / (2 * s * s)) for s in sigmas)

    n, m = len(a), len(b)
    kaa, kbb = k(a, a), k(b, b)
    return (
        (kaa.sum() - np.trace(kaa)) / (n * (n - 1))
        + (kbb.sum() - np.trace(kbb)) / (m * (m - 1))
        - 2 * k(a, b).mean()
    )


@pytest.mark.parametrize("sigmas", [(1.0,), (0.5, 2.0, 8.0)])
def test_mmd_matches_numpy(sigmas):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((17, 6)).astype(np.float32)
    b = (rng.standard_normal((23, 6)) * 1.3 + 0.4).astype(np.float32)
    ours = float(L.mmd_rbf(jnp.asarray(a), jnp.asarray(b), sigmas=sigmas))
    np.testing.assert_allclose(ours, _np_mmd_unbiased(a, b, sigmas), rtol=1e-4, atol=1e-6)


def test_mmd_is_unbiased_and_detects_shift():
    # Same distribution: the unbiased estimate averages to ~0 (the biased V-statistic would sit
    # clearly above 0, about 2 * k(0) / n); a shifted distribution gives a clearly positive value.
    keys = jax.random.split(jax.random.key(0), 400)
    draw = jax.vmap(lambda k: jax.random.normal(k, (2, 8, 4)))(keys)
    same = np.asarray(jax.vmap(lambda s: L.mmd_rbf(s[0], s[1], sigmas=(1.0, 2.0)))(draw))
    assert abs(same.mean()) < 3 * same.std() / np.sqrt(len(same))
    assert np.any(same < 0)
    shifted = np.asarray(jax.vmap(lambda s: L.mmd_rbf(s[0], s[1] + 1.5, sigmas=(1.0, 2.0)))(draw))
    assert shifted.mean() > 10 * same.std() / np.sqrt(len(same))


def test_mmd_errors():
    with pytest.raises(ValueError, match="equal D"):
        L.mmd_rbf(jnp.zeros((4, 3)), jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match=">= 2 samples"):
        L.mmd_rbf(jnp.zeros((1, 3)), jnp.zeros((4, 3)))
