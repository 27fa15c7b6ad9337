"""StyleGAN2 G/D modules: shapes, jit/vmap/grad across architectures and sizes, fp32.

Numerical parity with the PyTorch originals is in test_convert.py; here tiny widths keep the
number and cost of compilations low (one jitted forward+grad per config, module-scoped).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ganinv_jax import pretrained
from ganinv_jax.models import stylegan2 as S

N = 2


def tiny(resolution, channels=8, **kw) -> S.StyleGAN2Config:
    nb = int(math.log2(resolution)) - 1
    chans = channels if isinstance(channels, tuple) else (channels,) * nb
    base = dict(
        resolution=resolution,
        channels=chans,
        z_dim=16,
        w_dim=16,
        mapping_layers=2,
        d_mapping_layers=1,
    )
    return S.StyleGAN2Config(**{**base, **kw})


CONFIGS = {
    # G skip / D resnet, NVlabs conventions with conv clamp.
    "32-skip-resnet": tiny(32, (16, 16, 8, 8), conv_clamp=256.0),
    # G orig / D skip, grayscale, conditional G and D, rosinality modconv scaling.
    "64-orig-skip-gray-cond": tiny(
        64,
        img_channels=1,
        architecture="orig",
        d_architecture="skip",
        c_dim=3,
        fan_in_scale_modconv=True,
    ),
    # G resnet / D orig at 256.
    "256-resnet-orig": tiny(256, architecture="resnet", d_architecture="orig"),
    # The smallest StyleGAN: a single 4x4 block, conditional.
    "4-skip-resnet-cond": tiny(4, c_dim=2),
}


def _inputs(cfg, seed=0):
    kz, kc, ki = jax.random.split(jax.random.key(seed), 3)
    z = jax.random.normal(kz, (N, cfg.z_dim))
    c = jax.nn.one_hot(jnp.arange(N) % cfg.c_dim, cfg.c_dim) if cfg.c_dim else None
    img = jax.random.uniform(
        ki, (N, cfg.resolution, cfg.resolution, cfg.img_channels), minval=-1, maxval=1
    )
    return z, c, img


def _random_variables(cfg, net, seed=0):
    """Init-shaped variables filled in numpy (no compile); noise strengths made non-zero."""
    rng = np.random.RandomState(seed)
    abstract = pretrained.abstract_variables(cfg, [net])[net]
    return jax.tree_util.tree_map(
        lambda x: rng.standard_normal(x.shape).astype(np.float32), abstract
    )


@pytest.fixture(scope="module", params=list(CONFIGS), ids=list(CONFIGS))
def case(request):
    """One config: forward outputs and gradients from ONE jit of G and ONE jit of D."""
    cfg = CONFIGS[request.param]
    G, D = S.Generator(cfg), S.Discriminator(cfg)
    g_vars, d_vars = _random_variables(cfg, "G_ema"), _random_variables(cfg, "D", seed=1)
    z, c, img = _inputs(cfg)

    @jax.jit
    def g_step(v, z, c):
        def loss(v, ws):
            out = G.apply(v, ws, "const", method=G.synthesis)
            return jnp.mean(jnp.square(out)), out

        ws = G.apply(v, z, c, method=G.mapping)
        (_, out), (g_v, g_ws) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(v, ws)
        return ws, out, g_v, g_ws

    @jax.jit
    def d_step(v, img, c):
        def loss(img):
            logits = D.apply(v, img, c)
            return jnp.sum(logits), logits

        (_, logits), g_img = jax.value_and_grad(loss, has_aux=True)(img)
        return logits, g_img

    ws, out, g_v, g_ws = g_step(g_vars, z, c)
    logits, g_img = d_step(d_vars, img, c)
    return dict(
        cfg=cfg,
        G=G,
        D=D,
        g_vars=g_vars,
        d_vars=d_vars,
        z=z,
        c=c,
        img=img,
        ws=ws,
        out=out,
        g_v=g_v,
        g_ws=g_ws,
        logits=logits,
        g_img=g_img,
    )


def _finite_nonzero(tree):
    leaves = jax.tree_util.tree_leaves(tree)
    assert all(bool(jnp.isfinite(x).all()) for x in leaves)
    return sum(float(jnp.abs(x).sum()) for x in leaves) > 0


def test_shapes_dtypes(case):
    cfg = case["cfg"]
    assert case["ws"].shape == (N, cfg.num_ws, cfg.w_dim)
    assert case["out"].shape == (N, cfg.resolution, cfg.resolution, cfg.img_channels)
    assert case["logits"].shape == (N, 1)
    for x in (case["ws"], case["out"], case["logits"], case["g_ws"], case["g_img"]):
        assert x.dtype == jnp.float32
    assert bool(jnp.isfinite(case["out"]).all()) and bool(jnp.isfinite(case["logits"]).all())


def test_gradients(case):
    assert _finite_nonzero(case["g_v"]["params"])
    assert _finite_nonzero(case["g_ws"])
    assert _finite_nonzero(case["g_img"])  # R1 needs d logits / d image
    # Every generator parameter leaf receives a gradient (nothing is disconnected).
    dead = [
        jax.tree_util.keystr(p)
        for p, g in jax.tree_util.tree_leaves_with_path(case["g_v"]["params"])
        if not float(jnp.abs(g).max()) > 0 and "mapping" not in jax.tree_util.keystr(p)
    ]
    assert not dead, dead


def test_variables_match_eval_shape(case):
    """Real init and `jax.eval_shape(init)` agree (the converter relies on the latter)."""
    cfg = case["cfg"]
    if cfg.resolution > 4:
        pytest.skip("one real init is enough; larger ones only cost compile time")
    real = jax.jit(pretrained.init_variables, static_argnums=(0, 1))(
        cfg, "G_ema", jax.random.key(0)
    )
    abstract = pretrained.abstract_variables(cfg, ["G_ema"])["G_ema"]
    assert jax.tree_util.tree_structure(real) == jax.tree_util.tree_structure(abstract)
    for a, b in zip(jax.tree_util.tree_leaves(real), jax.tree_util.tree_leaves(abstract)):
        assert a.shape == b.shape and a.dtype == b.dtype


@pytest.mark.parametrize("name", ["32-skip-resnet", "4-skip-resnet-cond"])
def test_vmap_over_per_image_params(name):
    """The engine's batching: vmap a one-image synthesis over stacked G params and ws."""
    cfg = CONFIGS[name]
    G = S.Generator(cfg)
    v = _random_variables(cfg, "G_ema")
    stacked = jax.tree_util.tree_map(lambda x: jnp.stack([x, 0.9 * x]), v)
    ws = jax.random.normal(jax.random.key(3), (2, 1, cfg.num_ws, cfg.w_dim))
    per = jax.jit(jax.vmap(lambda p, w: G.apply(p, w, method=G.synthesis)))(stacked, ws)
    assert per.shape == (2, 1, cfg.resolution, cfg.resolution, cfg.img_channels)
    one = jax.tree_util.tree_map(lambda x: x[1], stacked)
    ref = jax.jit(lambda p, w: G.apply(p, w, method=G.synthesis))(one, ws[1])
    np.testing.assert_allclose(per[1], ref, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIGS))
