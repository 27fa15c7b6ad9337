"""ops.conv: the matmul (patches / col2im) form equals XLA's native convolution.

Values, input gradients and weight gradients, under jit, vmap with per-image kernels, lax.map,
lax.scan, and shard_map over the 8 fake devices; float32 rounding tolerance (1e-4 relative to the
largest entry)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from ganinv_jax.ops import conv as conv_ops

# (name, fn(x, w, impl), x shape, w shape): every conv form the models use.
CASES = [
    ("3x3_same", lambda x, w, i: conv_ops.conv2d(x, w, padding=1, impl=i), (2, 9, 7, 5), (3, 3, 5, 6)),
    ("3x3_stride2", lambda x, w, i: conv_ops.conv2d(x, w, stride=2, padding=((0, 1), (1, 0)), impl=i),
     (2, 10, 9, 4), (3, 3, 4, 3)),
    ("1x1", lambda x, w, i: conv_ops.conv2d(x, w, impl=i), (2, 6, 6, 5), (1, 1, 5, 7)),
    ("1x1_stride2", lambda x, w, i: conv_ops.conv2d(x, w, stride=2, impl=i), (1, 6, 6, 3), (1, 1, 3, 2)),
    ("5x5_pad2", lambda x, w, i: conv_ops.conv2d(x, w, padding=2, impl=i), (1, 8, 8, 3), (5, 5, 3, 4)),
    ("transpose2x_3", lambda x, w, i: conv_ops.conv_transpose2x(x, w, impl=i), (2, 5, 6, 4), (3, 3, 4, 5)),
    ("transpose2x_4", lambda x, w, i: conv_ops.conv_transpose2x(x, w, impl=i), (1, 4, 4, 3), (4, 4, 3, 2)),
]


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
    assert np.abs(np.asarray(y_n)).max() > 0.1   # a real signal, not zeros on both sides
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
    out = jax.lax.scan(lambda c, _: (c, jax.lax.map(lambda a: f(*a), (xs, ws))), 0,
                       jnp.arange(2))[1]
    return jax.tree_util.tree_map(lambda t: t[-1], out)


MAPPERS = {
    "vmap": lambda f, xs, ws: jax.vmap(f)(xs, ws),
    "lax.map": lambda f, xs, ws: jax.lax.map(lambda a: f(*a), (xs, ws)),
    "scan": _two_scan_steps,
}


@pytest.mark.parametrize("mapper", list(MAPPERS))
@pytest.mark.parametrize("case", ["3x3_same", "transpose2x_3"])
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
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    _, fn, xs, ws = next(c for c in CASES if c[0] == "transpose2x_3")
    kx, kw = jax.random.split(jax.random.key(2))
    x = jax.random.normal(kx, (8,) + xs[1:])
    w = jax.random.normal(kw, (8,) + ws)

    def grads(x, w, impl):
        def one(x, w):
            return jax.grad(lambda w: jnp.sum(jnp.square(fn(x[None], w, impl))))(w)
        return jax.vmap(one)(x, w)

    sharded = jax.jit(jax.shard_map(functools.partial(grads, impl="matmul"), mesh=mesh,
                                    in_specs=(P("data"), P("data")), out_specs=P("data")))
    spec = NamedSharding(mesh, P("data"))
    got = sharded(jax.device_put(x, spec), jax.device_put(w, spec))
    _close(got, jax.jit(functools.partial(grads, impl="native"))(x, w))


def test_max_pool_forms_agree_and_impl_switch():
    x = jax.random.normal(jax.random.key(3), (2, 9, 8, 3))   # odd height: floor like VALID
    for impl in ("native", "matmul"):
        assert conv_ops.max_pool2x2(x, impl=impl).shape == (2, 4, 4, 3)
    _close(conv_ops.max_pool2x2(x, impl="matmul"), conv_ops.max_pool2x2(x, impl="native"))
    g = [jax.grad(lambda x: jnp.sum(conv_ops.max_pool2x2(x, impl=i) ** 2))(x)
         for i in ("native", "matmul")]
    _close(g[1], g[0])   # continuous random input: no ties
    with conv_ops.use_impl("native"):
        assert conv_ops.resolve_impl() == "native"
    assert conv_ops.resolve_impl(backend="cpu") in conv_ops.IMPLS
    assert conv_ops.resolve_impl("auto", backend="gpu") == "native"
    assert conv_ops.resolve_impl("auto", backend="cpu") == "matmul"
    with pytest.raises(ValueError, match="unknown conv impl"):
        conv_ops.resolve_impl("fft")
