"""Datasets and image I/O: Fashion-MNIST from Debian's idx files, any folder of images, the one
image I/O layer (`images`), per-process batching.

Datasets return uint8 NHWC numpy arrays; `from_uint8` converts to float32 [-1, 1].
"""

from ganinv_jax.data.fashion_mnist import DEFAULT_DIR, DatasetError, load_fashion_mnist, read_idx_gz
from ganinv_jax.data.images import from_uint8, load_image_folder, to_uint8
from ganinv_jax.data.pipeline import ArraySource, batch_indices, global_batch, local_batch_slice

__all__ = [
    "DEFAULT_DIR",
    "DatasetError",
    "load_fashion_mnist",
    "read_idx_gz",
    "load_image_folder",
    "from_uint8",
    "to_uint8",
    "ArraySource",
    "batch_indices",
    "global_batch",
    "local_batch_slice",
]
