"""Clone (paper 001) on the tiny StyleGAN2 of `_inversion_fixtures.py`: the engine run, the
local/global losses, the reals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ganinv_jax.inversion import base, clone

try:
    from tests import _inversion_fixtures as F
except ImportError:  # pytest's rootdir-relative import mode
    import _inversion_fixtures as F

IDS = F.IDS
_run, _assert_same = F.run, F.assert_same


@pytest.fixture(scope="module")
def setup():
    return F.tiny_setup()


# ----------------------------------------------------------------------------- Clone


def _clone_cfg():
    c = clone.default_config()
    c.r1_gamma = 1.0
    c.r1_interval = 2
    c.p = 0.5
    return c


@pytest.fixture(scope="module")
def clone_runs(setup):  # one engine compile of Clone (G + D + R1): ~1-3 min on 2 busy cores
    fr, imgs = setup
    c = _clone_cfg()
    return dict(
        ref=_run(clone.METHOD, fr, imgs, IDS, c, 4),
        alone=_run(clone.METHOD, fr, imgs[6:7], IDS[6:7], c, 4),
        cfg=c,
    )


@pytest.mark.slow
def test_clone_stops_at_eps_and_alone_equals_batch(clone_runs, setup):
    ref = clone_runs["ref"]
    # images 0, 1 = G(mean w): L_recon = 0 < eps = 1e-3 at step 1 (paper's stop rule)
    np.testing.assert_array_equal(ref["converged"], [True, True] + [False] * 6)
    np.testing.assert_array_equal(ref["iterations"], [1, 1] + [4] * 6)
    assert np.all(ref["metrics"]["recon"][2:] >= clone_runs["cfg"].eps)
    _assert_same(clone_runs["alone"], ref, slice(0, 1), slice(6, 7))
    # both G (mapping + synthesis) were updated
    delta = ref["tuned"]
    assert np.abs(delta["mapping"]["fc0"]["weight"][2:]).max() > 0
    assert np.abs(delta["synthesis"]["b16"]["conv1"]["weight"][2:]).max() > 0


def test_clone_local_indicator_has_probability_p():
    keys = jax.random.split(jax.random.key(0), 4000)
    for p in (0.0, 0.25, 1.0):
        frac = float(jnp.mean(jax.vmap(lambda k: clone.local_indicator(k, p))(keys)))
        assert abs(frac - p) < 0.03, (p, frac)


def test_clone_local_loss_is_recon_plus_lambda_adv(setup):
    fr, imgs = setup
    c = _clone_cfg()
    ws = base.mean_latent(fr)
    z = jax.random.normal(jax.random.key(3), (c.global_batch, 16))
    g, d = fr.g["params"], fr.d["params"]

    @jax.jit
    def losses(local, lam, global_weight=1.0):
        cc = dict(c)
        return clone.g_loss(
            g,
            d,
            fr,
            ws,
            jnp.asarray(imgs[3]),
            local,
            z,
            jax.random.key(4),
            _Cfg(cc, lam=lam, global_weight=global_weight),
        )

    on, aux = losses(True, 10.0)
    off, _ = losses(False, 10.0)
    on20, aux20 = losses(True, 20.0)
    # the global-loss ablation switch: weight 0 leaves exactly the local loss
    on_local_only, _ = losses(True, 10.0, 0.0)
    np.testing.assert_allclose(on_local_only, on - off, rtol=1e-4, atol=1e-5)
    x_star = base.synthesize(fr, ws[None])
    logit = base.discriminate(fr, jnp.concatenate([x_star, aux["fakes"]]))[0]
    recon = clone.pyramid.laplacian_pyramid_l1(jnp.asarray(imgs[3:4]), x_star)[0]
    adv = -jax.nn.softplus(logit)  # log(1 - D(G(w)))
    np.testing.assert_allclose(on - off, recon + 10.0 * adv, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(on20 - off, recon + 20.0 * adv, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(off, aux["g_global"], rtol=1e-6)


def test_clone_recon_loss_switch(setup):
    """L_recon: the paper's Laplacian-pyramid L1 by default, the MSE with recon_loss='mse'; an
    unknown name fails with one line that names the key."""
    imgs = jnp.asarray(setup[1])
    cc = clone.default_config()
    got = clone.recon_loss(imgs[2], imgs[3], cc)
    want = clone.pyramid.laplacian_pyramid_l1(imgs[2:3], imgs[3:4], cc.pyramid_levels)[0]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    got_mse = clone.recon_loss(imgs[2], imgs[3], _Cfg(cc, recon_loss="mse"))
    np.testing.assert_allclose(got_mse, np.mean((setup[1][2] - setup[1][3]) ** 2), rtol=1e-5)
    with pytest.raises(ValueError, match="recon_loss"):
        clone.recon_loss(imgs[2], imgs[3], _Cfg(cc, recon_loss="l1"))


def test_clone_tune_mapping_off_moves_only_the_synthesis(setup):
    """tune_mapping=False: the mapping's gradients are zeroed, and Adam (G's optimizer) then
    leaves it exactly where it was while the synthesis moves."""
    fr = setup[0]
    params = fr.g["params"]
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    kept = clone.tunable_grads_only(grads, fr.arch)
    tx = clone._txs(clone.default_config(), fr.arch)[0]
    up, _ = tx.update(kept, tx.init(params), params)
    for leaf in jax.tree_util.tree_leaves(up["mapping"]):
        np.testing.assert_array_equal(leaf, 0.0)
    assert all(np.abs(x).min() > 0 for x in jax.tree_util.tree_leaves(up["synthesis"]))


def test_clone_without_gan_terms_steps_on_the_reconstruction_alone(setup):
    """λ = 0 and L_global weight 0: the step skips D (it stays exactly as it was) and G takes
    exactly Adam's step on ∂L_recon/∂G."""
    fr, imgs = setup
    c = _Cfg(clone.default_config(), lam=0.0, global_weight=0.0, recon_loss="mse", p=1.0)
    assert not clone.plays_the_gan(c) and clone.plays_the_gan(clone.default_config())
    image, ws = jnp.asarray(imgs[3]), base.mean_latent(fr)
    state = clone.init(jax.random.key(0), image, fr, ws, c)
    new, metrics = jax.jit(lambda s: clone.step(s, fr, c))(state)
    for a, b in zip(jax.tree_util.tree_leaves(new["d"]), jax.tree_util.tree_leaves(state["d"])):
        np.testing.assert_array_equal(a, b)
    recon = lambda g: clone.recon_loss(image, base.synthesize(fr, ws[None], g)[0], c)  # noqa: E731
    loss, grads = jax.jit(jax.value_and_grad(recon))(state["g"])
    tx = clone._txs(c, fr.arch)[0]
    want = clone.optax.apply_updates(state["g"], tx.update(grads, tx.init(state["g"]))[0])
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(new["g"]), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


class _Cfg(dict):
    """Attribute-access view of a config with overrides (jit traces it as a constant)."""

    def __init__(self, d, **over):
        super().__init__(d, **over)

    __getattr__ = dict.__getitem__


def test_clone_fallback_reals_are_samples_of_frozen_g(setup):
    fr = setup[0]
    r = jax.jit(lambda k: clone.sample_reals(fr, k, 3))(jax.random.key(0))
    assert r.shape == (3, 16, 16, 3) and np.isfinite(np.asarray(r)).all()
    fr2 = fr.replace(reals=jnp.asarray(setup[1]))
    r2 = clone.sample_reals(fr2, jax.random.key(0), 3)
    assert any(np.allclose(r2[0], x) for x in setup[1])


def test_clone_lowers_the_reconstruction_loss(setup):
    F.assert_lowers_the_reconstruction_loss(setup, clone)
