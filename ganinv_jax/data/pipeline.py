"""Per-process batching with randomness that is a pure function of (seed, step).

The trainer never iterates a stateful stream: the global batch of step `s` is
`perm(seed, epoch)[offset : offset + global_batch]`, and process `p` takes its contiguous
slice of it (the same rows `tfds.split_for_jax_process`-style sharding would give it, but
addressable by step). So resuming at step `s` after a kill reads exactly the batches an
uninterrupted run would have read, for any process count.

`tf_dataset` offers the same arrays as a `tf.data` pipeline (sharded per process) for
consumers that want one (evaluation over a whole split, other trainers).
"""
from __future__ import annotations

import dataclasses

import numpy as np


def to_model_range(images_u8: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return images_u8.astype(np.float32) * (2.0 / 255.0) - 1.0


def batch_indices(seed: int, step: int, batch_size: int, n: int) -> np.ndarray:
    """Row indices of the global batch of `step`: epochs of seeded permutations, no drop."""
    if batch_size > n:
        raise ValueError(f"batch size {batch_size} > dataset size {n}")
    per_epoch = n // batch_size           # the tail of each permutation is dropped
    epoch, k = divmod(int(step), per_epoch)
    perm = np.random.default_rng([int(seed), epoch]).permutation(n)
    return perm[k * batch_size:(k + 1) * batch_size]


def local_batch_slice(global_batch_size: int, process_index: int, process_count: int) -> slice:
    if global_batch_size % process_count:
        raise ValueError(f"global batch {global_batch_size} not divisible by "
                         f"{process_count} processes")
    per = global_batch_size // process_count
    return slice(process_index * per, (process_index + 1) * per)


@dataclasses.dataclass(frozen=True)
class ArraySource:
    """An in-memory uint8 NHWC array (every process holds it; datasets here are small)."""
    images: np.ndarray

    def __len__(self):
        return self.images.shape[0]

    def local_batch(self, seed: int, step: int, global_batch_size: int,
                    process_index: int = 0, process_count: int = 1) -> np.ndarray:
        idx = batch_indices(seed, step, global_batch_size, len(self))
        idx = idx[local_batch_slice(global_batch_size, process_index, process_count)]
        return to_model_range(self.images[idx])


def global_batch(source: ArraySource, seed: int, step: int, batch_size: int) -> np.ndarray:
    return source.local_batch(seed, step, batch_size, 0, 1)


def tf_dataset(images: np.ndarray, batch_size: int, process_index: int = 0,
               process_count: int = 1, shuffle_seed=None, drop_remainder: bool = False):
    """A tf.data pipeline over this process's shard of `images`, yielding float32 [-1, 1]."""
    import tensorflow as tf
    ds = tf.data.Dataset.from_tensor_slices(images)
    ds = ds.shard(process_count, process_index)
    if shuffle_seed is not None:
        ds = ds.shuffle(min(len(images), 10000), seed=shuffle_seed)
    ds = ds.map(lambda x: tf.cast(x, tf.float32) * (2.0 / 255.0) - 1.0,
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
