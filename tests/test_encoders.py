"""Encoders (paper 000's adaptive encoder, paper 003's CRG) and their trainer, on a tiny random
StyleGAN2 (16x16, channels 16/16/8, z_dim 12 != w_dim 16, so z and w heads are told apart); paper
000's PGGAN and BigGAN variants (`other_gan` tests) on tiny random 16x16 PGGAN and BigGAN.

Compile count is the cost: the sharded/resume tests share the `:tiny` config's step (one
compilation per mesh, `encoder.jit_train_step`'s cache)."""

import dataclasses
import functools
import inspect
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs.encoder import get_config
from ganinv_jax import checkpointing, encoders, pretrained
from ganinv_jax import sharding as shd
from ganinv_jax.encoders import other_gans as other_gans_lib
from ganinv_jax.inversion import arch as arch_lib
from ganinv_jax.models import biggan, pggan
from ganinv_jax.models import stylegan2 as sg2
from ganinv_jax.training import encoder as tr
from ganinv_jax.training import state as state_lib

TINY_G = sg2.StyleGAN2Config(
    resolution=16, channels=(16, 16, 8), z_dim=12, w_dim=16, mapping_layers=2, img_channels=3
)


@pytest.fixture(scope="module")
def gan():
    init = jax.jit(lambda k: pretrained.init_variables(TINY_G, "G_ema", k))
    g = jax.tree_util.tree_map(lambda x: x, init(jax.random.key(0)))
    # a non-zero w_avg, so the output-bias initialization is visible
    g["buffers"]["mapping"]["w_avg"] = 0.1 * jnp.arange(16, dtype=jnp.float32)
    return pretrained.PretrainedGAN.from_trees(TINY_G, {"G_ema": g})


def _config(opts="tiny", **over):
    c = get_config(opts)
    c.update(eval_at_end=False, num_devices=1)
    c.update(over)
    return c


def _max_abs_diff(a, b):
    def diff(x, y):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        with np.errstate(invalid="ignore"):  # inf - inf: equal infs count as equal
            return float(np.max(np.where(x == y, 0.0, np.abs(x - y)), initial=0.0))

    return max(jax.tree.leaves(jax.tree.map(diff, a, b)))


# ----------------------------------------------------------------------------- architecture


def test_adaptive_widths_follow_table9_and_the_generator():
    for res, start, blocks in ((256, 64, 7), (512, 32, 8), (1024, 16, 9)):
        g = sg2.StyleGAN2Config(resolution=res, channels=sg2.channels_from_base(res))
        e = encoders.config_for_generator("adaptive", g)
        assert (e.in_channels, len(e.channels), e.num_ws) == (start, blocks, 2 * blocks)
        # Table 9: block 1 is CONV(C, C), CONV(C, 2C); doubling per block, capped at 512
        assert e.channels[:3] == (2 * start, 4 * start, min(512, 8 * start))
        assert e.channels[-1] == 512
    e = encoders.config_for_generator(
        "adaptive", sg2.StyleGAN2Config(256, sg2.channels_from_base(256))
    )
    shapes = jax.eval_shape(lambda k: encoders.init_params(e, k), jax.random.key(0))
    assert shapes["b0"]["conv1"]["conv"]["weight"].shape == (3, 3, 64, 64)
    assert shapes["b0"]["conv2"]["conv"]["weight"].shape == (3, 3, 64, 128)
    assert "conv2" not in shapes["b6"]  # the 4x4 block: one conv, then FC(1024, 512)
    assert shapes["b6"]["style2"]["weight"].shape == (1024, 512)


