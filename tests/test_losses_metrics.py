"""Metric aggregation and reports; the feature-distance interface."""

import jax.numpy as jnp
import numpy as np
import pytest

import ganinv_jax.losses as L
from ganinv_jax.losses import metrics


def test_summarize_matches_numpy_and_drops_nonfinite():
    rng = np.random.default_rng(0)
    v = rng.standard_normal(101)
    s = L.summarize(np.concatenate([v, [np.inf, np.nan]]))
    assert s["count"] == 103 and s["nonfinite"] == 2
    np.testing.assert_allclose(
        [s["mean"], s["std"], s["min"], s["max"], s["p50"], s["p95"]],
        [v.mean(), v.std(), v.min(), v.max(), np.median(v), np.percentile(v, 95)],
    )
    empty = L.summarize([np.nan])
    assert empty["count"] == 1 and np.isnan(empty["mean"])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_tree_all_finite_finds_one_bad_entry_anywhere(bad):
    """The engine's and trainers' NaN guard, jitted and per image under vmap: one NaN/inf in
    any position of any floating leaf; huge finite values, integer leaves and bf16 are fine."""
    import jax

    from ganinv_jax.losses import common

    check = jax.jit(jax.vmap(common.tree_all_finite))
    tree = {
        "w": np.full((4, 3, 300), 3e38, np.float32),  # a sum of these would overflow
        "b": np.zeros((4, 5), jnp.bfloat16),
        "step": np.full((4,), 2**30, np.int32),
    }
    assert list(np.asarray(check(tree))) == [True] * 4
    for pos in (0, 7, 899):
        w = tree["w"].copy()
        w[2].reshape(-1)[pos] = bad
        assert list(np.asarray(check({**tree, "w": w}))) == [True, True, False, True]
    b = tree["b"].copy()
    b[1, 4] = bad
    assert list(np.asarray(check({**tree, "b": b}))) == [True, False, True, True]
    assert bool(common.tree_all_finite({"n": np.arange(3)}))  # no floating leaf


def test_invert_job_aggregates_with_summarize():
    # The invert job's summary.json statistics are `summarize`'s, over OK images only.
    from ganinv_jax.jobs import records

    status = np.array([records.CONVERGED, records.FAILED, records.MAX_STEPS, records.EMPTY])
    chunk = {"status": status, "iterations": np.array([3, 9, 5, 0]), "seconds": np.ones(4)}
    for k in records.METRIC_KEYS:
        chunk[k] = np.array([0.1, 99.0, 0.3, 7.0])
    agg = records.aggregate([chunk])
    assert agg["images"] == 3 and agg["counts"]["failed"] == 1
    mse = agg[records.METRIC_KEYS[0]]
    assert (
        mse["count"] == 2 and mse["mean"] == pytest.approx(0.2) and mse["p50"] == pytest.approx(0.2)
    )
    assert mse["max"] == pytest.approx(0.3)  # the failed image's 99 is not in the statistics


def test_report_errors():
    with pytest.raises(ValueError, match="differ in length"):
        metrics.summarize_all({"a": [1, 2], "b": [1]})


def test_feature_interface_with_custom_net():
    # A toy "identity network": per-layer features from a fixed linear map.
    proj = jnp.asarray(np.random.default_rng(0).standard_normal((3, 5)), jnp.float32)

    def apply(params, x):
        return {"pool": jnp.mean(x, axis=(1, 2)) @ params, "pix": x[:, ::4, ::4, :] @ params}

    net = L.FeatureNet("toy", apply, proj, input_size=8, crop=(2, 2, 18, 18))
    x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 20, 20, 3)), jnp.float32)
    y = x.at[:, 5:10, 5:10].add(0.5)
    assert np.allclose(L.feature_distance(net, x, x), 0.0, atol=1e-6)
    d_l2 = np.asarray(L.feature_distance(net, x, y, kind="l2"))
    xp, yp = net.preprocess(x), net.preprocess(y)
    f = lambda im: [jnp.mean(im, axis=(1, 2)) @ proj, im[:, ::4, ::4, :] @ proj]
    ref = sum(np.mean(np.reshape((a - b) ** 2, (2, -1)), 1) for a, b in zip(f(xp), f(yp))) / 2
    np.testing.assert_allclose(d_l2, ref, rtol=1e-5)
    # Outside the crop, changes are invisible.
    z = x.at[:, :2, :, :].add(0.7)
    assert np.allclose(L.feature_distance(net, x, z), 0.0, atol=1e-6)
    with pytest.raises(ValueError, match="unknown kind"):
        L.feature_distance(net, x, y, kind="kl")


