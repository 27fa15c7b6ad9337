"""Maximum mean discrepancy with a multi-bandwidth RBF kernel (InvGAN's latent prior matching).

InvGAN pulls the distribution of inferred latents D_w(x) towards the prior w = M(z). A single
bandwidth is blind to discrepancies at other scales, so the kernel is a sum of RBFs,
k(a, b) = sum_s exp(-|a - b|^2 / (2 s^2)). We use the unbiased estimator (Gretton et al. 2012,
eq. 3), which drops the i == j terms: its expectation is exactly MMD^2, so it can be slightly
negative when the two sets come from the same distribution.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

DEFAULT_SIGMAS = (1.0, 2.0, 4.0, 8.0, 16.0)


def _sq_dists(a: jax.Array, b: jax.Array) -> jax.Array:
    """Pairwise squared Euclidean distances [N, M] via the Gram trick (O(NM) memory, not O(NMD))."""
    aa = jnp.sum(a * a, axis=1)[:, None]
    bb = jnp.sum(b * b, axis=1)[None, :]
    ab = jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)
    return jnp.maximum(aa + bb - 2.0 * ab, 0.0)


def rbf_kernel(a: jax.Array, b: jax.Array, sigmas: Sequence[float] = DEFAULT_SIGMAS) -> jax.Array:
    """Sum over bandwidths of exp(-d^2 / (2 sigma^2)) -> [N, M]."""
    d2 = _sq_dists(a, b)
    return sum(jnp.exp(-d2 / (2.0 * float(s) ** 2)) for s in sigmas)


def mmd_rbf(a: jax.Array, b: jax.Array, sigmas: Sequence[float] = DEFAULT_SIGMAS) -> jax.Array:
    """Unbiased MMD^2 between sample sets a [N, D] and b [M, D] (N, M >= 2) -> scalar."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"mmd_rbf: expected [N, D] and [M, D] with equal D, got {a.shape} and {b.shape}"
        )
    n, m = a.shape[0], b.shape[0]
    if n < 2 or m < 2:
        raise ValueError(
            f"mmd_rbf: the unbiased estimator needs >= 2 samples per set, got {n} and {m}"
        )
    if not sigmas:
        raise ValueError("mmd_rbf: sigmas must be a non-empty sequence")
    return _mmd_jit(a, b, tuple(float(s) for s in sigmas))


@functools.partial(jax.jit, static_argnames=("sigmas",))
def _mmd_jit(a, b, sigmas):
    n, m = a.shape[0], b.shape[0]
    a = a.astype(jnp.float32)
    b = b.astype(jnp.float32)
    kaa, kbb, kab = rbf_kernel(a, a, sigmas), rbf_kernel(b, b, sigmas), rbf_kernel(a, b, sigmas)
    # Off-diagonal sums (the i == j terms are what makes the plain V-statistic biased).
    term_aa = (jnp.sum(kaa) - jnp.trace(kaa)) / (n * (n - 1))
    term_bb = (jnp.sum(kbb) - jnp.trace(kbb)) / (m * (m - 1))
    return term_aa + term_bb - 2.0 * jnp.mean(kab)