def test_output_shapes_match_the_generator(gan):
    x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3), minval=-1, maxval=1)
    enc = jax.jit(encoders.encode_with_features, static_argnums=(0, 3))
    w_avg = gan.G["buffers"]["mapping"]["w_avg"]
    ea = encoders.config_for_generator("adaptive", TINY_G, width=0.5)
    pa = jax.jit(encoders.init_params, static_argnums=0)(ea, jax.random.key(0), w_avg)
    assert all(
        np.array_equal(pa[b][s]["bias"], w_avg)
        for b in ("b0", "b2")
        for s in ("style1", "style2")  # E starts near G's mean w
    )
    ws, zc = enc(ea, pa, x, False)
    assert ws.shape == (2, gan.num_ws, TINY_G.w_dim) and zc.shape[:3] == (2, 4, 4)
    assert encoders.to_ws(ea, ws).shape == ws.shape
    # training mode draws noise (zero-weighted at init: the same codes) and needs a key
    np.testing.assert_allclose(enc(ea, pa, x, True, jax.random.key(3))[0], ws, atol=1e-6)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        encoders.encode(ea, pa, x, train=True)
    for target, dim in (("z", TINY_G.z_dim), ("w", TINY_G.w_dim)):
        ec = encoders.config_for_generator("crg", TINY_G, width=1 / 16, target=target)
        pc = jax.eval_shape(lambda k: encoders.init_params(ec, k), jax.random.key(0))
        lat = jax.eval_shape(lambda p: encoders.encode(ec, p, x), pc)
        assert lat.shape == (2, dim) == (2,) + ec.latent_shape
        ws = jax.eval_shape(
            lambda lat: encoders.to_ws(ec, lat, mapping=lambda z: gan.mapping_fn(gan.G, z)), lat
        )
        assert ws.shape == (2, gan.num_ws, TINY_G.w_dim)
    with pytest.raises(ValueError, match="needs G's mapping"):
        encoders.to_ws(encoders.config_for_generator("crg", TINY_G), jnp.zeros((1, 12)))
    # grayscale generators and the embedded default (shapes only)
    gray = sg2.StyleGAN2Config(**{**TINY_G.to_dict(), "img_channels": 1})
    for kind in ("adaptive", "crg"):
        e = encoders.config_for_generator(kind, gray, width=0.25)
        out = jax.eval_shape(
            lambda k: encoders.encode(e, encoders.init_params(e, k), jnp.zeros((3, 16, 16, 1))),
            jax.random.key(0),
        )
        assert out.shape == (3,) + e.latent_shape
    with open(pretrained.DEFAULT_DIR + "/config.json") as f:
        dflt = sg2.StyleGAN2Config.from_dict(json.load(f)["config"])
    e = encoders.config_for_generator("adaptive", dflt)
    out = jax.eval_shape(
        lambda k: encoders.encode(e, encoders.init_params(e, k), jnp.zeros((2, 32, 32, 3))),
        jax.random.key(0),
    )
    assert out.shape == (2, dflt.num_ws, dflt.w_dim)
    assert encoders.EncoderConfig.from_dict(json.loads(json.dumps(e.to_dict()))) == e
    with pytest.raises(ValueError, match="num_ws"):
        encoders.EncoderConfig.from_dict({**e.to_dict(), "num_ws": 3})


# ----------------------------------------------------------------------------- steps


def _run_steps(config, gan, batch, n, mesh=None):
    """n jitted steps on one fixed batch -> (losses, final state)."""
    mesh = mesh or shd.make_mesh(1)
    enc, mesh, init_fn = tr.setup(config, gan, mesh)
    _, sh = state_lib.abstract_state(init_fn, jax.random.key(0), mesh)
    st = state_lib.init_sharded(init_fn, jax.random.key(0), sh)
    val = tr.make_data(config, gan)[1] if config.val.every else None
    lp = pretrained_lpips() if tr.needs_lpips(config) else None
    aux = jax.device_put({"g": gan.G, "lpips": lp, "val": val}, shd.replicated(mesh))
    step = tr.jit_train_step(config, enc, gan, sh, mesh)
    losses = []
    with jax.set_mesh(mesh):
        for _ in range(n):
            st, m = step(st, shd.host_to_global(batch, mesh), aux)
            assert float(m["finite"]) == 1.0
            losses.append(float(m["loss"]))
    return losses, st


def pretrained_lpips():
    from ganinv_jax.losses import perceptual

    return perceptual.load_lpips_params("vgg")


