"""ops.conv: the matmul (patches / col2im) form equals XLA's native convolution.

Values, input gradients and weight gradients, under jit, vmap with per-image kernels, lax.map,
lax.scan, and shard_map over the 8 fake devices; float32 rounding tolerance (1e-4 relative to the
largest entry)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ganinv_jax import sharding
from ganinv_jax.ops import conv as conv_ops

# (name, fn(x, w, impl), x shape, w shape): every conv form the models use.
CASES = [
    (
        "3x3_same",
        lambda x, w, i: conv_ops.conv2d(x, w, padding=1, impl=i),
        (2, 9, 7, 5),
        (3, 3, 5, 6),
    ),
    (
        "3x3_stride2",
        lambda x, w, i: conv_ops.conv2d(x, w, stride=2, padding=((0, 1), (1, 0)), impl=i),
        (2, 10, 9, 4),
        (3, 3, 4, 3),
    ),
    (
        "3x3_asym_pad",
        lambda x, w, i: conv_ops.conv2d(x, w, padding=((0, 2), (1, 0)), impl=i),
        (2, 6, 7, 3),
        (3, 3, 3, 4),
    ),
    ("3x3_valid", lambda x, w, i: conv_ops.conv2d(x, w, impl=i), (1, 6, 5, 3), (3, 3, 3, 2)),
    (
        # taps that see only padding on some rows (an all-zero patch block)
        "3x3_pad_beyond_input",
        lambda x, w, i: conv_ops.conv2d(x, w, padding=((0, 3), (1, 1)), impl=i),
        (1, 1, 4, 2),
        (3, 3, 2, 3),
    ),
    # >= ROW_TAPS_MIN_PIXELS output pixels: the row-tap GEMM form (the others: full im2col)
    (
        "3x3_same_rows",
        lambda x, w, i: conv_ops.conv2d(x, w, padding=1, impl=i),
        (2, 16, 17, 5),
        (3, 3, 5, 6),
    ),
    (
        "3x3_asym_pad_rows",
        lambda x, w, i: conv_ops.conv2d(x, w, padding=((0, 2), (1, 0)), impl=i),
        (1, 18, 16, 3),
        (3, 3, 3, 4),
    ),
    (
        "3x3_pad_beyond_input_rows",
        lambda x, w, i: conv_ops.conv2d(x, w, padding=((0, 3), (1, 1)), impl=i),
        (1, 1, 130, 2),
        (3, 3, 2, 3),
    ),
    (
        "5x5_pad2_rows",
        lambda x, w, i: conv_ops.conv2d(x, w, padding=2, impl=i),
        (1, 16, 16, 3),
        (5, 5, 3, 4),
    ),
    ("1x1", lambda x, w, i: conv_ops.conv2d(x, w, impl=i), (2, 6, 6, 5), (1, 1, 5, 7)),
    (
        "1x1_stride2",
        lambda x, w, i: conv_ops.conv2d(x, w, stride=2, impl=i),
        (1, 6, 6, 3),
        (1, 1, 3, 2),
    ),
    (
        "5x5_pad2",
        lambda x, w, i: conv_ops.conv2d(x, w, padding=2, impl=i),
        (1, 8, 8, 3),
        (5, 5, 3, 4),
    ),
    (
        "transpose2x_3",
        lambda x, w, i: conv_ops.conv_transpose2x(x, w, impl=i),
        (2, 5, 6, 4),
        (3, 3, 4, 5),
    ),
    (
        "transpose2x_4",
        lambda x, w, i: conv_ops.conv_transpose2x(x, w, impl=i),
        (1, 4, 4, 3),
        (4, 4, 3, 2),
    ),
]


def test_stride1_cases_cover_both_gemm_forms():
    """The *_rows cases take the row-tap form (>= ROW_TAPS_MIN_PIXELS output pixels), the other
    stride-1 k x k cases the full im2col GEMM: the tests below check both against native."""
    forms = {}
    for name, fn, xs, ws in CASES:
        x, w = jnp.zeros(xs), jnp.zeros(ws)
        if ws[0] == 1 or "stride2" in name or "transpose" in name:
            continue
        jaxpr = str(jax.make_jaxpr(lambda x, w: fn(x, w, "matmul"))(x, w))
        forms[name] = "_conv_row_taps" in jaxpr, "_conv_gemm" in jaxpr
    assert forms == {n: (n.endswith("_rows"), not n.endswith("_rows")) for n in forms}, forms
    assert len(forms) == 9


def _close(a, b, tol=1e-4):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    scale = max(np.abs(b).max(), 1e-6)
    np.testing.assert_array_less(np.abs(a - b).max() / scale, tol)


def _inputs(xs, ws, batch=None):
    kx, kw = jax.random.split(jax.random.key(0))
    wshape = ws if batch is None else (batch,) + ws
    return jax.random.normal(kx, xs), jax.random.normal(kw, wshape)


@pytest.mark.parametrize("name,fn,xs,ws", CASES, ids=[c[0] for c in CASES])
def test_matmul_equals_native_under_jit(name, fn, xs, ws):
    x, w = _inputs(xs, ws)

    def vg(impl):
        def loss(x, w):
            y = fn(x, w, impl)
            return jnp.sum(y * jnp.cos(jnp.arange(y.size).reshape(y.shape))), y

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(x, w)

    (_, y_n), (dx_n, dw_n) = vg("native")
    (_, y_m), (dx_m, dw_m) = vg("matmul")
    assert np.abs(np.asarray(y_n)).max() > 0.1  # a real signal, not zeros on both sides
    _close(y_m, y_n)
    _close(dx_m, dx_n)
    _close(dw_m, dw_n)


def _image_loss(fn, impl):
    """Loss of ONE image under its own kernel: sum(y * fixed cotangent)."""

    def loss(x, w):
        y = fn(x[None], w, impl)
        return jnp.sum(y * jnp.sin(jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape)))

    return jax.grad(loss, argnums=(0, 1))


def _two_scan_steps(f, xs, ws):
    """The engine's shape: a rolled lax.scan around a lax.map over images (last step's grads)."""
    out = jax.lax.scan(lambda c, _: (c, jax.lax.map(lambda a: f(*a), (xs, ws))), 0, jnp.arange(2))[
        1
    ]
    return jax.tree_util.tree_map(lambda t: t[-1], out)


MAPPERS = {
    "vmap": lambda f, xs, ws: jax.vmap(f)(xs, ws),
    "lax.map": lambda f, xs, ws: jax.lax.map(lambda a: f(*a), (xs, ws)),
    "scan": _two_scan_steps,
}


@pytest.mark.parametrize("mapper", list(MAPPERS))
@pytest.mark.parametrize("case", ["3x3_same", "3x3_same_rows", "transpose2x_3"])
def test_per_image_kernels_under_vmap_map_and_scan(case, mapper):
    _, fn, xs, ws = next(c for c in CASES if c[0] == case)
    b = 3
    kx, kw = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (b,) + xs[1:])
    w = jax.random.normal(kw, (b,) + ws)
    native = jax.jit(_image_loss(fn, "native"))
    dx, dw = jax.jit(lambda x, w: MAPPERS[mapper](_image_loss(fn, "matmul"), x, w))(x, w)
    for i in range(b):
        ref_dx, ref_dw = native(x[i], w[i])
        _close(dx[i], ref_dx)
        _close(dw[i], ref_dw)


def test_matmul_form_on_8_devices_equals_single_device():
    """Image axis sharded over the 8 fake devices with shard_map, per-image kernels."""
    devices = jax.devices()
    assert len(devices) == 8
    mesh = sharding.make_mesh(8, explicit=True)
    _, fn, xs, ws = next(c for c in CASES if c[0] == "transpose2x_3")
    kx, kw = jax.random.split(jax.random.key(2))
    x = jax.random.normal(kx, (8,) + xs[1:])
    w = jax.random.normal(kw, (8,) + ws)

    def grads(x, w, impl):
        def one(x, w):
            return jax.grad(lambda w: jnp.sum(jnp.square(fn(x[None], w, impl))))(w)

        return jax.vmap(one)(x, w)

    sharded = jax.jit(
        jax.shard_map(
            functools.partial(grads, impl="matmul"),
            mesh=mesh,
            in_specs=(P("data"), P("data")),
            out_specs=P("data"),
        )
    )
    spec = NamedSharding(mesh, P("data"))
    got = sharded(jax.device_put(x, spec), jax.device_put(w, spec))
    _close(got, jax.jit(functools.partial(grads, impl="native"))(x, w))


def test_max_pool_forms_agree_and_impl_switch():
    x = jax.random.normal(jax.random.key(3), (2, 9, 8, 3))  # odd height: floor like VALID
    for impl in ("native", "matmul"):
        assert conv_ops.max_pool2x2(x, impl=impl).shape == (2, 4, 4, 3)
    _close(conv_ops.max_pool2x2(x, impl="matmul"), conv_ops.max_pool2x2(x, impl="native"))
    g = [
        jax.grad(lambda x: jnp.sum(conv_ops.max_pool2x2(x, impl=i) ** 2))(x)
        for i in ("native", "matmul")
    ]
    _close(g[1], g[0])  # continuous random input: no ties
    with conv_ops.use_impl("native"):
        assert conv_ops.resolve_impl() == "native"
    assert conv_ops.resolve_impl(backend="cpu") in conv_ops.IMPLS
    assert conv_ops.resolve_impl("auto", backend="gpu") == "native"
    assert conv_ops.resolve_impl("auto", backend="cpu") == "matmul"
    with pytest.raises(ValueError, match="unknown conv impl"):
        conv_ops.resolve_impl("fft")


@pytest.mark.parametrize("case", ["3x3_same", "5x5_pad2", "1x1"])
def test_hybrid_equals_native(case):
    """'hybrid': native forward, input gradient as a forward conv, weight gradient as a GEMM."""
    _, fn, xs, ws = next(c for c in CASES if c[0] == case)
    x, w = _inputs(xs, ws)

    def vg(impl):
        def loss(x, w):
            y = fn(x, w, impl)
            return jnp.sum(y * jnp.cos(jnp.arange(y.size).reshape(y.shape)))

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, w)

    (v_n, (dx_n, dw_n)), (v_h, (dx_h, dw_h)) = vg("native"), vg("hybrid")
    _close(v_h, v_n)
    _close(dx_h, dx_n)
    _close(dw_h, dw_n)


def _tiny_sg2():
    from ganinv_jax.models import stylegan2 as sg2

    cfg = sg2.StyleGAN2Config(
        resolution=16,
        channels=(8, 8, 6),
        z_dim=8,
        w_dim=8,
        mapping_layers=1,
        img_channels=3,
        fan_in_scale_modconv=True,
    )
    g = sg2.Generator(cfg)
    gv = g.init(jax.random.key(0), jnp.zeros((1, cfg.z_dim)))
    d = sg2.Discriminator(cfg)
    dv = d.init(jax.random.key(1), jnp.zeros((1, 16, 16, 3)))
    return cfg, g, gv, d, dv


def test_stylegan2_g_and_d_equal_in_both_forms():
    """Synthesis (with its up-sampling transposed convs) and D (stride-2 convs): values and
    parameter gradients, native vs the GEMM forms, under jit and under vmap over per-image
    generator weights (the PTI shape)."""
    cfg, g, gv, d, dv = _tiny_sg2()
    ws = jax.random.normal(jax.random.key(2), (2, cfg.num_ws, cfg.w_dim))
    imgs = jax.random.normal(jax.random.key(3), (2, 16, 16, 3))

    def g_loss(params, ws):
        out = g.apply({"params": params, "buffers": gv["buffers"]}, ws, method=g.synthesis)
        return jnp.sum(out * jnp.sin(jnp.arange(out.size).reshape(out.shape))), out

    def d_loss(params):
        logits = d.apply({"params": params}, imgs)
        return jnp.sum(logits), logits

    per_image = [gv["params"], jax.tree_util.tree_map(lambda p: 1.1 * p, gv["params"])]
    results = {}
    for impl in ("native", "matmul"):
        with conv_ops.use_impl(impl):
            (_, img), gg = jax.jit(jax.value_and_grad(g_loss, has_aux=True))(gv["params"], ws)
            (_, logits), dg = jax.jit(jax.value_and_grad(d_loss, has_aux=True))(dv["params"])
            one = jax.jit(jax.grad(lambda p, w: g_loss(p, w[None])[0]))
        results[impl] = (img, gg, logits, dg)
        if impl == "native":  # per image, one compiled call each (native vmap = grouped conv)
            per_image_ref = [one(p, ws[i]) for i, p in enumerate(per_image)]
    with conv_ops.use_impl("matmul"):
        stacked = jax.tree_util.tree_map(lambda *p: jnp.stack(p), *per_image)
        vg = jax.jit(jax.vmap(jax.grad(lambda p, w: g_loss(p, w[None])[0])))(stacked, ws)
    assert float(jnp.abs(results["native"][0]).max()) > 0.1
    for a, b in zip(
        jax.tree_util.tree_leaves(results["matmul"]), jax.tree_util.tree_leaves(results["native"])
    ):
        _close(a, b)
    for i, ref in enumerate(per_image_ref):
        for a, b in zip(jax.tree_util.tree_leaves(vg), jax.tree_util.tree_leaves(ref)):
            _close(a[i], b)


def test_lpips_equals_in_both_forms():
    """LPIPS-VGG (real weights): distance and image gradient, native vs the CPU default
    ('hybrid' for <= 128 channels, GEMM above, reshape max-pool)."""
    from ganinv_jax import losses

    params = losses.load_lpips_params("vgg")
    kx, ky = jax.random.split(jax.random.key(4))
    x = jax.random.uniform(kx, (2, 32, 32, 3), minval=-1, maxval=1)
    y = jax.random.uniform(ky, (2, 32, 32, 3), minval=-1, maxval=1)
    out = {}
    for impl in ("native", "auto"):
        with conv_ops.use_impl(impl):
            # the module itself: `lpips_apply` is a cached jit, traced in one form only
            f = jax.jit(
                jax.value_and_grad(
                    lambda x: jnp.sum(losses.LPIPS("vgg").apply({"params": params}, x, y))
                )
            )
            out[impl] = f(x)
    assert float(out["native"][0]) > 0.05
    _close(out["auto"][0], out["native"][0], 1e-5)
    _close(out["auto"][1], out["native"][1])


def _bf16_round(a):
    return a.astype(jnp.bfloat16).astype(jnp.float32)


@pytest.mark.parametrize("impl", ["matmul", "native", "hybrid"])
@pytest.mark.parametrize("name,fn,xs,ws", CASES, ids=[c[0] for c in CASES])
def test_bf16_operands_equal_float32_on_rounded_operands(name, fn, xs, ws, impl):
    """bf16 GEMM operands with float32 accumulation: values, input and weight gradients equal
    the float32 native conv of the bf16-rounded input, kernel and output cotangent (bf16 x bf16
    products are exact in float32; only the order of the float32 sums differs)."""
    x, w = _inputs(xs, ws)

    def loss(x, w, impl, cot_round):
        y = fn(x, w, impl)
        cot = cot_round(jnp.cos(jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape)))
        return jnp.sum(y * cot), y

    vg = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
    (_, y_ref), (dx_ref, dw_ref) = jax.jit(
        lambda x, w: vg(_bf16_round(x), _bf16_round(w), "native", _bf16_round)
    )(x, w)
    with conv_ops.use_operand_dtype(jnp.bfloat16):
        (_, y), (dx, dw) = jax.jit(lambda x, w: vg(x, w, impl, _bf16_round))(x, w)
    assert y.dtype == dx.dtype == dw.dtype == jnp.float32
    _close(y, y_ref)
    _close(dx, dx_ref)
    _close(dw, dw_ref)
    # the rounding is real: plain float32 differs from it by more than float32 rounding
    y32 = jax.jit(lambda x, w: fn(x, w, "native"))(x, w)
    assert np.abs(np.asarray(y32) - np.asarray(y)).max() / np.abs(np.asarray(y32)).max() > 1e-4


def _shard_map_8(f, xs, ws):
    """vmap over images inside a shard_map of the image axis over the 8 fake devices."""
    mesh = sharding.make_mesh(8, explicit=True)
    spec = NamedSharding(mesh, P("data"))
    mapped = jax.shard_map(
        lambda x, w: jax.vmap(f)(x, w),
        mesh=mesh,
        in_specs=(P("data"), P("data")),
        out_specs=P("data"),
    )
    return mapped(jax.device_put(xs, spec), jax.device_put(ws, spec))


@pytest.mark.parametrize("mapper", list(MAPPERS) + ["shard_map_8"])
@pytest.mark.parametrize("case", ["3x3_same", "3x3_same_rows", "transpose2x_3", "1x1"])
def test_bf16_operands_per_image_kernels_under_loops_and_devices(case, mapper):
    """The engine's shapes with bf16 operands: per-image kernels under vmap / lax.map / a scan
    and on 8 devices, against the float32 native conv of the rounded operands, image by image."""
    _, fn, xs, ws = next(c for c in CASES if c[0] == case)
    b = 8
    kx, kw = jax.random.split(jax.random.key(5))
    x = jax.random.normal(kx, (b,) + xs[1:])
    w = jax.random.normal(kw, (b,) + ws)

    def image_grads(impl):
        def loss(x, w):
            y = fn(x[None], w, impl)
            cot = jnp.sin(jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape))
            return jnp.sum(y * _bf16_round(cot))

        return jax.grad(loss, argnums=(0, 1))

    ref = jax.jit(lambda x, w: image_grads("native")(_bf16_round(x), _bf16_round(w)))
    run = _shard_map_8 if mapper == "shard_map_8" else MAPPERS[mapper]
    with conv_ops.use_operand_dtype(jnp.bfloat16):
        dx, dw = jax.device_get(jax.jit(lambda x, w: run(image_grads("matmul"), x, w))(x, w))
    for i in range(b):
        ref_dx, ref_dw = ref(x[i], w[i])
        _close(dx[i], ref_dx)
        _close(dw[i], ref_dw)
