"""GMM (paper 002) on the tiny StyleGAN2 of `_inversion_fixtures.py`: module sharing, the
one-shot and iterative updates, the step-size ramps, the engine run."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ganinv_jax.inversion import base, gmm

try:
    from tests import _inversion_fixtures as F
except ImportError:  # pytest's rootdir-relative import mode
    import _inversion_fixtures as F

IDS = F.IDS
_run, _assert_same = F.run, F.assert_same


@pytest.fixture(scope="module")
def setup():
    return F.tiny_setup()


# ----------------------------------------------------------------------------- GMM


@pytest.fixture(scope="module")
def gmm_state(setup):
    """One jitted GMM init (init_scale 0: every module exactly the identity)."""
    fr = setup[0]
    c = gmm.default_config()
    c.perceptual = "none"
    c.init_scale = 0.0
    init = jax.jit(lambda k, img: gmm.init(k, img, fr, base.mean_latent(fr), c))
    return init(jax.random.key(0), jnp.asarray(setup[1][2])), c


def test_gmm_modules_shared_per_input_width(setup, gmm_state):
    fr = setup[0]
    state, c = gmm_state
    theta0 = fr.g["params"]["synthesis"]
    plan = gmm.sharing_plan(theta0)
    convs = gmm.conv_paths(theta0)
    # channels (16, 16, 8): widths 16 and 8 -> exactly two modules for 8 conv layers
    assert sorted(plan) == ["c16", "c8"]
    assert sorted(p for ps in plan.values() for p in ps) == convs and len(convs) == 8
    for key, paths in plan.items():
        assert all(gmm._get(theta0, p).shape[2] == int(key[1:]) for p in paths)
    assert set(state["phi"].fast) == {"c16", "c8"}
    assert len(state["phi"].fast["c16"]) == c.num_blocks
    assert state["phi"].fast["c16"][0]["w1"].shape == (16, 16 * c.hidden_mult)
    assert set(state["g"]) == {"/".join(p) for p in convs}


def test_pti_tune_conv_weights_moves_only_gmms_weights(setup):
    """pti.tune='conv_weights' (the ablation of GMM's parameter set): Adam's step on the conv
    kernels GMM modulates, exactly zero on every other synthesis parameter."""
    from ganinv_jax.inversion import pti

    theta0 = setup[0].arch.tunable(setup[0].g["params"])
    kept = base.conv_weights_only(jax.tree_util.tree_map(jnp.ones_like, theta0))
    flat = jax.tree_util.tree_flatten_with_path(kept)[0]
    convs = {tuple(p.key for p in path) for path, x in flat if np.all(np.asarray(x) == 1.0)}
    assert convs == set(gmm.conv_paths(theta0)) and len(convs) < len(flat)
    assert all(
        np.all(np.asarray(x) == 0.0) for path, x in flat if tuple(p.key for p in path) not in convs
    )
    c = pti.default_config()
    c.update(tune="conv_weights", perceptual="none", reg_weight=0.0, lr=1e-2)
    state = pti.init(
        jax.random.key(0), jnp.asarray(setup[1][3]), setup[0], base.mean_latent(setup[0]), c
    )
    new, _ = jax.jit(lambda s: pti.step(s, setup[0], c))(state)
    delta = base.tree_sub(new["params"], theta0)
    for path, x in jax.tree_util.tree_flatten_with_path(delta)[0]:
        moved = np.abs(np.asarray(x)).max() > 0
        assert moved == (tuple(p.key for p in path) in convs), path
    c.tune = "biases"
    with pytest.raises(ValueError, match="tune"):
        pti.step(state, setup[0], c)


def test_gmm_identity_start_and_sign(setup, gmm_state):
    fr = setup[0]
    st, c = gmm_state
    theta0 = fr.g["params"]["synthesis"]
    theta = gmm.tuned_params(st["phi"].fast, theta0, st["g"], c)
    for path in gmm.conv_paths(theta0):
        np.testing.assert_allclose(
            gmm._get(theta, path), gmm._get(theta0, path) - st["g"]["/".join(path)], rtol=1e-6
        )
    np.testing.assert_array_equal(theta["b4"]["const"], theta0["b4"]["const"])
    assert max(float(jnp.abs(v).max()) for v in st["g"].values()) > 0
    # grad_norm='rms' rescales around the module: an identity module still gives θ0 - g
    c_rms = c.copy_and_resolve_references()
    c_rms.grad_norm = "rms"
    theta_rms = gmm.tuned_params(st["phi"].fast, theta0, st["g"], c_rms)
    for path in gmm.conv_paths(theta0):
        np.testing.assert_allclose(
            gmm._get(theta_rms, path), gmm._get(theta, path), rtol=1e-5, atol=1e-7
        )
    c = c.copy_and_resolve_references()
    c.sign = 1.0
    theta_p = gmm.tuned_params(st["phi"].fast, theta0, st["g"], c)
    p0 = gmm.conv_paths(theta0)[0]
    np.testing.assert_allclose(
        gmm._get(theta_p, p0), gmm._get(theta0, p0) + st["g"]["/".join(p0)], rtol=1e-6
    )


def test_gmm_rms_weight_identity_is_a_normalized_gradient_step(setup, gmm_state):
    # grad_norm='rms_weight': an identity module moves each conv weight by out_scale * rms(θ0)
    # along -g / rms(g) (a step of relative size out_scale, whatever the gradient's scale)
    fr = setup[0]
    st, c = gmm_state
    c = c.copy_and_resolve_references()
    c.grad_norm, c.out_scale = "rms_weight", 0.01
    theta0 = fr.g["params"]["synthesis"]
    theta = gmm.tuned_params(st["phi"].fast, theta0, st["g"], c)
    rms = lambda t: np.sqrt(np.mean(np.square(np.asarray(t))))  # noqa: E731
    for path in gmm.conv_paths(theta0):
        w0, g = np.asarray(gmm._get(theta0, path)), np.asarray(st["g"]["/".join(path)])
        np.testing.assert_allclose(
            gmm._get(theta, path), w0 - 0.01 * rms(w0) * g / rms(g), rtol=1e-4, atol=1e-6
        )
        step = np.asarray(gmm._get(theta, path)) - w0
        np.testing.assert_allclose(rms(step) / rms(w0), 0.01, rtol=1e-3)


@pytest.mark.parametrize(
    "grad_norm,size,tx",
    [("none", 0.5, optax.sgd(0.5)), ("adam", 0.01, optax.adam(0.01))],
    ids=["gradient_descent", "adam"],
)
def test_gmm_iterative_with_frozen_identity_modules_is_its_optimizer(
    setup, gmm_state, grad_norm, size, tx
):
    # update_mode='iterative' keeps θ_t and applies M_φ to the gradient at θ_t (grad_norm='adam':
    # to Adam's direction of the g_t): with φ frozen at the identity (lr 0, init_scale 0) two
    # steps are exactly two steps of that optimizer (gradient descent / optax.adam, step
    # out_scale) on the conv weights, and `tuned` is θ_2 - θ0 (the run's weights, as PTI's)
    fr, imgs = setup
    st0, c = gmm_state  # the identity modules' state; iterative adds θ_t = θ0 (and moments)
    c = c.copy_and_resolve_references()
    c.lr, c.reg_weight, c.update_mode, c.grad_norm = 0.0, 0.0, "iterative", grad_norm
    c.out_scale = size
    theta0 = fr.g["params"]["synthesis"]
    st = dict(st0, theta=theta0)
    if grad_norm == "adam":
        st["moments"] = gmm._moments(None, st0["g"])
    image, latent = jnp.asarray(imgs[2]), base.mean_latent(fr)

    @jax.jit
    def two_steps(st):
        return gmm.step(gmm.step(st, fr, c)[0], fr, c)[0]

    @jax.jit
    def two_optimizer_steps(theta):
        paths = gmm.conv_paths(theta)
        convs = {"/".join(p): gmm._get(theta, p) for p in paths}
        opt = tx.init(convs)
        for _ in range(2):
            upd, opt = tx.update(gmm.conv_grads(fr, theta, latent, image, c), opt)
            convs = optax.apply_updates(convs, upd)
            for p in paths:
                theta = gmm._set(theta, p, convs["/".join(p)])
        return theta

    st2, want = two_steps(st), two_optimizer_steps(theta0)
    for path in gmm.conv_paths(theta0):
        np.testing.assert_allclose(gmm._get(st2["theta"], path), gmm._get(want, path), atol=1e-5)
    moved = [jnp.abs(gmm._get(want, p) - gmm._get(theta0, p)) for p in gmm.conv_paths(theta0)]
    assert float(sum(jnp.sum(m) for m in moved)) > 1e-3  # the two steps did move the weights
    if grad_norm == "adam":  # Adam's first steps move every weight by ~lr: far above the atol
        assert all(float(jnp.mean(m)) > 5e-3 for m in moved)
    out = gmm.result(st2, fr, c)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
        out["tuned"],
        base.tree_sub(want, theta0),
    )
    if grad_norm == "adam":  # Adam's moments need the iterative form
        c.update_mode = "once"
        with pytest.raises(ValueError, match="needs update_mode='iterative'"):
            gmm.init(jax.random.key(0), image, fr, latent, c)


def test_gmm_grad_reg_feeds_the_gradient_of_reconstruction_plus_localization(setup, gmm_state):
    # grad_reg: after a step, the g_t the modules are fed is ∂L_rec/∂θ_t + λ reg_weight ∂L_R/∂θ_t
    # (L_R on the step's fresh random latents), each part differentiated on its own here; with
    # reg_target (always exceeded here) the step first raises λ from 1 to e^reg_adapt_rate
    fr, _ = setup
    st0, c = gmm_state
    c = c.copy_and_resolve_references()
    c.update(lr=0.0, update_mode="iterative", out_scale=0.5, grad_reg=True, reg_weight=3.0)
    c.update(reg_target=1e-12, reg_adapt_rate=0.05)
    theta0 = fr.g["params"]["synthesis"]
    st0 = dict(st0, theta=theta0, log_reg_scale=jnp.zeros((), jnp.float32))
    st1, m1 = jax.jit(lambda s: gmm.step(s, fr, c))(st0)
    assert float(m1["reg_scale"]) == 1.0 and float(m1["reg_mse"]) > 0
    np.testing.assert_allclose(float(st1["log_reg_scale"]), 0.05, rtol=1e-6)
    theta1, reg_key = st1["theta"], jax.random.fold_in(st1["key"], 1)
    g_rec = gmm.conv_grads(fr, theta1, st0["ws"], st0["image"], c)
    g_reg = jax.grad(lambda p: gmm._reg_loss(fr, p, reg_key, c)[0])(theta1)
    for path in gmm.conv_paths(theta0):
        k = "/".join(path)
        want = g_rec[k] + np.exp(0.05) * 3.0 * gmm._get(g_reg, path)
        np.testing.assert_allclose(st1["g"][k], want, rtol=1e-4, atol=1e-7)
    # θ_1 moved, so the localization part is there: g differs from L_rec's alone
    diff = sum(float(jnp.sum(jnp.abs(st1["g"][k] - g_rec[k]))) for k in g_rec)
    assert diff > 1e-3 * sum(float(jnp.sum(jnp.abs(g))) for g in g_rec.values())
    c.update_mode = "once"
    with pytest.raises(ValueError, match="grad_reg needs update_mode='iterative'"):
        gmm._grad_reg_key(reg_key, c)


def test_gmm_reg_target_multiplier_is_bounded_dual_ascent():
    c = gmm.default_config()
    c.update(reg_target=0.01, reg_adapt_rate=0.1)
    up = lambda log, mse: float(gmm._reg_multiplier(jnp.float32(log), jnp.float32(mse), c))
    np.testing.assert_allclose(up(0.0, 0.015), 0.05, rtol=1e-5)  # 50% over: +0.1 * 0.5
    np.testing.assert_allclose(up(0.0, 1.0), 0.1, rtol=1e-5)  # far over: clipped to +rate
    np.testing.assert_allclose(up(1.0, 0.005), 0.95, rtol=1e-5)  # under: back toward λ = 1
    assert up(0.02, 0.0) == 0.0  # never below λ = 1 (the configured weight)
    top = np.log(gmm.REG_SCALE_MAX)
    np.testing.assert_allclose(up(top, 1.0), top, rtol=1e-6)  # capped


def test_step_size_ramps(setup):
    # PTI's / Clone's lr_rampdown and GMM's out_rampdown: latent_opt's cosine ramp-down over the
    # last fraction of num_steps (full size before it, half way through it, ~0 at the end);
    # lr_rampup / out_rampup: a linear ramp-up over the first fraction (0 at step 0, then ~t)
    assert base.tuning_lr(3e-3, 100, 0.0) == 3e-3  # off: the papers' constant lr
    lr = base.tuning_lr(1e-2, 100, 0.5)
    c = gmm.default_config()
    c.update(update_mode="iterative", num_steps=100, out_scale=1e-2, out_rampdown=0.5)
    for size in (lr, lambda t: gmm._out_scale(t, c)):
        np.testing.assert_allclose([float(size(t)) for t in (0, 50, 75)], [1e-2, 1e-2, 5e-3])
        assert 0 < float(size(99)) < 1e-4
    lr_up = base.tuning_lr(1e-2, 100, 0.0, rampup=0.1)
    c.update(out_rampdown=0.0, out_rampup=0.1)
    for size in (lr_up, lambda t: gmm._out_scale(t, c)):
        np.testing.assert_allclose([float(size(t)) for t in (0, 5, 10, 99)], [0, 5e-3, 1e-2, 1e-2])
    c.update_mode = "once"
    with pytest.raises(ValueError, match="out_rampup/out_rampdown need update_mode='iterative'"):
        gmm._out_scale(0, c)
    fr, imgs = setup  # ... and a run with it fails at init, before any work
    with pytest.raises(ValueError, match="out_rampup/out_rampdown need update_mode='iterative'"):
        gmm.init(jax.random.key(0), jnp.asarray(imgs[2]), fr, base.mean_latent(fr), c)


@pytest.fixture(scope="module")
def gmm_runs(setup):
    fr, imgs = setup
    c = gmm.default_config()
    c.perceptual = "pooled_l2"  # default Ranger lr 1e-3 (1e-2 diverges in RAdam's warm-up)
    return dict(
        ref=_run(gmm.METHOD, fr, imgs, IDS, c, 6),
        alone=_run(gmm.METHOD, fr, imgs[2:3], IDS[2:3], c, 6),
    )


@pytest.mark.slow
def test_gmm_runs_alone_equals_batch_and_only_phi_is_tuned(gmm_runs, setup):
    ref = gmm_runs["ref"]
    _assert_same(gmm_runs["alone"], ref, slice(0, 1), slice(2, 3))
    assert set(ref["tuned"]) == {"c16", "c8"}
    assert not ref["failed"].any()
    first = ref["metrics"]["loss"]
    assert np.isfinite(first).all()
    # the frozen base latent is unchanged (GMM tunes weights through phi only)
    np.testing.assert_allclose(
        ref["latent"], np.broadcast_to(np.asarray(base.mean_latent(setup[0])), ref["latent"].shape)
    )


def test_gmm_lowers_the_reconstruction_loss(setup):
    F.assert_lowers_the_reconstruction_loss(setup, gmm)