def test_pretrain_steps_reduce_the_loss(gan):
    # :tiny -- L_img without LPIPS, with the AT1/AT2 crops and the 0.01 latent term; the same
    # compiled step as the sharded and resume tests below
    c = _config()
    assert c.loss.attention == "aligned" and c.loss.w_ssim == 1.0 and c.loss.latent_weight == 0.01
    losses, _ = _run_steps(c, gan, tr.latent_batch(0, 0, 8, TINY_G.z_dim), 4)
    assert losses[-1] < losses[0], losses


@pytest.mark.slow
def test_pretrain_steps_with_the_full_paper_loss_reduce_it(gan):
    # the whole L_img (MSE, cos, LPIPS, SSIM) with AT1/AT2 crops and the 0.01 latent term
    c = _config("", batch_size=4)
    c.encoder.width = 0.5
    assert tr.needs_lpips(c) and c.loss.attention == "aligned"
    losses, _ = _run_steps(c, gan, tr.latent_batch(0, 0, 4, TINY_G.z_dim), 4)
    assert losses[-1] < losses[0], losses


@pytest.mark.slow
def test_finetune_steps_reduce_the_attached_loss(gan):
    c = _config("tiny,finetune", batch_size=4)
    c.data.update(resolution=16)
    y = np.asarray(gan.generate(jax.random.normal(jax.random.key(5), (4, 12)))) * 0.8
    losses, _ = _run_steps(c, gan, y.astype(np.float32), 4)
    assert losses[-1] < losses[0], losses


def test_crg_steps_reduce_the_latent_mse_and_validate(gan):
    c = _config("tiny,crg", batch_size=4)
    c.val.update(every=2, num=8)
    z = tr.latent_batch(0, 0, 4, TINY_G.z_dim)
    losses, st = _run_steps(c, gan, z, 6)
    assert losses[-1] < losses[0], losses
    st = jax.device_get(st)
    assert np.isfinite(st.last_val) and st.best_step in (2, 4, 6) and st.best_val <= st.last_val
    assert _max_abs_diff(tr.export_params(st), st.best_params) == 0.0


def test_validation_plateau_best_params_and_early_stop():
    c = _config("tiny,crg")
    c.val.update(every=1, plateau_patience=1, early_stop=3)
    st = tr.state_from_params(c, {"a": jnp.zeros(2)})
    vals = [1.0, 0.5, 0.6, 0.7, 0.8]
    for i, v in enumerate(vals):
        st = st.replace(step=jnp.asarray(i + 1), params={"a": jnp.full(2, float(i))})
        st = tr.apply_validation(st, v, c)
    assert float(st.best_val) == 0.5 and int(st.best_step) == 2
    np.testing.assert_array_equal(st.best_params["a"], [1.0, 1.0])
    assert int(st.stalled) == 3 and tr.early_stopped(c, st)
    assert float(st.plateau.scale) < 1.0  # halved after the stall
    np.testing.assert_array_equal(tr.export_params(st)["a"], [1.0, 1.0])


def test_sharded_step_equals_single_device_step(gan):
    assert jax.device_count() >= 8, "conftest should provide 8 CPU devices"
    out = {}
    batches = [tr.latent_batch(0, s, 8, TINY_G.z_dim) for s in range(2)]
    for n, rules in ((1, ((".*", "replicate"),)), (8, ((".*", "fsdp"),))):
        c = _config()
        c.param_sharding = rules
        mesh = shd.make_mesh(n)
        enc, _, init_fn = tr.setup(c, gan, mesh)
        host = jax.device_get(init_fn(jax.random.key(0)))
        _, sh = state_lib.abstract_state(
            init_fn, jax.random.key(0), mesh, shd.rules_from_config(c.param_sharding)
        )
        if n == 8:  # really sharded: some weights live in 8 pieces
            assert any(s.spec != P() for s in jax.tree.leaves(sh))
        st = jax.device_put(host, sh)
        aux = jax.device_put({"g": gan.G, "lpips": None, "val": None}, shd.replicated(mesh))
        step = tr.jit_train_step(c, enc, gan, sh, mesh)
        with jax.set_mesh(mesh):
            for b in batches:
                xb = shd.host_to_global(b, mesh)
                assert len(xb.sharding.device_set) == n
                st, metrics = step(st, xb, aux)
        out[n] = jax.device_get((st, metrics))
    assert _max_abs_diff(out[1], out[8]) < 1e-4
    assert _max_abs_diff(host.params, out[8][0].params) > 1e-3  # the comparison is not vacuous


