"""Inversion engine + methods on a tiny random StyleGAN2 (res 16, channels 16/16/8, w_dim 16).

Compile count is the cost here (XLA:CPU compiles each (method, cfg, strategy, mesh, shape) once
per init/run/result), so runs are module-scoped fixtures shared by the checks: a lone image and
a batch of 8 padded to 8 devices hit the same compiled program.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ganinv_jax import inversion as inv
from ganinv_jax.inversion import base, clone, engine, gmm, latent_opt, pti
from ganinv_jax.models import stylegan2 as sg2

IDS = np.array([3, 10, 11, 42, 7, 0, 100, 5])
RTOL, ATOL = 2e-4, 2e-5


@pytest.fixture(scope="module")
def setup():
    cfg = sg2.StyleGAN2Config(
        resolution=16, channels=(16, 16, 8), z_dim=16, w_dim=16, mapping_layers=2, img_channels=3
    )
    gv = sg2.Generator(cfg).init(jax.random.key(0), jnp.zeros((1, 16)))
    dv = sg2.Discriminator(cfg).init(jax.random.key(1), jnp.zeros((1, 16, 16, 3)))
    fr = base.make_frozen(cfg, gv, d_vars=dv, lpips=None, w_stats_samples=512)
    ws = base.random_ws(fr, jax.random.key(7), 8)
    imgs = base.synthesize(fr, ws) + 0.3 * jax.random.normal(jax.random.key(8), (8, 16, 16, 3))
    # images 0 and 1 are exactly G(mean w): methods starting at mean w reproduce them at step 1.
    exact = base.synthesize(fr, jnp.broadcast_to(base.mean_latent(fr), (2,) + ws.shape[1:]))
    imgs = imgs.at[:2].set(exact)
    return fr, np.asarray(imgs)


def _run(method, fr, imgs, ids, cfg, steps, **kw):
    kw.setdefault("strategy", "map")
    kw.setdefault("steps_per_call", 2)
    return inv.invert_batch(method, fr, imgs, ids, None, cfg, seed=0, steps=steps, **kw)


def _assert_same(a, b, rows_a=slice(None), rows_b=slice(None), keys=("latent", "recon")):
    for k in keys:
        np.testing.assert_allclose(a[k][rows_a], b[k][rows_b], rtol=RTOL, atol=ATOL, err_msg=k)
    np.testing.assert_array_equal(a["iterations"][rows_a], b["iterations"][rows_b])
    np.testing.assert_array_equal(a["converged"][rows_a], b["converged"][rows_b])


# ----------------------------------------------------------------------------- latent_opt matrix


def _lo_cfg():
    c = latent_opt.default_config()
    c.num_steps = 4
    c.perceptual = "pooled_l2"
    c.optimize_noise = True  # exercises the noise path and per-image keys (noise init)
    c.initial_lr = 0.05
    return c


@pytest.fixture(scope="module")
def lo_runs(setup):
    fr, imgs = setup
    c = _lo_cfg()
    perm = np.array([5, 2, 7, 0, 3, 6, 1, 4])
    all8, one = jax.devices(), jax.devices()[:1]
    return dict(
        ref=_run(latent_opt.METHOD, fr, imgs, IDS, c, 4, devices=all8),
        # 0 steps: the start state through the same compiled init/result programs (no compile)
        start=_run(latent_opt.METHOD, fr, imgs, IDS, c, 0, devices=all8),
        alone=_run(latent_opt.METHOD, fr, imgs[3:4], IDS[3:4], c, 4, devices=all8),
        perm=_run(latent_opt.METHOD, fr, imgs[perm], IDS[perm], c, 4, devices=all8),
        perm_idx=perm,
        vmap=_run(latent_opt.METHOD, fr, imgs, IDS, c, 4, devices=one, strategy="vmap"),
        chunked=_run(
            latent_opt.METHOD, fr, imgs, IDS, c, 4, devices=one, strategy="chunked", chunk_size=3
        ),
    )


def test_latent_opt_moves_and_counts(lo_runs, setup):
    ref = lo_runs["ref"]
    assert ref["latent"].shape == (8, 6, 16) and ref["recon"].shape == (8, 16, 16, 3)
    np.testing.assert_array_equal(ref["iterations"], 4)
    assert not ref["failed"].any()
    assert set(ref["noise"]) == set(sg2.noise_layer_names(setup[0].g_cfg))
    # optimization changed the latents away from the (shared) mean-w start
    assert np.abs(ref["latent"] - np.asarray(base.mean_latent(setup[0]))).max() > 1e-4
    # renormalized noise: zero mean, unit variance per map
    for v in ref["noise"].values():
        np.testing.assert_allclose(v.reshape(8, -1).std(1), 1.0, rtol=1e-3)


def test_latent_opt_lowers_every_images_mse(lo_runs, setup):
    """4 steps lower the reconstruction MSE of every image below its start (mean w + the
    per-image initial noise), recomputed here from the returned reconstructions; images 0, 1
    are exactly G(mean w) (MSE 0 at the start) and must stay reconstructed."""
    _, imgs = setup
    ref, start = lo_runs["ref"], lo_runs["start"]
    np.testing.assert_array_equal(start["iterations"], 0)
    np.testing.assert_allclose(
        start["latent"],
        np.broadcast_to(np.asarray(base.mean_latent(setup[0])), start["latent"].shape),
        rtol=0,
        atol=1e-6,
    )
    mse = lambda recon: np.mean(np.square(recon - imgs).reshape(8, -1), axis=1)
    mse0, mse4 = mse(start["recon"]), mse(ref["recon"])
    print("\nlatent_opt MSE start", mse0, "after 4 steps", mse4)
    # (Adam's normalized steps and the w-noise ramp nudge them off the exact point: ~0.004)
    assert np.all(mse0[:2] < 1e-10) and np.all(mse4[:2] < 0.02), (mse0, mse4)
    assert np.all(mse0[2:] > 0.2), mse0  # the noisy targets: far at the start
    # every other image clearly closer (measured: 0.41..0.72 of its start MSE)
    assert np.all(mse4[2:] < 0.9 * mse0[2:]), mse4 / mse0


def test_alone_equals_in_batch(lo_runs):
    _assert_same(lo_runs["alone"], lo_runs["ref"], slice(0, 1), slice(3, 4))


def test_result_follows_image_id_not_position(lo_runs):
    perm = lo_runs["perm_idx"]
    _assert_same(lo_runs["perm"], lo_runs["ref"], slice(None), perm)


@pytest.mark.parametrize("strategy", ["vmap", "chunked"])
def test_one_device_and_strategies_agree_with_eight_devices_map(lo_runs, strategy):
    # vmap / chunked (chunks of 3: a remainder chunk) on ONE device, batch 8 in one local shard,
    # against lax.map on EIGHT devices (one image per device)
    _assert_same(lo_runs[strategy], lo_runs["ref"])


def test_different_ids_give_different_results(lo_runs, setup):
    # same image under two ids -> different noise init -> different result (keys do matter)
    fr, imgs = setup
    out = _run(
        latent_opt.METHOD,
        fr,
        np.stack([imgs[3]] * 8),
        np.arange(8),
        _lo_cfg(),
        4,
        devices=jax.devices(),
    )
    assert np.abs(out["recon"][0] - out["recon"][1]).max() > 1e-4


# ------------------------------------------------------------------------- PTI: weights per image


def _pti_cfg(stop_mse=1e-9):
    c = pti.default_config()
    c.perceptual = "none"
    c.reg_weight = 0.5
    c.reg_lpips_weight = 0.0
    c.lr = 3e-3
    c.stop_mse = stop_mse
    return c


@pytest.fixture(scope="module")
def pti_runs(setup):
    fr, imgs = setup
    c = _pti_cfg()
    return dict(
        ref=_run(pti.METHOD, fr, imgs, IDS, c, 4),
        short=_run(pti.METHOD, fr, imgs, IDS, c, 1),
        # one device: the 8 per-image generators are vmapped together (grouped convs)
        vmap=_run(pti.METHOD, fr, imgs, IDS, c, 4, strategy="vmap", devices=jax.devices()[:1]),
        alone=_run(pti.METHOD, fr, imgs[5:6], IDS[5:6], c, 4),
    )


def test_pti_masks_freeze_converged_images_exactly(pti_runs):
    ref, short = pti_runs["ref"], pti_runs["short"]
    # images 0, 1 are G(pivot) -> MSE 0 < stop_mse at step 1 -> converged after one step
    np.testing.assert_array_equal(ref["converged"], [True, True] + [False] * 6)
    np.testing.assert_array_equal(ref["iterations"], [1, 1] + [4] * 6)
    # the converged images did not change at all after their first step (bitwise)
    for a, b in zip(
        jax.tree_util.tree_leaves(ref["tuned"]), jax.tree_util.tree_leaves(short["tuned"])
    ):
        np.testing.assert_array_equal(a[:2], b[:2])
        assert np.abs(a[2:] - b[2:]).max() > 0  # the others kept going
    np.testing.assert_array_equal(ref["recon"][:2], short["recon"][:2])
    # the per-call history: 2 calls of K=2 steps; the last entry is the final metrics; a
    # converged image's curve is flat after its stop, the others' MSE keeps falling
    np.testing.assert_array_equal(ref["history_steps"], [2, 4])
    assert ref["history"]["mse"].shape == (2, 8)
    np.testing.assert_array_equal(ref["history"]["mse"][-1], ref["metrics"]["mse"])
    np.testing.assert_array_equal(ref["history"]["mse"][0, :2], ref["history"]["mse"][1, :2])
    assert np.all(ref["history"]["mse"][1, 2:] < ref["history"]["mse"][0, 2:])


def test_pti_tunes_and_reduces_mse(pti_runs, setup):
    ref, short = pti_runs["ref"], pti_runs["short"]
    assert ref["tuned"] is not None
    assert max(np.abs(x).max() for x in jax.tree_util.tree_leaves(ref["tuned"])) > 0
    mse = lambda o: np.mean((o["recon"] - setup[1]) ** 2, axis=(1, 2, 3))
    assert np.all(mse(ref)[2:] < mse(short)[2:])


def test_pti_vmap_equals_map_and_alone(pti_runs):
    # Rows 0, 1 reproduce their image exactly: their data gradient is float noise, which Adam's
    # first step normalizes to +-lr, so they are compared bitwise only where the program is the
    # same (alone vs batch) and the non-degenerate rows 2.. across strategies.
    _assert_same(pti_runs["vmap"], pti_runs["ref"], slice(2, None), slice(2, None))
    _assert_same(pti_runs["alone"], pti_runs["ref"], slice(0, 1), slice(5, 6))


def test_nan_marks_failed_and_keeps_last_finite_state(setup):
    fr, imgs = setup
    bad = imgs.copy()
    bad[4] = np.nan
    out = _run(pti.METHOD, fr, bad, IDS, _pti_cfg(), 4)
    np.testing.assert_array_equal(out["failed"], [False] * 4 + [True] + [False] * 3)
    assert out["iterations"][4] == 0 and not out["converged"][4]
    for leaf in jax.tree_util.tree_leaves(out["tuned"]):
        np.testing.assert_array_equal(leaf[4], 0.0)  # the base G, untouched
    assert np.isfinite(out["recon"]).all()


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
    # grad_reg: after a step, the g_t the modules are fed is ∂L_rec/∂θ_t + reg_weight ∂L_R/∂θ_t
    # (L_R on the step's fresh random latents), each part differentiated on its own here
    fr, _ = setup
    st0, c = gmm_state
    c = c.copy_and_resolve_references()
    c.update(lr=0.0, update_mode="iterative", out_scale=0.5, grad_reg=True, reg_weight=3.0)
    theta0 = fr.g["params"]["synthesis"]
    st1 = jax.jit(lambda s: gmm.step(s, fr, c)[0])(dict(st0, theta=theta0))
    theta1, reg_key = st1["theta"], jax.random.fold_in(st1["key"], 1)
    g_rec = gmm.conv_grads(fr, theta1, st0["ws"], st0["image"], c)
    g_reg = jax.grad(lambda p: gmm._reg_loss(fr, p, reg_key, c))(theta1)
    for path in gmm.conv_paths(theta0):
        k = "/".join(path)
        want = g_rec[k] + 3.0 * gmm._get(g_reg, path)
        np.testing.assert_allclose(st1["g"][k], want, rtol=1e-4, atol=1e-7)
    # θ_1 moved, so the localization part is there: g differs from L_rec's alone
    diff = sum(float(jnp.sum(jnp.abs(st1["g"][k] - g_rec[k]))) for k in g_rec)
    assert diff > 1e-3 * sum(float(jnp.sum(jnp.abs(g))) for g in g_rec.values())
    c.update_mode = "once"
    with pytest.raises(ValueError, match="grad_reg needs update_mode='iterative'"):
        gmm._grad_reg_key(reg_key, c)


def test_step_size_rampdowns():
    # PTI's / Clone's lr_rampdown and GMM's out_rampdown: latent_opt's cosine ramp-down over the
    # last fraction of num_steps (full size before it, half way through it, ~0 at the end)
    assert base.tuning_lr(3e-3, 100, 0.0) == 3e-3  # off: the papers' constant lr
    lr = base.tuning_lr(1e-2, 100, 0.5)
    c = gmm.default_config()
    c.update(update_mode="iterative", num_steps=100, out_scale=1e-2, out_rampdown=0.5)
    for size in (lr, lambda t: gmm._out_scale(t, c)):
        np.testing.assert_allclose([float(size(t)) for t in (0, 50, 75)], [1e-2, 1e-2, 5e-3])
        assert 0 < float(size(99)) < 1e-4
    c.update_mode = "once"
    with pytest.raises(ValueError, match="out_rampdown needs update_mode='iterative'"):
        gmm._out_scale(0, c)


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


def test_auto_strategy_rule():
    # GEMM-form convs (the CPU default): vmap everywhere; native convs on CPU: lax.map (vmap
    # would make per-image kernels grouped convolutions)
    from ganinv_jax.ops import conv as conv_ops

    for m in (latent_opt.METHOD, pti.METHOD, clone.METHOD, gmm.METHOD):
        assert engine.auto_strategy(m, "cpu") == "vmap"
        assert engine.auto_strategy(m, "gpu") == "vmap"
        assert engine.auto_strategy(m, "tpu") == "vmap"
        with conv_ops.use_impl("native"):
            assert engine.auto_strategy(m, "cpu") == "map"
            assert engine.auto_strategy(m, "gpu") == "vmap"


# ----------------------------------------------------------------------------- LPIPS target cache


# PTI and GMM share latent_opt's cached-target code path (base.perceptual_to_image); their runs
# cost ~40 s of compile each on 2 cores, so the default run checks latent_opt only.
@pytest.mark.parametrize(
    "method",
    [
        latent_opt,
        pytest.param(pti, marks=pytest.mark.slow),
        pytest.param(gmm, marks=pytest.mark.slow),
    ],
)
def test_cached_lpips_target_gives_the_same_steps(setup, method):
    """`cache_target_features` (the target's LPIPS features kept in the state) changes cost, not
    results: two steps with real LPIPS weights match the uncached run, and the recorded LPIPS is
    the concatenated-batch module's value."""
    from ganinv_jax import losses

    fr0, imgs = setup
    fr = base.make_frozen(fr0.g_cfg, fr0.g, d_vars=fr0.d, lpips="vgg", w_stats_samples=512)
    image, latent = jnp.asarray(imgs[3]), base.mean_latent(fr)

    def two_steps(cache):
        c = method.default_config()
        c.cache_target_features = cache
        if method is pti:
            c.stop_lpips = -1.0
        if method is latent_opt:
            c.initial_noise_factor = 0.0  # step 1 then renders exactly G(latent)
        st = method.init(jax.random.key(0), image, fr, latent, c)
        if cache:
            assert st["perc_target"] is not None and len(st["perc_target"]) == 5
        else:
            assert st["perc_target"] is None
        st, m1 = method.step(st, fr, c)
        st, m2 = method.step(st, fr, c)
        return method.result(st, fr, c), m1, m2

    run = jax.jit(two_steps, static_argnums=0)
    (r_c, m1_c, m2_c), (r_u, m1_u, m2_u) = run(True), run(False)
    np.testing.assert_allclose(r_c["recon"], r_u["recon"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(m1_c["loss"], m1_u["loss"], rtol=1e-4)
    np.testing.assert_allclose(m2_c["loss"], m2_u["loss"], rtol=1e-4)
    start = base.synthesize(fr, latent[None])
    moved = float(jnp.max(jnp.abs(r_c["recon"] - start[0]))) > 1e-5
    assert moved or (
        method is latent_opt and float(jnp.max(jnp.abs(r_c["latent"] - latent))) > 1e-6
    )
    want = losses.lpips_apply(fr.lpips, start, image[None], net="vgg")[0]
    if method is not gmm:  # GMM's first step already sees θ0 - M(g), not G(w)
        np.testing.assert_allclose(m1_c["perceptual"], want, rtol=1e-4)


# ----------------------------------------------------------------------------- every method, CI


def _quick_cfg(method):
    """Each method's defaults at this tiny size: no early stop; the step sizes of the tests
    above (the paper lrs are for 1024-px generators and move a 16-px one too little in 6 steps)."""
    c = method.default_config()
    if method is latent_opt:
        c.perceptual, c.initial_lr, c.initial_noise_factor = "none", 0.05, 0.0
    elif method is pti:
        c.perceptual, c.lr, c.stop_mse, c.stop_lpips = "none", 3e-3, -1.0, -1.0
    elif method is clone:
        c.eps = -1.0
    else:
        c.perceptual = "none"
    return c


@pytest.mark.parametrize(
    "method", [latent_opt, pti, clone, gmm], ids=["latent_opt", "pti", "clone", "gmm"]
)
def test_every_method_lowers_the_reconstruction_loss(setup, method):
    """The default test run steps every method (Clone's G+D game and a whole GMM run included):
    6 steps on 3 noisy images, one device (vmap); each image's MSE after the last call is below
    its MSE after the first, and the run reports no failure."""
    fr, imgs = setup
    out = _run(
        method.METHOD,
        fr,
        imgs[2:5],
        IDS[2:5],
        _quick_cfg(method),
        6,
        strategy="vmap",
        devices=jax.devices()[:1],
    )
    mse = out["history"]["mse"]  # [calls, images], the method's own MSE
    assert mse.shape == (3, 3) and np.isfinite(mse).all() and not out["failed"].any()
    assert np.all(mse[-1] < mse[0]), mse