def test_d_vmap_matches_batch(name):
    cfg = CONFIGS[name]
    D = S.Discriminator(cfg)
    v = _random_variables(cfg, "D")
    z, c, img = _inputs(cfg)
    f = jax.jit(lambda i, c: D.apply(v, i, c))
    # mbstd mixes the batch, so compare vmap over groups of the full batch with a loop.
    imgs = jnp.stack([img, -img])
    cs = None if c is None else jnp.stack([c, c])
    batched = jax.vmap(f)(imgs, cs)
    np.testing.assert_allclose(batched[1], f(-img, c), atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- semantics


def test_noise_layer_names_order():
    cfg = CONFIGS["32-skip-resnet"]
    names = S.noise_layer_names(cfg)
    assert names == [
        "b4.conv1",
        "b8.conv0",
        "b8.conv1",
        "b16.conv0",
        "b16.conv1",
        "b32.conv0",
        "b32.conv1",
    ]
    assert len(names) == cfg.num_ws - 1
    assert S.noise_shapes(cfg)["b16.conv0"] == (16, 16)


def test_truncation_and_style_mix():
    cfg = CONFIGS["4-skip-resnet-cond"]
    G = S.Generator(cfg)
    v = _random_variables(cfg, "G_ema")
    z, c, _ = _inputs(cfg)
    ws = G.apply(v, z, c, method=G.mapping)
    w_avg = v["buffers"]["mapping"]["w_avg"]
    w0 = G.apply(v, z, c, 0.0, method=G.mapping)
    np.testing.assert_allclose(w0, jnp.broadcast_to(w_avg, w0.shape), atol=1e-6)
    cut = G.apply(v, z, c, 0.5, 1, method=G.mapping)
    np.testing.assert_allclose(cut[:, 0], 0.5 * (ws[:, 0] + w_avg), atol=1e-5)
    np.testing.assert_allclose(cut[:, 1:], ws[:, 1:], atol=1e-6)
    mixed = S.style_mix(ws, -ws, 1)
    np.testing.assert_array_equal(mixed[:, :1], ws[:, :1])
    np.testing.assert_array_equal(mixed[:, 1:], -ws[:, 1:])
    with pytest.raises(ValueError, match="conditional"):
        G.apply(v, z, None, method=G.mapping)


def test_noise_modes_differ_and_override():
    cfg = CONFIGS["32-skip-resnet"]
    G = S.Generator(cfg)
    v = _random_variables(cfg, "G_ema")
    ws = jax.random.normal(jax.random.key(4), (N, cfg.num_ws, cfg.w_dim))
    syn = jax.jit(
        lambda ws, mode, noise: G.apply(v, ws, mode, noise, method=G.synthesis), static_argnums=1
    )
    const, none = syn(ws, "const", None), syn(ws, "none", None)
    assert float(jnp.abs(const - none).max()) > 1e-3
    # Overriding every layer with its own const buffer reproduces 'const'.
    bufs = {
        n: v["buffers"]["synthesis"][n.split(".")[0]][n.split(".")[1]]["noise_const"]
        for n in S.noise_layer_names(cfg)
    }
    np.testing.assert_allclose(syn(ws, "none", bufs), const, atol=1e-5)
    with pytest.raises(ValueError, match="ws must be"):
        G.apply(v, ws[:, :-1], method=G.synthesis)
    with pytest.raises(ValueError, match="unknown noise"):
        G.apply(v, ws, "const", {"b64.conv0": jnp.zeros((64, 64))}, method=G.synthesis)


def _mbstd_reference(x, group):
    """Upstream semantics, written plainly: sample b is in group b % (N // G)."""
    n = x.shape[0]
    m = n // group
    out = np.zeros((n,), np.float64)
    for j in range(m):
        members = x[j::m].astype(np.float64)  # [G, H, W, C]
        std = np.sqrt(members.var(axis=0) + 1e-8)  # population variance over the group
        out[j::m] = std.mean()
    return out


def test_minibatch_stddev_strided_groups():
    x = np.random.RandomState(0).standard_normal((8, 4, 4, 6)).astype(np.float32)
    y = np.asarray(S.minibatch_stddev(jnp.asarray(x), group_size=4, num_channels=1))
    assert y.shape == (8, 4, 4, 7)
    np.testing.assert_array_equal(y[..., :6], x)
    np.testing.assert_allclose(y[:, 0, 0, 6], _mbstd_reference(x, 4), rtol=1e-5)
    # The map is constant over space.
    assert np.ptp(y[..., 6], axis=(1, 2)).max() == 0


def test_config_validation_and_channel_conventions():
    with pytest.raises(ValueError, match="channels"):
        S.StyleGAN2Config(resolution=32, channels=(8, 8))
    with pytest.raises(ValueError, match="power of two"):
        S.StyleGAN2Config(resolution=48, channels=(8,) * 4)
    with pytest.raises(ValueError, match="img_channels"):
        tiny(8, img_channels=2)
    assert S.channels_from_base(32, 512, 32) == (32, 32, 32, 16)
    assert S.channels_from_multiplier(256, 2) == (512, 512, 512, 512, 512, 256, 128)
    cfg = CONFIGS["64-orig-skip-gray-cond"]
    assert S.StyleGAN2Config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "kw", [dict(up=2, pad=(2, 1), gain=4.0), dict(pad=(2, 2), down=2), dict(pad=(1, 1))]
)
def test_upfirdn2d_gradient_equals_autodiff_of_shifted_slices(kw):
    """upfirdn2d's FIR has a written-out transpose (the reversed taps over the zero-padded
    gradient): equal to autodiff of the plain sum of shifted slices, with uneven taps too."""
    from ganinv_jax.models import layers as L

    def plain_fir(x, taps, axis):
        n = x.shape[axis] - len(taps) + 1
        return sum(jax.lax.slice_in_dim(x, k, k + n, axis=axis) * t for k, t in enumerate(taps))

    taps = L.fir_taps((1, 2, 4, 3))  # not symmetric: a reversal mistake would show
    x = jax.random.normal(jax.random.key(1), (2, 7, 6, 3))
    ours = lambda x: L.upfirdn2d(x, taps, **kw)  # noqa: E731
    y, vjp = jax.vjp(ours, x)
    g = jax.random.normal(jax.random.key(2), y.shape)
    orig = L._fir_1d
    try:
        L._fir_1d = plain_fir
        y_ref, vjp_ref = jax.vjp(ours, x)
    finally:
        L._fir_1d = orig
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(vjp(g)[0], vjp_ref(g)[0], rtol=1e-5, atol=1e-6)


def test_bias_act_lrelu_equals_where_form_with_gradient():
    """bias_act's lrelu (one multiply by a per-element slope, gain folded in) equals the plain
    where(x >= 0, x, a x) * gain in value and gradient, at zero and with a clamp too."""
    from ganinv_jax.models import layers as L

    x = jax.random.normal(jax.random.key(4), (2, 5, 5, 6)) * 3
    x = x.at[0, 0, 0].set(0.0)
    b = jax.random.normal(jax.random.key(5), (6,))
    for clamp in (None, 2.0):

        def plain(x, b):
            y = x + b
            y = jnp.where(y >= 0, y, y * 0.2) * (L.SQRT2 * 0.5)
            return y if clamp is None else jnp.clip(y, -clamp, clamp)

        ours = lambda x, b: L.bias_act(x, b, gain=L.SQRT2 * 0.5, clamp=clamp)  # noqa: E731
        np.testing.assert_allclose(ours(x, b), plain(x, b), rtol=1e-6, atol=1e-7)
        g = jax.random.normal(jax.random.key(6), x.shape)
        for got, want in zip(jax.vjp(ours, x, b)[1](g), jax.vjp(plain, x, b)[1](g)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