def test_kill_and_resume_reproduces_the_uninterrupted_run_and_exports(gan, tmp_path):
    c = _config()
    full = tr.train_and_evaluate(c, str(tmp_path / "a"), gan=gan)
    part = tr.train_and_evaluate(c, str(tmp_path / "b"), stop_after=3, gan=gan)  # "killed"
    assert int(part.step) == 3
    mgr = checkpointing.train_checkpoint_manager(str(tmp_path / "b" / "checkpoints"))
    assert mgr.latest_step() == 3  # the exit path checkpointed
    mgr.close()
    assert not (tmp_path / "b" / "encoder").exists()  # only finished runs export
    resumed = tr.train_and_evaluate(c, str(tmp_path / "b"), gan=gan)
    assert int(resumed.step) == int(full.step) == 4
    assert _max_abs_diff(full, resumed) == 0.0
    assert _max_abs_diff(full.params, part.params) > 0  # step 4 did something
    # the export is a DIR that rebuilds the same encoder
    enc, params, doc = encoders.read_dir(str(tmp_path / "a" / "encoder"))
    assert enc == tr.encoder_config(c, TINY_G) and doc["source"]["step"] == 4
    assert sg2.StyleGAN2Config.from_dict(doc["generator"]["config"]) == TINY_G
    assert _max_abs_diff(params, full.params) == 0.0
    loaded = pretrained.load_encoder(str(tmp_path / "a" / "encoder"))  # the public loader
    x = np.zeros((2, TINY_G.resolution, TINY_G.resolution, TINY_G.img_channels), np.float32)
    # the loader's encode is jitted: compare with the same program (eager op-by-op execution
    # may round differently by an ulp)
    ref = jax.jit(functools.partial(encoders.encode, enc))(params, x)
    np.testing.assert_array_equal(loaded.encode(x), ref)
    loaded.check_generator(TINY_G)
    with pytest.raises(encoders.EncoderMismatchError, match="encoder is for a G with"):
        loaded.check_generator(dataclasses.replace(TINY_G, w_dim=TINY_G.w_dim + 1))
    with pytest.raises(pretrained.MissingDirError, match="no such encoder directory"):
        encoders.read_dir(str(tmp_path / "nope"))
    # a run started from an export (init_from; 'default' = the shipped one) records its lineage
    assert tr.init_dir(ml_collections.ConfigDict(dict(encoder=dict(init_from="default")))) == (
        pretrained.DEFAULT_ENCODER_DIR
    )
    c2 = c.copy_and_resolve_references()
    c2.encoder.init_from = str(tmp_path / "a" / "encoder")
    tr.export_encoder(full, enc, str(tmp_path / "c"), config=c2)
    assert encoders.read_dir(str(tmp_path / "c"))[2]["source"]["init_from"] == {
        "dir": c2.encoder.init_from,
        "source": doc["source"],
    }
    (tmp_path / "a" / "encoder" / "config.json").write_text('{"architecture": "stylegan2"}')
    with pytest.raises(pretrained.BadDirError, match="corrupt encoder config.*not 'encoder'"):
        encoders.read_dir(str(tmp_path / "a" / "encoder"))


# ----------------------------------------------------------------------------- PGGAN / BigGAN

PG_G = pggan.PGGANConfig(channels=(8, 8, 4), z_dim=12)  # 16x16, widths 4 -> 8 -> 8
BG_G = biggan.BigGANConfig(  # 16x16 RGB, widths 4 -> 8 -> 64
    output_dim=16,
    z_dim=8,
    class_embed_dim=8,
    channel_width=4,
    num_classes=5,
    layers=((True, 16, 8), (False, 8, 4), (False, 4, 2), (True, 2, 1)),
    attention_layer_position=-1,
    n_stats=3,
)


