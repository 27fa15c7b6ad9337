"""Inversion engine on a tiny random StyleGAN2: latent_opt's device/strategy matrix, PTI's
per-image weights, strategies and the LPIPS target cache (fixtures: `_inversion_fixtures.py`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ganinv_jax.inversion import base, clone, engine, gmm, latent_opt, pti
from ganinv_jax.models import stylegan2 as sg2

try:
    from tests import _inversion_fixtures as F
except ImportError:  # pytest's rootdir-relative import mode
    import _inversion_fixtures as F

IDS = F.IDS
_run, _assert_same = F.run, F.assert_same
RTOL, ATOL = F.RTOL, F.ATOL


@pytest.fixture(scope="module")
def setup():
    return F.tiny_setup()


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


def test_pti_drift_is_the_returned_weights_relative_change(pti_runs, setup):
    """`state_metrics` (drift) is filled once per call from the state the call ended on: the
    last entry is ||tuned|| / ||base|| of the returned weights, converged images keep theirs."""
    ref, fr = pti_runs["ref"], setup[0]

    def sq(tree, per_image):  # sum of squares over all leaves (per image: over axes 1..)
        return sum(
            np.sum(np.square(np.asarray(x, np.float64)), axis=tuple(range(per_image, x.ndim)))
            for x in jax.tree_util.tree_leaves(tree)
        )

    want = np.sqrt(sq(ref["tuned"], 1) / sq(fr.arch.tunable(fr.g["params"]), 0))
    np.testing.assert_allclose(ref["metrics"]["drift"], want, rtol=1e-4)
    assert np.all(want > 0)
    hist = ref["history"]["drift"]
    np.testing.assert_array_equal(hist[-1], ref["metrics"]["drift"])
    np.testing.assert_array_equal(hist[0, :2], hist[1, :2])  # converged at step 1: unchanged
    assert np.all(hist[1, 2:] > hist[0, 2:])  # still tuning: the weights moved further


def test_pti_vmap_equals_map_and_alone(pti_runs):
    # Rows 0, 1 reproduce their image exactly: their data gradient is float noise, which Adam's
    # first step normalizes to +-lr, so they are compared bitwise only where the program is the
    # same (alone vs batch) and the non-degenerate rows 2.. across strategies.
    _assert_same(pti_runs["vmap"], pti_runs["ref"], slice(2, None), slice(2, None))
    _assert_same(pti_runs["alone"], pti_runs["ref"], slice(0, 1), slice(5, 6))


def test_bf16_gemm_operands_tune_close_to_float32(setup, pti_runs):
    """make_frozen(g_dtype='bfloat16'): G's conv GEMMs take bf16-rounded operands (float32
    accumulation); the images stay within bf16 rounding of float32 G's, and PTI through the
    engine (vmap over per-image weights) still tunes every image."""
    fr, imgs = setup
    fr16 = base.make_frozen(
        fr.g_cfg, fr.g, d_vars=fr.d, lpips=None, w_stats_samples=512, g_dtype="bfloat16"
    )
    ws = base.random_ws(fr, jax.random.key(3), 4)
    x32, x16 = np.asarray(base.synthesize(fr, ws)), np.asarray(base.synthesize(fr16, ws))
    assert x16.dtype == np.float32
    err = np.abs(x16 - x32).max() / np.abs(x32).max()
    assert 1e-5 < err < 2e-2, err  # rounded (not float32), but only by bf16's 8 bits
    c = _pti_cfg()
    out = _run(pti.METHOD, fr16, imgs, IDS, c, 4, strategy="vmap", devices=jax.devices()[:1])
    mse = lambda o: np.mean((o["recon"] - imgs) ** 2, axis=(1, 2, 3))  # noqa: E731
    assert np.all(mse(out)[2:] < mse(pti_runs["short"])[2:])  # below float32's 1-step MSE
    np.testing.assert_allclose(mse(out)[2:], mse(pti_runs["ref"])[2:], rtol=0.05)
    with pytest.raises(ValueError, match="g_dtype='float16'"):
        base.make_frozen(fr.g_cfg, fr.g, lpips=None, w_stats_samples=16, g_dtype="float16")


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


def test_pti_step_held_by_commit_or_nan_loss_changes_nothing(setup):
    """PTI gates its own update (`commits_itself`): commit=False, or a NaN loss with
    commit=True, returns every state leaf unchanged; commit=True moves the weights."""
    fr, imgs = setup
    c = _pti_cfg()
    st = pti.init(jax.random.key(0), jnp.asarray(imgs[3]), fr, base.mean_latent(fr), c)
    step = jax.jit(lambda s, commit: pti.step(s, fr, c, commit))
    taken = step(st, True)[0]
    nan_st = dict(st, image=st["image"].at[0, 0, 0].set(jnp.nan))
    raw = lambda t: [  # noqa: E731  (PRNG keys compared by their bits)
        jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
        for x in jax.tree_util.tree_leaves(t)
    ]
    for held, ref in ((step(st, False)[0], st), (step(nan_st, True)[0], nan_st)):
        for x, y in zip(raw(held), raw(ref)):
            np.testing.assert_array_equal(x, y)
    assert int(taken["t"]) == 1 and int(taken["opt"]["count"]) == 1
    assert (
        max(
            float(jnp.abs(a - b).max())
            for a, b in zip(
                jax.tree_util.tree_leaves(taken["params"]), jax.tree_util.tree_leaves(st["params"])
            )
        )
        > 0
    )


_NO_BUDGET = dict(max_drift=1e9, drift_probes=4)


def test_keep_best_returns_the_lowest_error_state(setup):
    """keep_best: a run whose steps make the reconstruction worse (PTI at lr 0.3: Adam's first
    step moves every weight by 0.3) returns its start, the pivot, exactly; a run that improves
    returns its last state. best_mse is the MSE of the returned recon, clipped to [-1, 1].
    (Two engine compiles: the history of the guarded run itself shows that its steps made the
    reconstruction worse.)"""
    fr, imgs = setup
    x, ids = imgs[2:5], IDS[2:5]
    mse = lambda o: np.mean((np.clip(o["recon"], -1, 1) - x) ** 2, axis=(1, 2, 3))
    one = dict(devices=jax.devices()[:1])
    bad = _pti_cfg()
    bad.lr = 0.3
    guarded = _run(pti.METHOD, fr, x, ids, bad, 4, keep_best=True, **one)
    pivot = np.asarray(
        base.synthesize(fr, jnp.broadcast_to(base.mean_latent(fr), (3, *fr.arch.latent_shape)))
    )
    pivot_mse = np.mean((np.clip(pivot, -1, 1) - x) ** 2, axis=(1, 2, 3))
    # the steps did make it worse: PTI's own MSE (unclipped) after each call, above the pivot's
    assert np.all(guarded["history"]["mse"] > np.mean((pivot - x) ** 2, axis=(1, 2, 3))), guarded[
        "history"
    ]["mse"]
    np.testing.assert_array_equal(guarded["iterations"], [4, 4, 4])  # the steps still ran
    np.testing.assert_array_equal(guarded["best_step"], [0, 0, 0])
    np.testing.assert_allclose(guarded["recon"], pivot, rtol=RTOL, atol=ATOL)
    for leaf in jax.tree_util.tree_leaves(guarded["tuned"]):
        np.testing.assert_array_equal(leaf, 0.0)
    np.testing.assert_allclose(guarded["best_mse"], mse(guarded), rtol=1e-5)

    # with a drift budget that never binds (and the compile the drift-budget test reuses)
    good = _run(pti.METHOD, fr, x, ids, _pti_cfg(), 4, keep_best=True, **_NO_BUDGET, **one)
    np.testing.assert_array_equal(good["best_step"], [4, 4, 4])
    assert np.all(good["best_mse"] < pivot_mse)
    np.testing.assert_allclose(good["best_mse"], mse(good), rtol=1e-5)


def test_drift_budget_keeps_the_best_state_within_it(setup):
    """max_drift: the kept state is the lowest-error one whose probe drift (frozen vs tuned G on
    the engine's fixed probe latents, MSE on [0, 1]) is within the budget. One compile: the
    budget is a runtime input. best_drift is recomputed here from the returned weight delta."""
    fr, imgs = setup
    x, ids = imgs[2:5], IDS[2:5]
    one = dict(devices=jax.devices()[:1], keep_best=True, drift_probes=_NO_BUDGET["drift_probes"])
    ws = base.random_ws(fr, jax.random.key(engine.DRIFT_PROBE_SEED), 4)
    orig = np.asarray(base.synthesize(fr, ws))
    theta0 = fr.g["params"]["synthesis"]

    def drift(out, i):
        p = jax.tree_util.tree_map(lambda d, b: b + d[i], out["tuned"], theta0)
        return np.mean((np.asarray(base.synthesize(fr, ws, p)) - orig) ** 2) / 4.0

    free = _run(pti.METHOD, fr, x, ids, _pti_cfg(), 4, max_drift=_NO_BUDGET["max_drift"], **one)
    np.testing.assert_array_equal(free["best_step"], [4, 4, 4])  # an improving run: its end
    free_drift = np.array([drift(free, i) for i in range(3)])
    assert np.all(free_drift > 0)
    np.testing.assert_allclose(free["best_drift"], free_drift, rtol=1e-4)

    budget = 0.5 * float(free_drift.min())  # every image's end is over it
    capped = _run(pti.METHOD, fr, x, ids, _pti_cfg(), 4, max_drift=budget, **one)
    np.testing.assert_array_equal(capped["iterations"], [4, 4, 4])  # the steps still ran
    assert set(capped["best_step"].tolist()) <= {0, 2}, capped["best_step"]
    capped_drift = np.array([drift(capped, i) for i in range(3)])
    assert np.all(capped_drift <= budget * (1 + 1e-4)), (capped_drift, budget)
    np.testing.assert_allclose(capped["best_drift"], capped_drift, rtol=1e-4, atol=1e-9)
    mse = np.mean((np.clip(capped["recon"], -1, 1) - x) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(capped["best_mse"], mse, rtol=1e-5)
    assert np.all(capped["best_mse"] >= free["best_mse"])
    with pytest.raises(ValueError, match="needs keep_best"):
        _run(pti.METHOD, fr, x, ids, _pti_cfg(), 4, max_drift=0.1)


def test_auto_strategy_rule():
    # GEMM-form convs (the CPU default): vmap everywhere; native convs on CPU: lax.map (vmap
    # would make per-image kernels grouped convolutions)
    from ganinv_jax.ops import conv as conv_ops

    for m in (latent_opt.METHOD, pti.METHOD, clone.METHOD, gmm.METHOD):
        with conv_ops.use_impl("auto"):  # (the test run's own form is native: conftest.py)
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


@pytest.mark.parametrize("method", [latent_opt, pti], ids=["latent_opt", "pti"])
def test_every_method_lowers_the_reconstruction_loss(setup, method):
    # Clone's and GMM's runs: tests/test_inversion_{clone,gmm}.py (one compile-heavy file each)
    F.assert_lowers_the_reconstruction_loss(setup, method)
