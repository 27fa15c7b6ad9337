"""Per-process batching with randomness that is a pure function of (seed, step).

The trainer never iterates a stateful stream: the global batch of step `s` is
`perm(seed, epoch)[offset : offset + global_batch]`, and process `p` takes its contiguous
slice of it (the same rows `tfds.split_for_jax_process`-style sharding would give it, but
addressable by step). So resuming at step `s` after a kill reads exactly the batches an
uninterrupted run would have read, for any process count.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ganinv_jax.data.images import from_uint8


def batch_indices(seed: int, step: int, batch_size: int, n: int) -> np.ndarray:
    """Row indices of the global batch of `step`: epochs of seeded permutations, no drop."""
    if batch_size > n:
        raise ValueError(f"batch size {batch_size} > dataset size {n}")
    per_epoch = n // batch_size  # the tail of each permutation is dropped
    epoch, k = divmod(int(step), per_epoch)
    perm = np.random.default_rng([int(seed), epoch]).permutation(n)
    return perm[k * batch_size : (k + 1) * batch_size]


def local_batch_slice(global_batch_size: int, process_index: int, process_count: int) -> slice:
    if global_batch_size % process_count:
        raise ValueError(
            f"global batch {global_batch_size} not divisible by {process_count} processes"
        )
    per = global_batch_size // process_count
    return slice(process_index * per, (process_index + 1) * per)


@dataclasses.dataclass(frozen=True)
class ArraySource:
    """An in-memory uint8 NHWC array (every process holds it; datasets here are small)."""

    images: np.ndarray

    def __len__(self):
        return self.images.shape[0]

    def local_batch(
        self,
        seed: int,
        step: int,
        global_batch_size: int,
        process_index: int = 0,
        process_count: int = 1,
    ) -> np.ndarray:
        idx = batch_indices(seed, step, global_batch_size, len(self))
        idx = idx[local_batch_slice(global_batch_size, process_index, process_count)]
        return from_uint8(self.images[idx])


def global_batch(source: ArraySource, seed: int, step: int, batch_size: int) -> np.ndarray:
    return source.local_batch(seed, step, batch_size, 0, 1)
