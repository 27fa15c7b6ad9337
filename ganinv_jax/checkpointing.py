"""Every orbax call in the project lives here.

* `save_pytree` / `restore_pytree`: one parameter tree in one directory (converted GANs,
  the embedded default model). Saves go to a temporary sibling and are renamed into
  place, so a crash never leaves a half-written directory.
* Training-state and per-chunk managers are added next to these (one place that knows
  orbax's API, which changes between releases).
"""
from __future__ import annotations

import os
import shutil
import uuid
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp


def save_pytree(path: str, tree: Any) -> None:
    """Write `tree` (arrays or numpy) as an orbax checkpoint at `path`, atomically.

    `path` must not exist. The tree is written to `path + '.tmp-<uuid>'` first and renamed.
    """
    path = os.path.abspath(path)
    if os.path.exists(path):
        raise FileExistsError(f"{path}: already exists")
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp, jax.tree_util.tree_map(np.asarray, tree))
        os.rename(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


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
            lambda x: x if isinstance(x, jax.ShapeDtypeStruct)
            else jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), target)
        return ckptr.restore(path, abstract)