@pytest.fixture(scope="module")
def other_gans():
    """{name: (G config, G variables, encoder config, encoder params)} for PGGAN and BigGAN."""
    g_vars = {
        "pggan": jax.jit(lambda k: pggan.init_variables(PG_G, "G_ema", k))(jax.random.key(0)),
        "biggan": jax.jit(lambda k: biggan.init_variables(BG_G, k))(jax.random.key(0)),
    }
    out = {}
    for name, g_cfg in (("pggan", PG_G), ("biggan", BG_G)):
        cfg = encoders.config_for_generator("adaptive", g_cfg)
        params = jax.jit(encoders.init_params, static_argnums=0)(cfg, jax.random.key(1))
        out[name] = (g_cfg, g_vars[name], cfg, params)
    return out


def test_other_gan_configs_follow_the_generator():
    pg = encoders.config_for_generator("adaptive", PG_G)
    assert (pg.generator, pg.target, pg.channels, pg.in_channels) == ("pggan", "z", (4, 8, 8), 2)
    assert pg.latent_shape == arch_lib.arch_for(PG_G).latent_shape == (12,)
    assert (pg.num_ws, pg.w_dim, pg.num_classes) == (0, 0, 0)  # no W
    bg = encoders.config_for_generator("adaptive", BG_G)
    assert (bg.generator, bg.target, bg.channels, bg.num_classes) == (
        "biggan",
        "z_class",
        (4, 8, 64),
        5,
    )
    assert bg.latent_shape == arch_lib.arch_for(BG_G).latent_shape == (8 + 5,)
    # BigGAN-deep-128: G is 128 wide at 128x128, 2048 at 4x4 (capped at 512); width=2 gives
    # paper Table 10's 128px column (CONV(128, 128), CONV(128, 256), ...)
    deep = encoders.config_for_generator("adaptive", biggan.BigGANConfig())
    assert (deep.in_channels, deep.channels) == (64, (128, 256, 512, 512, 512, 512))
    table10 = encoders.config_for_generator("adaptive", biggan.BigGANConfig(), width=2)
    assert (table10.in_channels, table10.channels[:2]) == (128, (256, 512))
    assert deep.latent_shape == (128 + 1000,)
    # the zoo's PGGAN widths, read from full resolution down
    zoo = pggan.PGGANConfig(channels=(512, 512, 512, 512, 256, 128, 64, 32, 16))
    widths = encoders.config_for_generator("adaptive", zoo).channels
    assert widths == (16, 32, 64, 128, 256) + (512,) * 4
    for bad, match in (
        (lambda: encoders.config_for_generator("crg", PG_G), "crg encoders are for StyleGAN2"),
        (lambda: dataclasses.replace(bg, num_classes=0), "num_classes >= 1"),
        (lambda: dataclasses.replace(pg, target="wplus"), "expected one of"),
        (lambda: dataclasses.replace(pg, num_classes=3), "num_classes is BigGAN's"),
        (lambda: encoders.config_for_generator("adaptive", object()), "no encoder for a"),
        (  # a toy BigGAN 2 channels wide renders 2-channel images
            lambda: encoders.config_for_generator(
                "adaptive", dataclasses.replace(BG_G, channel_width=2)
            ),
            "img_channels must be 1 or 3, got 2",
        ),
    ):
        with pytest.raises(ValueError, match=match):
            bad()
    # config.json: round trips; StyleGAN2 configs are written as before the new fields, and
    # such old entries still load
    for e in (pg, bg, deep):
        assert encoders.EncoderConfig.from_dict(json.loads(json.dumps(e.to_dict()))) == e
    sg = encoders.config_for_generator("adaptive", TINY_G)
    assert "generator" not in sg.to_dict() and "num_classes" not in sg.to_dict()
    old = {k: v for k, v in dataclasses.asdict(sg).items() if k not in ("generator", "num_classes")}
    assert encoders.EncoderConfig.from_dict(old) == sg


