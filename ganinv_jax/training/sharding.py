"""The one place that knows about meshes: mesh creation and sharding rules as data.

Rules are `(regex over the '/'-joined param path, PartitionSpec)` pairs, first match wins.
The default is data parallelism: every parameter replicated, the batch split over 'data'.
An fsdp rule set would add e.g. `(r'.*/weight$', P(None, None, None, 'data'))` entries
here without touching any trainer.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
REPLICATED_RULES: tuple[tuple[str, P], ...] = ((r".*", P()),)


def make_mesh(num_devices: int | None = None, devices: Sequence[jax.Device] | None = None):
    """A 1-D ('data',) mesh over all (or the first `num_devices`) global devices.

    The axis type is passed explicitly as `Auto`: shardings are given at the jit boundary
    (in/out shardings) and XLA propagates them; `Explicit` sharding-in-types would reject
    the batch reshapes of StyleGAN2's minibatch-stddev layer.
    """
    devs = list(devices) if devices is not None else jax.devices()
    if num_devices is not None:
        devs = devs[:num_devices]
    return jax.make_mesh((len(devs),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devs)


def path_str(path) -> str:
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def spec_for(path: str, rules: Sequence[tuple[str, P]]) -> P:
    for pattern, spec in rules:
        if re.fullmatch(pattern, path):
            return spec
    raise ValueError(f"no sharding rule matches {path!r}")


def tree_shardings(mesh, abstract_tree: Any, rules: Sequence[tuple[str, P]] = REPLICATED_RULES):
    """NamedShardings for every leaf of an (abstract) tree, by path rules."""
    return jax.tree_util.tree_map_with_path(
        lambda p, _: NamedSharding(mesh, spec_for(path_str(p), rules)), abstract_tree)


def batch_sharding(mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def host_to_global(local_batch: np.ndarray, mesh) -> jax.Array:
    """This process's rows -> one global array sharded over 'data' (multi-process safe)."""
    return jax.make_array_from_process_local_data(batch_sharding(mesh), local_batch)
