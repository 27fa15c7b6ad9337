"""Abstract-then-sharded state creation and checkpoint resume (trainer independent).

`init_fn(key) -> state pytree` is traced once with `jax.eval_shape` (no FLOPs, no memory),
its leaves are given shardings by path rules, and then `jax.jit(init_fn, out_shardings=...)`
materializes every leaf directly in its final placement. Restoring a checkpoint uses the
same abstract tree (shapes + shardings) as the orbax target.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax

from ganinv_jax import checkpointing
from ganinv_jax import sharding as shd


def abstract_state(
    init_fn: Callable[[jax.Array], Any], key: jax.Array, mesh, rules=shd.REPLICATED_RULES
):
    """(abstract state with shardings attached, sharding tree)."""
    shapes = jax.eval_shape(init_fn, key)
    shardings = shd.tree_shardings(mesh, shapes, rules)
    abstract = jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
    )
    return abstract, shardings


def init_sharded(init_fn: Callable[[jax.Array], Any], key: jax.Array, shardings) -> Any:
    return jax.jit(init_fn, out_shardings=shardings)(key)


def restore_or_init(
    mgr,
    init_fn: Callable[[jax.Array], Any],
    key: jax.Array,
    mesh,
    rules=shd.REPLICATED_RULES,
    log: Optional[Callable[[str], None]] = None,
):
    """Latest checkpoint in `mgr` if there is one, else a fresh sharded state.

    Returns (state, shardings, restored_step or None).
    """
    abstract, shardings = abstract_state(init_fn, key, mesh, rules)
    step = mgr.latest_step() if mgr is not None else None
    if step is None:
        return init_sharded(init_fn, key, shardings), shardings, None
    if log:
        log(f"resuming from checkpoint step {step} in {mgr.directory}")
    return checkpointing.restore_train_state(mgr, abstract, step), shardings, step