def test_feature_registry():
    L.register_feature_net(
        "toy_identity", lambda: L.FeatureNet("toy_identity", lambda p, x: x, None)
    )
    assert L.get_feature_net("toy_identity").name == "toy_identity"
    with pytest.raises(ValueError, match="not registered"):
        L.get_feature_net("arcface_missing")
    with pytest.raises(ValueError, match="unknown layer"):
        L.vgg16_feature_net(("conv9_9",))


def _scipy_frechet(fa, fb):
    """The textbook FID formula with scipy's general matrix square root (the reference)."""
    import warnings

    from scipy import linalg

    mu_a, mu_b = fa.mean(0), fb.mean(0)
    ca, cb = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    with warnings.catch_warnings():  # N < D in the VGG test: singular covariances are expected
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(ca @ cb).real
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(ca + cb - 2 * covmean))


def test_frechet_distance_matches_scipy_reference():
    rng = np.random.default_rng(0)
    fa = rng.standard_normal((200, 12)) @ rng.standard_normal((12, 12))
    fb = 0.5 + rng.standard_normal((150, 12)) @ rng.standard_normal((12, 12))
    ours = metrics.frechet_distance(*metrics.gaussian_stats(fa), *metrics.gaussian_stats(fb))
    np.testing.assert_allclose(ours, _scipy_frechet(fa, fb), rtol=1e-8)
    same = metrics.frechet_distance(*metrics.gaussian_stats(fa), *metrics.gaussian_stats(fa))
    assert abs(same) < 1e-8 * ours


def test_fd_vgg16_on_real_photos():
    from _losses_fixtures import noisy, photos

    # 3 photos x 2 crops/flips = 6 distinct 48x48 images per set (a set needs N >= 2).
    base = photos(64)
    clean = np.concatenate([base[:, :48, :48], base[:, 16:, 16:, :][:, :, ::-1]])
    light, heavy = noisy(clean, 0.05, seed=1), noisy(clean, 0.5, seed=2)
    params = L.load_lpips_params("vgg")
    feats = metrics.vgg16_pooled_features(clean, params=params, batch_size=4)  # 4 + padded 2
    assert feats.shape == (6, 512)
    np.testing.assert_allclose(
        feats,
        metrics.vgg16_pooled_features(clean, params=params, batch_size=6),
        rtol=1e-5,
        atol=1e-6,
    )
    fd_light = L.fd_vgg16(clean, light, params=params, batch_size=6)
    fd_heavy = L.fd_vgg16(clean, heavy, params=params, batch_size=6)
    reference = _scipy_frechet(
        feats, metrics.vgg16_pooled_features(heavy, params=params, batch_size=6)
    )
    np.testing.assert_allclose(fd_heavy, reference, rtol=1e-4)
    assert abs(L.fd_vgg16(clean, clean, params=params, batch_size=6)) < 1e-6 * fd_heavy
    assert 0 < fd_light < fd_heavy
    # one channel == the same channel repeated to three
    gray = clean[..., :1]
    np.testing.assert_allclose(
        L.fd_vgg16(gray, heavy, params=params, batch_size=6),
        L.fd_vgg16(np.repeat(gray, 3, axis=-1), heavy, params=params, batch_size=6),
        rtol=1e-5,
    )


@pytest.mark.parametrize(
    "shape, message",
    [
        ((4, 16, 16, 3), "at least 32 px"),
        ((4, 32, 32, 2), "1 or 3 channels"),
        ((1, 32, 32, 3), "at least 2"),
    ],
)
def test_fd_vgg16_rejects_bad_input(shape, message):
    with pytest.raises(ValueError, match=message):
        L.fd_vgg16(np.zeros(shape, np.float32), np.zeros((4, 32, 32, 3), np.float32))
