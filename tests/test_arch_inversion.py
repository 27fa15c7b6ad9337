"""Inversion beyond StyleGAN: every method through `inversion.invert_batch` on tiny random PGGAN
and BigGAN generators (`inversion.arch`), one device, vmap.

Compiles dominate (one init/run/result set per method, config and architecture), so each run is a
module-scoped fixture shared by the checks, with few, tiny steps. StyleGAN2's results through the
same interface are covered (unchanged, bit for bit) by tests/test_inversion.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict

from ganinv_jax import inversion as inv
from ganinv_jax.inversion import arch as arch_lib
from ganinv_jax.inversion import base, clone, gmm, latent_opt, pti
from ganinv_jax.models import biggan, pggan

IDS = np.array([4, 9, 2])
PG_CFG = pggan.PGGANConfig(channels=(8, 8), z_dim=8, img_channels=3)  # 8x8
BG_CFG = biggan.BigGANConfig(
    output_dim=8,
    z_dim=8,
    class_embed_dim=8,
    channel_width=2,
    num_classes=5,
    layers=((True, 16, 8), (False, 8, 4), (False, 4, 2), (True, 2, 1)),
    attention_layer_position=-1,  # none (the parity tests cover it; compile time here)
    n_stats=3,
)


def _targets(fr, seed: int, n: int = 3):
    """n images of the frozen G from random latents of its prior."""
    lat = jax.jit(lambda fr, k: base.random_ws(fr, k, n))(fr, jax.random.key(seed))
    imgs = jax.jit(base.synthesize)(fr, lat)
    return np.asarray(imgs), np.asarray(lat)


def _random_biggan(cfg, seed: int):
    """Random BigGAN variables without `init_variables`' power iterations (their compile is
    most of a BigGAN test's time): N(0, 1) weights, spectral-norm (u, v) the exact top singular
    vectors (numpy SVD), BN statistics 0 / 1, BN scale 1, biases 0, attention gamma 0.5."""
    shapes = flatten_dict(
        jax.eval_shape(functools.partial(biggan.init_variables, cfg), jax.random.key(0))
    )
    rng = np.random.default_rng(seed)
    out = {}
    for path, sd in shapes.items():
        name = path[-1]
        if path[0] == "params":
            if name == "weight" and len(sd.shape) >= 2:
                out[path] = rng.normal(size=sd.shape).astype("f4")
            elif name == "weight":  # the tail BN's scale
                out[path] = np.ones(sd.shape, "f4")
            else:
                out[path] = np.full(sd.shape, 0.5 if name == "gamma" else 0.0, "f4")
        elif name in ("running_means", "running_vars"):
            out[path] = np.full(sd.shape, 0.0 if name == "running_means" else 1.0, "f4")
    for path, sd in shapes.items():
        if path[-1] == "sn_u":
            w = out[("params", *path[1:-1], "weight")]
            w_mat = biggan.conv_weight_matrix(w) if w.ndim == 4 else w.T
            u, _, vt = np.linalg.svd(np.asarray(w_mat, np.float64))
            out[path] = u[:, 0].astype("f4")
            out[path[:-1] + ("sn_v",)] = vt[0].astype("f4")
    assert set(out) == set(shapes)
    return jax.tree.map(jnp.asarray, unflatten_dict(out))


@pytest.fixture(scope="module")
def pg():
    g = jax.jit(functools.partial(pggan.init_variables, PG_CFG, "G_ema"))(jax.random.key(0))
    d = jax.jit(functools.partial(pggan.init_variables, PG_CFG, "D"))(jax.random.key(1))
    fr = base.make_frozen(PG_CFG, g, d_vars=d, lpips=None, w_stats_samples=256)
    return fr, _targets(fr, 7)[0]


@pytest.fixture(scope="module")
def bg():
    g = _random_biggan(BG_CFG, 2)
    arch = inv.arch_for(BG_CFG, truncation=0.5)
    fr = base.make_frozen(BG_CFG, g, lpips=None, w_stats_samples=256, arch=arch)
    return fr, *_targets(fr, 11)


def _cfg(method, **over):
    c = method.default_config()
    if "perceptual" in c:
        c.perceptual = "pooled_l2"
    c.update(over)
    return c


def _run(method, fr, imgs, cfg, steps=4, init=None):
    return inv.invert_batch(
        method.METHOD,
        fr,
        imgs,
        IDS[: len(imgs)],
        init,
        cfg,
        seed=0,
        steps=steps,
        steps_per_call=2,
        strategy="vmap",
        devices=jax.devices()[:1],
        compiler_options={"xla_backend_optimization_level": 0},
    )


def _falls(out):
    mse = out["history"]["mse"]  # [calls, images]
    assert np.isfinite(mse).all() and not out["failed"].any(), mse
    assert np.all(mse[-1] < mse[0]), mse


# ----------------------------------------------------------------------------- the interface


def test_arch_dispatch_and_latents(pg, bg):
    fr_pg, fr_bg = pg[0], bg[0]
    assert isinstance(fr_pg.arch, arch_lib.PGGANArch) and fr_pg.arch.latent_shape == (8,)
    assert fr_pg.arch.gan_loss == "wgangp"  # the zoo's default; the job reads the checkpoint's
    assert fr_bg.arch.latent_shape == (8 + 5,) and fr_bg.arch.truncation == 0.5
    # PGGAN's start: the prior's mean z = 0; its spread sqrt(E|z|^2) ~ sqrt(z_dim)
    np.testing.assert_array_equal(np.asarray(base.mean_latent(fr_pg)), np.zeros(8))
    assert abs(float(fr_pg.w_std) - np.sqrt(8)) < 0.3
    # BigGAN's start: z 0 and the uniform class vector; class_index one-hot
    m = np.asarray(base.mean_latent(fr_bg))
    np.testing.assert_allclose(m, np.r_[np.zeros(8), np.full(5, 0.2)], atol=1e-7)
    given = fr_bg.replace(arch=inv.arch_for(BG_CFG, truncation=0.5, class_index=3))
    np.testing.assert_array_equal(np.asarray(base.mean_latent(given))[8:], np.eye(5)[3])
    # random latents: BigGAN's are truncation * truncnorm(-2, 2) + one-hot classes
    lat = np.asarray(base.random_ws(fr_bg, jax.random.key(0), 64))
    assert np.abs(lat[:, :8]).max() <= 1.0 and set(lat[:, 8:].sum(1)) == {1.0}
    with pytest.raises(ValueError, match=r"\[13\]"):
        fr_bg.arch.check_latent(np.zeros(8))
    with pytest.raises(ValueError, match="truncation"):
        inv.arch_for(BG_CFG, truncation=1.5)
    with pytest.raises(ValueError, match="class_mode"):
        inv.arch_for(BG_CFG, class_mode="fixed")
    with pytest.raises(ValueError, match="optimize_noise"):
        fr_pg.arch.noise_shapes()
    # tuning methods tune every G param outside StyleGAN2
    assert fr_pg.arch.tunable(fr_pg.g["params"]) is fr_pg.g["params"]
    # PGGAN's own D; BigGAN has none (Clone refuses with one line)
    assert base.discriminate(fr_pg, jnp.zeros((4, 8, 8, 3))).shape == (4,)
    with pytest.raises(ValueError, match="clone needs the discriminator") as info:
        clone.init(jax.random.key(0), jnp.zeros((8, 8, 3)), fr_bg, m, clone.default_config())
    assert "\n" not in str(info.value) and "d_apply" in str(info.value)


def test_pggan_loss_from_the_checkpoint_config():
    zoo = {"lossCriterion": "DCGAN", "lambdaGP": 0.0, "epsilonD": 0.5, "logisticGradReal": 1}
    a = inv.arch_for(PG_CFG, **arch_lib.pggan_loss_options(zoo, PG_CFG))
    assert (a.gan_loss, a.lambda_gp, a.epsilon_d, a.logistic_grad_real) == ("dcgan", 0, 0.5, 1)
    assert arch_lib.pggan_loss_options(None, PG_CFG) == {"loss": "wgangp"}  # linear output


# ----------------------------------------------------------------------------- PGGAN


@pytest.fixture(scope="module")
def pg_runs(pg):
    fr, imgs = pg
    lo = _run(latent_opt, fr, imgs, _cfg(latent_opt, num_steps=4))
    return dict(
        lo=lo,
        # PTI around latent_opt's result, as the job's pivot recipe does
        pti=_run(pti, fr, imgs, _cfg(pti, num_steps=4, lr=3e-3), init=lo["latent"]),
    )


def test_pggan_latent_opt_and_pti_lower_the_loss(pg_runs):
    for name in ("lo", "pti"):
        _falls(pg_runs[name])
        assert pg_runs[name]["latent"].shape == (3, 8)
    # PTI keeps its pivot and tunes all of G
    np.testing.assert_array_equal(pg_runs["pti"]["latent"], pg_runs["lo"]["latent"])
    assert {"format", "b4_conv", "b8_torgb"} <= set(pg_runs["pti"]["tuned"])
    assert pg_runs["pti"]["metrics"]["drift"].min() > 0


def test_pggan_clone_runs_its_own_wgangp_game(pg):
    fr, imgs = pg
    out = _run(clone, fr, imgs, _cfg(clone, num_steps=4, p=0.5, pyramid_levels=3), steps=4)
    m = out["metrics"]
    assert not out["failed"].any() and (out["iterations"] == 4).all()
    assert np.isfinite(out["recon"]).all() and (m["drift"] > 0).all()
    assert (m["r1"] > 0).all()  # the WGAN-GP penalty of the zoo's loss (lambdaGP 10)
    assert out["tuned"]["format"]["weight"].shape == (3, 8, 16 * 8)  # all of G, per image


def test_pggan_gmm_runs(pg):
    fr, imgs = pg
    out = _run(gmm, fr, imgs, _cfg(gmm, num_steps=4), steps=4)
    assert not out["failed"].any() and np.isfinite(out["history"]["mse"]).all()
    # one module per conv input width: every conv of this G (toRGB too) reads 8 channels
    assert set(out["tuned"]) == {"c8"}
    assert (out["metrics"]["drift"] > 0).all()


# ----------------------------------------------------------------------------- BigGAN


@pytest.fixture(scope="module")
def bg_runs(bg):
    fr, imgs, _ = bg
    lo = _run(latent_opt, fr, imgs, _cfg(latent_opt, num_steps=4, initial_noise_factor=0.0))
    # reg_weight 0 (compile time): BigGAN's random latents are checked above, PTI's
    # regularizer on PGGAN
    pti_cfg = _cfg(pti, num_steps=4, lr=1e-3, reg_weight=0.0)
    return dict(lo=lo, pti=_run(pti, fr, imgs, pti_cfg, init=lo["latent"]))


def test_biggan_latent_opt_in_z_and_class(bg_runs):
    _falls(bg_runs["lo"])
    lat = bg_runs["lo"]["latent"]
    assert lat.shape == (3, 13)
    np.testing.assert_allclose(lat[:, 8:].sum(1), 1.0, rtol=1e-5)  # softmax of the logits
    assert np.abs(lat[:, 8:] - 0.2).max() > 1e-4  # the class moved off the uniform start


def test_biggan_class_modes_parametrize_latent_opt(bg):
    """What latent_opt optimizes (`to_free`) and renders (`from_free`): z + class logits, or z
    alone with the given class kept exactly; the exploration noise never touches the class."""
    latent = jnp.asarray(bg[2][0])  # z, one-hot class
    key = jax.random.key(0)
    opt = inv.arch_for(BG_CFG, truncation=0.5)
    free, fixed = opt.to_free(latent, "w+")
    assert set(free) == {"z", "logits"} and fixed == ()
    np.testing.assert_allclose(opt.from_free(free, fixed), latent, atol=1e-5)
    noisy = opt.perturb(free, key, 0.3)
    np.testing.assert_array_equal(noisy["logits"], free["logits"])
    assert np.abs(noisy["z"] - free["z"]).max() > 0
    given = inv.arch_for(BG_CFG, truncation=0.5, class_mode="given")
    z, c = given.to_free(latent, "w")  # the StyleGAN2 space means nothing here
    np.testing.assert_array_equal(z, latent[:8])
    moved = given.from_free(given.perturb(z, key, 0.3) + 1.0, c)
    np.testing.assert_array_equal(moved[8:], latent[8:])
    # the methods' start: latent_opt.init keeps the class as `fixed`, optimizes z only
    st = latent_opt.init(
        key, jnp.zeros((16, 16, 3)), bg[0].replace(arch=given), latent, _cfg(latent_opt)
    )
    assert st["params"]["w"].shape == (8,)
    np.testing.assert_array_equal(st["fixed"], latent[8:])


def test_biggan_pti_lowers_the_loss(bg_runs):
    _falls(bg_runs["pti"])
    np.testing.assert_array_equal(bg_runs["pti"]["latent"], bg_runs["lo"]["latent"])
    assert "embeddings" in bg_runs["pti"]["tuned"]  # all of G is tuned