def test_other_gan_encoders_render_through_their_generator(other_gans):
    x = jax.random.uniform(jax.random.key(2), (2, 16, 16, 3), minval=-1, maxval=1)
    for name, (g_cfg, g_vars, cfg, params) in other_gans.items():
        arch = arch_lib.arch_for(g_cfg)

        @jax.jit
        def g_of_e(p, g, x):
            latents, zc = encoders.encode_with_features(cfg, p, x)
            return latents, zc, arch.render(g, latents)

        latents, zc, recon = g_of_e(params, g_vars, x)
        assert latents.shape == (2,) + cfg.latent_shape == (2,) + arch.latent_shape, name
        assert zc.shape == (2, 4, 4, cfg.channels[-1]) and recon.shape == x.shape, name
        assert np.all(np.isfinite(np.asarray(recon))), name
        if name == "biggan":  # the class part is a probability vector, as BigGANArch's
            _, cls = arch.split(latents)
            assert np.all(np.asarray(cls) >= 0)
            np.testing.assert_allclose(np.sum(np.asarray(cls), axis=-1), 1.0, rtol=1e-5)
        with pytest.raises(ValueError, match="not StyleGAN2 ws"):
            encoders.to_ws(cfg, latents)
    # latent_mean: BigGAN's heads start at the mean z and the logits of the mean class vector
    _, _, bg, _ = other_gans["biggan"]
    mean = jnp.concatenate([jnp.arange(8.0), jax.nn.one_hot(3, 5)])
    p = encoders.init_params(bg, jax.random.key(0), mean)
    np.testing.assert_array_equal(p["z"]["bias"], np.arange(8.0))
    assert int(np.argmax(p["logits"]["bias"])) == 3
    with pytest.raises(ValueError, match="latent_mean must be"):
        encoders.init_params(bg, jax.random.key(0), jnp.zeros(8))


def test_other_gan_write_read_dir_round_trip_and_check_fits(other_gans, tmp_path):
    for name, (g_cfg, _, cfg, params) in other_gans.items():
        d = encoders.write_dir(
            str(tmp_path / name), cfg, params, generator={"config": g_cfg.to_dict()}
        )
        cfg2, params2, doc = encoders.read_dir(d)
        assert cfg2 == cfg and doc["encoder"]["generator"] == name
        assert _max_abs_diff(params, params2) == 0.0
        encoders.check_fits(cfg2, g_cfg, d)  # its own generator fits
    pg_cfg, bg_cfg = other_gans["pggan"][2], other_gans["biggan"][2]
    refusals = (
        (pg_cfg, TINY_G, "pggan"),  # a PGGAN encoder for a StyleGAN2 of the same size
        (encoders.config_for_generator("adaptive", TINY_G), PG_G, "stylegan2"),
        (bg_cfg, dataclasses.replace(BG_G, num_classes=6), "class [5]"),
        (pg_cfg, dataclasses.replace(PG_G, z_dim=13), "z [12]"),
    )
    for cfg, g_cfg, what in refusals:
        with pytest.raises(encoders.EncoderMismatchError, match="encoder is for a G with") as e:
            encoders.check_fits(cfg, g_cfg, "E")
        assert what in str(e.value) and "\n" not in str(e.value)


def test_other_gan_biggan_encoder_takes_images_only(other_gans):
    _, _, cfg, params = other_gans["biggan"]
    module = encoders.build(cfg)
    assert isinstance(module, other_gans_lib.BigGANEncoder)
    sig = inspect.signature(other_gans_lib.BigGANEncoder.__call__)
    assert list(sig.parameters) == ["self", "img", "train"]
    x = jnp.zeros((1, 16, 16, 3))
    with pytest.raises(TypeError):
        module.apply({"params": params}, x, class_vector=jax.nn.one_hot(jnp.array([1]), 5))
    # the CBNs are live: they are conditioned on E's own first-pass c' (not on a given label)
    x = jax.random.uniform(jax.random.key(3), (1, 16, 16, 3), minval=-1, maxval=1)
    base_out = module.apply({"params": params}, x)[0]
    bumped = jax.tree_util.tree_map_with_path(
        lambda path, w: w + 0.5 if "norm" in jax.tree_util.keystr(path) else w, params
    )
    assert _max_abs_diff(base_out, module.apply({"params": bumped}, x)[0]) > 1e-4
