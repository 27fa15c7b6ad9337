"""base.adam_step: optax.adam's math, and an uncommitted step that changes nothing."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ganinv_jax.inversion import base


def _params():
    k1, k2 = jax.random.split(jax.random.key(0))
    return {"w": jax.random.normal(k1, (3, 4)), "b": {"c": jax.random.normal(k2, (5,))}}


def _grads(i):
    return jax.tree_util.tree_map(
        lambda x: jax.random.normal(jax.random.fold_in(jax.random.key(1), i), x.shape), _params()
    )


@pytest.mark.parametrize(
    "lr", [3e-2, base.tuning_lr(3e-2, 6, rampdown=0.5, rampup=0.3)], ids=["const", "ramp"]
)
def test_adam_step_equals_optax_adam(lr):
    tx = optax.adam(lr)
    p_ref, o_ref = _params(), tx.init(_params())
    p, o = _params(), base.adam_init(_params())
    step = jax.jit(lambda p, o, g: base.adam_step(p, o, g, lr, True))
    for i in range(6):
        g = _grads(i)
        u, o_ref = tx.update(g, o_ref, p_ref)
        p_ref = optax.apply_updates(p_ref, u)
        p, o = step(p, o, g)
        for a, b in zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(p_ref)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert int(o["count"]) == 6
    assert (
        max(
            float(jnp.abs(a - b).max())
            for a, b in zip(*map(jax.tree_util.tree_leaves, (p, _params())))
        )
        > 1e-2
    )  # it moved


def test_uncommitted_step_changes_nothing_even_with_nonfinite_grads():
    step = jax.jit(lambda p, o, g, c: base.adam_step(p, o, g, 1e-2, c))
    p, o = _params(), base.adam_init(_params())
    for i in range(2):
        p, o = step(p, o, _grads(i), True)
    bad = jax.tree_util.tree_map(lambda g: g.at[0].set(jnp.nan).at[-1].set(jnp.inf), _grads(2))
    p2, o2 = step(p, o, bad, False)
    for a, b in zip(jax.tree_util.tree_leaves((p2, o2)), jax.tree_util.tree_leaves((p, o))):
        np.testing.assert_array_equal(a, b)
    # the held step did not advance the count: the next committed step is optax's third
    p3, _ = step(p2, o2, _grads(2), True)
    p3_ref, _ = step(p, o, _grads(2), True)
    for a, b in zip(jax.tree_util.tree_leaves(p3), jax.tree_util.tree_leaves(p3_ref)):
        np.testing.assert_array_equal(a, b)


def test_per_image_commit_under_vmap():
    """The engine's case: a batch of images, each with its own weights and its own commit."""
    stack = lambda t: jax.tree_util.tree_map(lambda x: jnp.stack([x, 2 * x, -x]), t)  # noqa: E731
    p, o = stack(_params()), jax.vmap(base.adam_init)(stack(_params()))
    g = stack(_grads(0))
    commit = jnp.array([True, False, True])
    p1, o1 = jax.jit(jax.vmap(lambda p, o, g, c: base.adam_step(p, o, g, 1e-2, c)))(p, o, g, commit)
    np.testing.assert_array_equal(o1["count"], [1, 0, 1])
    for i in range(3):
        row = lambda t: jax.tree_util.tree_map(lambda x: x[i], t)  # noqa: E731
        want = base.adam_step(row(p), row(o), row(g), 1e-2, bool(commit[i]))[0]
        for a, b in zip(jax.tree_util.tree_leaves(row(p1)), jax.tree_util.tree_leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        moved = [
            np.abs(a - b).max() for a, b in zip(*map(jax.tree_util.tree_leaves, (row(p1), row(p))))
        ]
        assert (min(moved) > 0) if commit[i] else (max(moved) == 0)
