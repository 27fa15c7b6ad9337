"""GAN losses: closed forms, R1 against analytic gradients, lazy regularization, path length."""

import jax
import jax.numpy as jnp
import numpy as np

import ganinv_jax.losses as L


def test_logistic_losses_closed_form():
    r = np.array([-3.0, 0.0, 2.5], np.float32)
    f = np.array([1.0, -0.5, 4.0], np.float32)
    sig = lambda v: 1 / (1 + np.exp(-v.astype(np.float64)))
    np.testing.assert_allclose(L.g_nonsaturating_loss(jnp.asarray(f)), -np.log(sig(f)), rtol=1e-6)
    np.testing.assert_allclose(
        L.d_logistic_loss(jnp.asarray(r), jnp.asarray(f)),
        -np.log(sig(r)) - np.log(1 - sig(f)),
        rtol=1e-6,
    )
    # Stable for large logits (no inf).
    assert np.isfinite(float(L.g_nonsaturating_loss(jnp.asarray(-200.0))))


def _quadratic_d(w):
    # D(x) = sum(w * x^2) per sample -> dD/dx = 2 w x.
    return lambda x: jnp.sum(w * x * x, axis=(1, 2, 3))


def test_r1_penalty_analytic():
    key = jax.random.key(0)
    w = jax.random.normal(key, (1, 4, 4, 3))
    x = jax.random.normal(jax.random.key(1), (5, 4, 4, 3))
    r1 = np.asarray(L.r1_penalty(_quadratic_d(w), x))
    expect = np.sum(np.asarray(2 * w * x) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(r1, expect, rtol=1e-5)


def test_lazy_regularization_helpers():
    assert L.lazy_reg_gain(16) == 16.0 and L.lazy_reg_gain(None) == 1.0
    assert [bool(L.lazy_reg_active(s, 4)) for s in range(6)] == [
        True,
        False,
        False,
        False,
        True,
        False,
    ]
    lr, (b1, b2) = L.lazy_adam_hparams(0.002, (0.0, 0.99), 16)
    c = 16 / 17
    np.testing.assert_allclose([lr, b1, b2], [0.002 * c, 0.0, 0.99**c])


def test_stylegan2_global_and_d_loss():
    w = jax.random.normal(jax.random.key(0), (1, 4, 4, 3))
    d_fn = _quadratic_d(w)
    reals = jax.random.normal(jax.random.key(1), (4, 4, 4, 3))
    fakes = jax.random.normal(jax.random.key(2), (4, 4, 4, 3))
    rl, fl = d_fn(reals), d_fn(fakes)
    r1 = L.r1_penalty(d_fn, reals)
    out = L.stylegan2_global_loss(rl, fl, r1, r1_gamma=10.0, r1_gain=4.0)
    np.testing.assert_allclose(out["g"], jnp.mean(jax.nn.softplus(-fl)), rtol=1e-6)
    d_adv = jnp.mean(jax.nn.softplus(fl)) + jnp.mean(jax.nn.softplus(-rl))
    np.testing.assert_allclose(out["d"], d_adv + 4.0 * 5.0 * jnp.mean(r1), rtol=1e-6)
    step_fn = jax.jit(
        lambda s: L.stylegan2_d_loss(d_fn, reals, fakes, s, r1_gamma=10.0, r1_interval=4)
    )
    on, off = step_fn(8), step_fn(9)
    np.testing.assert_allclose(on["d"], out["d"], rtol=1e-5)  # gain 4 = interval
    np.testing.assert_allclose(off["d"], d_adv, rtol=1e-6)
    assert float(off["r1"]) == 0.0


def test_d_loss_does_not_backprop_into_fakes():
    w = jnp.ones((1, 2, 2, 1))
    d_fn = _quadratic_d(w)
    reals = jnp.ones((2, 2, 2, 1))
    g = jax.grad(lambda f: L.stylegan2_d_loss(d_fn, reals, f, 0)["d"])(jnp.ones((2, 2, 2, 1)))
    assert float(jnp.max(jnp.abs(g))) == 0.0


def test_path_length_penalty_linear_synthesis():
    # images = ws[:, 0] @ A reshaped; J^T y = A y, so lengths are |A y| for the noise y.
    a = jax.random.normal(jax.random.key(0), (6, 2 * 2 * 3))
    synth = lambda ws: jnp.reshape(jnp.mean(ws, axis=1) @ a, (ws.shape[0], 2, 2, 3))
    ws = jax.random.normal(jax.random.key(1), (3, 4, 6))
    key = jax.random.key(2)
    pen, new_mean = L.path_length_penalty(synth, ws, key, jnp.asarray(0.0), decay=0.5)
    y = np.asarray(jax.random.normal(key, (3, 2, 2, 3))) / 2.0
    # d/dws[:, l] of sum(y * synth) = (A y) / L for each of the L layers.
    g = (y.reshape(3, -1) @ np.asarray(a).T) / 4.0
    lengths = np.sqrt(np.sum(g * g, axis=-1))
    np.testing.assert_allclose(new_mean, 0.5 * lengths.mean(), rtol=1e-5)
    np.testing.assert_allclose(pen, (lengths - 0.5 * lengths.mean()) ** 2, rtol=1e-4)
