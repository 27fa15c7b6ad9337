"""Layout and error helpers of the parity tests against torch-made fixtures (NCHW) and models."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def nhwc(x: np.ndarray) -> jnp.ndarray:
    """A fixture's NCHW array as the library's NHWC."""
    return jnp.asarray(x.transpose(0, 2, 3, 1))


def nchw(x) -> np.ndarray:
    """The library's NHWC output in a fixture's (torch's) NCHW layout, contiguous."""
    return np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))


def max_err(a, b) -> float:
    """Max absolute difference of two arrays that must have the same shape."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)))
