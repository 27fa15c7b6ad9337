"""Every orbax call in the project lives here.

* `save_pytree` / `restore_pytree`: one parameter tree in one directory (converted GANs,
  the embedded default model).
* `train_checkpoint_manager` and friends: the trainers' step checkpoints (async saves).
* `save_sharded_pytree` / `restore_sharded_pytree`: the invert job's per-chunk results.
One place that knows orbax's API, which changes between releases.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from ganinv_jax.errors import UserError


def save_pytree(path: str, tree: Any) -> None:
    """Write `tree` (arrays or numpy) as an orbax checkpoint at `path` (which must not exist).

    Orbax writes into a temporary directory and renames it when complete, so a crash never
    leaves a half-written `path`."""
    path = os.path.abspath(path)
    if os.path.exists(path):
        raise FileExistsError(f"{path}: already exists")
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, jax.tree_util.tree_map(np.asarray, tree))
        ckptr.wait_until_finished()


def restore_pytree(path: str, target: Optional[Any] = None) -> Any:
    """Read a tree written by `save_pytree`. With `target` (arrays or ShapeDtypeStructs),
    shapes/dtypes/shardings are checked against it; without, numpy-backed arrays come back."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no checkpoint directory")
    with ocp.StandardCheckpointer() as ckptr:
        if target is None:
            return ckptr.restore(path)
        abstract = jax.tree_util.tree_map(
            lambda x: (
                x
                if isinstance(x, jax.ShapeDtypeStruct)
                else jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
            ),
            target,
        )
        return ckptr.restore(path, abstract)


# ----------------------------------------------------------------------------- training state


class MissingCheckpointError(UserError, FileNotFoundError):
    pass


def train_checkpoint_manager(directory: str, max_to_keep: int = 3) -> ocp.CheckpointManager:
    """An orbax CheckpointManager for a trainer's state under `directory` (created if absent).

    Saves are asynchronous; call `mgr.wait_until_finished()` before reading or exiting.
    """
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=True
    )
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save_train_state(mgr: ocp.CheckpointManager, step: int, state: Any, force: bool = True) -> bool:
    """Save `state` (a pytree of jax arrays, possibly sharded) as checkpoint `step`."""
    return mgr.save(int(step), args=ocp.args.StandardSave(state), force=force)


def restore_train_state(
    mgr: ocp.CheckpointManager, abstract_state: Any, step: Optional[int] = None
) -> Any:
    """Restore checkpoint `step` (default: latest) into the structure, shapes and shardings of
    `abstract_state` (a tree of `jax.ShapeDtypeStruct` with `.sharding`)."""
    steps = list(mgr.all_steps())
    if not steps:
        raise MissingCheckpointError(f"{mgr.directory}: no training checkpoint to restore")
    step = max(steps) if step is None else step
    if step not in steps:
        raise MissingCheckpointError(
            f"{mgr.directory}: no checkpoint of step {step} (have {sorted(steps)})"
        )
    return mgr.restore(int(step), args=ocp.args.StandardRestore(abstract_state))


# ----------------------------------------------------------------------------- per-chunk results


def save_sharded_pytree(path: str, tree: Any) -> None:
    """Collective save of a tree of (possibly multi-host sharded) jax.Arrays: every process calls
    it with the same `path`, each writes its own shards (the invert job's per-chunk tuned
    generators / GMM params). Orbax writes into a temporary directory and renames it when all
    processes are done, so a kill leaves no half-written `path`; an existing `path` (an
    uncommitted earlier attempt) is replaced."""
    path = os.path.abspath(path)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, tree, force=True)
        ckptr.wait_until_finished()


def restore_sharded_pytree(path: str) -> Any:
    """Read a tree written by `save_sharded_pytree` on ANY topology (e.g. a pod's chunk on a
    laptop): every array comes back whole, on this process's first device."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no checkpoint directory")
    device = jax.local_devices()[0]
    with ocp.StandardCheckpointer() as ckptr:
        meta = ckptr.metadata(path)
        tree = getattr(meta, "item_metadata", meta)
        tree = getattr(tree, "tree", tree)
        abstract = jax.tree_util.tree_map(
            lambda m: jax.ShapeDtypeStruct(
                tuple(m.shape), m.dtype, sharding=jax.sharding.SingleDeviceSharding(device)
            ),
            tree,
        )
        return ckptr.restore(path, abstract)
