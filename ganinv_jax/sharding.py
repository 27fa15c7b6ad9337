"""The one place that knows about meshes: mesh creation and parameter sharding rules as data.

Every job (training, the inversion engine, the invert job's collective saves, benchmarks) makes
its mesh here. Rules are `(regex over the '/'-joined param path, rule)` pairs, first match wins,
and live in the config (`config.param_sharding`, as big_vision's `sharding_strategy`):

* `'replicate'`: every device holds the whole leaf (data parallelism; the default).
* `'fsdp'`: the leaf's largest dimension divisible by the 'data' axis size is split over
  'data' (parameters and optimizer moments sharded ZeRO-3 style; XLA inserts the all-gathers).
  Leaves with no such dimension (biases, scalars) stay replicated.
* a tuple such as `(None, 'data')`: that PartitionSpec literally.
"""

from __future__ import annotations

import re
from typing import Any, Sequence, Union

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
Rule = Union[str, tuple, P]
REPLICATED_RULES: tuple[tuple[str, Rule], ...] = ((r".*", "replicate"),)


def make_mesh(
    num_devices: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    explicit: bool = False,
) -> jax.sharding.Mesh:
    """A 1-D ('data',) mesh over all (or the first `num_devices`, or the given) global devices.

    Axis types are always passed explicitly. The trainer uses `Auto`: shardings are given at the
    jit boundary and XLA propagates them (`Explicit` sharding-in-types would reject the batch
    reshapes of StyleGAN2's minibatch-stddev layer). The inversion engine uses `explicit=True`:
    its per-image work runs under `shard_map`, where every device's shard is independent.
    """
    devs = list(devices) if devices is not None else jax.devices()
    if num_devices is not None:
        devs = devs[:num_devices]
    axis_type = AxisType.Explicit if explicit else AxisType.Auto
    return jax.make_mesh((len(devs),), (DATA_AXIS,), axis_types=(axis_type,), devices=devs)


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


def rules_from_config(pairs) -> tuple[tuple[str, Rule], ...]:
    """`config.param_sharding` (pairs of [regex, rule]) -> validated rules; None -> replicated."""
    if not pairs:
        return REPLICATED_RULES
    out = []
    for pair in pairs:
        pattern, rule = tuple(pair)
        re.compile(pattern)
        if isinstance(rule, str) and rule not in ("replicate", "fsdp"):
            raise ValueError(
                f"param_sharding rule {rule!r} for {pattern!r}: want 'replicate', "
                "'fsdp' or a PartitionSpec tuple"
            )
        out.append((pattern, rule if isinstance(rule, (str, P)) else P(*rule)))
    return tuple(out)


def _fsdp_spec(shape: Sequence[int], axis_size: int) -> P:
    dims = [d for d in np.argsort(shape)[::-1] if shape[d] % axis_size == 0 and shape[d] > 1]
    if not dims or axis_size == 1:
        return P()
    spec = [None] * len(shape)
    spec[int(dims[0])] = DATA_AXIS
    return P(*spec)


def spec_for(
    path: str, rules: Sequence[tuple[str, Rule]], shape: Sequence[int] = (), axis_size: int = 1
) -> P:
    """The PartitionSpec of the leaf at `path` with `shape` on a 'data' axis of `axis_size`."""
    for pattern, rule in rules:
        if re.fullmatch(pattern, path):
            if rule == "replicate":
                return P()
            if rule == "fsdp":
                return _fsdp_spec(tuple(shape), axis_size)
            return rule if isinstance(rule, P) else P(*rule)
    raise ValueError(f"no sharding rule matches {path!r}")


def tree_shardings(mesh, abstract_tree: Any, rules: Sequence[tuple[str, Rule]] = REPLICATED_RULES):
    """NamedShardings for every leaf of an (abstract) tree, by path rules."""
    size = mesh.shape[DATA_AXIS]
    return jax.tree_util.tree_map_with_path(
        lambda p, x: NamedSharding(mesh, spec_for(path_str(p), rules, np.shape(x), size)),
        abstract_tree,
    )


def batch_sharding(mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def host_to_global(local_batch: np.ndarray, mesh) -> jax.Array:
    """This process's rows -> one global array sharded over 'data' (multi-process safe): the
    global batch is every process's rows, in process order."""
    local_batch = np.asarray(local_batch)
    global_shape = (local_batch.shape[0] * jax.process_count(),) + local_batch.shape[1:]
    return jax.make_array_from_process_local_data(batch_sharding(mesh), local_batch, global_shape)
