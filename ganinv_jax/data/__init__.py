"""Datasets: Fashion-MNIST from Debian's idx files, any folder of images, per-process batching.

Everything returns uint8 NHWC numpy arrays; `to_model_range` converts to float32 [-1, 1].
"""
from ganinv_jax.data.fashion_mnist import (DEFAULT_DIR, DatasetError, load_fashion_mnist,
                                           read_idx_gz)
from ganinv_jax.data.image_folder import load_image_folder
from ganinv_jax.data.pipeline import (ArraySource, batch_indices, global_batch,
                                      local_batch_slice, to_model_range, tf_dataset)

__all__ = ["DEFAULT_DIR", "DatasetError", "load_fashion_mnist", "read_idx_gz",
           "load_image_folder", "ArraySource", "batch_indices", "global_batch",
           "local_batch_slice", "to_model_range", "tf_dataset"]
