"""Latent directions for editing what was inverted: SeFa, GANSpace, InterFaceGAN, and the edits.

Small functions of numpy arrays (and of a `pretrained.PretrainedGAN` where a generator is needed):

* `sefa(g_params, cfg, layers)` -- closed-form factorization (Shen & Zhou, CVPR 2021): the
  style affine of a synthesis layer maps w [w_dim] to styles [C] by the matrix A_l; stacking the
  layers of a range, A = [A_1; A_2; ...], the directions n that change the styles most,
  argmax |A n|^2 with |n| = 1, are the eigenvectors of AᵀA = sum_l A_lᵀ A_l, sorted by
  eigenvalue (descending). A_l is the layer's effective matrix (equalized-LR gain applied). The
  layer range is over the `num_ws` entries of W+ (`layers=(start, stop)`; an affine belongs to
  the W+ entry that feeds it); ToRGB affines are left out by default (`include_torgb`).
* `pca_directions(samples)` / `ganspace(gan, n, seed)` -- GANSpace (Härkönen et al. 2020) in W:
  PCA of n mapped latents w = mapping(z), z ~ N(0, I) (no truncation): the principal axes,
  sorted by variance, with each component's standard deviation.
* `fit_linear_direction(a, b)` / `interfacegan_from_encoder(gan, A, B)` -- InterFaceGAN (Shen et
  al. 2020): a linear classifier (L2-regularized logistic regression, Newton's method, numpy) of
  class A vs class B latents; the direction is the unit normal of its hyperplane, pointing from
  A to B. `interfacegan_from_encoder` labels latents with the default model's InvGAN encoder
  (`gan.encode`) of a seeded subset of Fashion-MNIST train images (`FMNIST_CLASSES`).
* `apply(latents, direction, strength, layers)`, `sweep`, `interpolate`, `mix` (style mixing
  through `models.stylegan2.style_mix`, the project's one style-mixing primitive).
* `Direction`: one direction and its metadata; `save` / `load` (.npz through
  `ganinv_jax.atomic.write_npz`; a corrupt or mismatched file is a one-line `DirectionError`
  naming the file).
* `resolve(spec, gan)` / `resolve_all(specs, gan)`: the contract specs `sefa:K`, `ganspace:K`,
  `interfacegan:A-B`, or a path to a saved `.npz`; every spec is checked against the generator
  (w_dim, num_ws, K in range, known class, an encoder for InterFaceGAN) before any is computed.

Strength units (`apply`): SeFa and InterFaceGAN directions are unit vectors in W and `strength`
is the distance moved in W; a GANSpace direction moves `strength` standard deviations of its
component (`Direction.scale` = that std). The same unit vector is added to every W+ entry the
direction's layer mask selects.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import zipfile
from typing import Any, Optional, Sequence

import numpy as np

from ganinv_jax import atomic
from ganinv_jax.data.fashion_mnist import CLASS_NAMES
from ganinv_jax.errors import UserError

KINDS = ("sefa", "ganspace", "interfacegan")
# Fashion-MNIST labels 0..9 as the short keys of `interfacegan:A-B`: the last word of each
# class name without punctuation (tshirt, trouser, pullover, dress, coat, sandal, shirt, sneaker,
# bag, boot).
FMNIST_CLASSES = tuple(
    re.sub(r"[^a-z]", "", name.split("/")[0].split()[-1]) for name in CLASS_NAMES
)
FORMAT = "ganinv_jax.direction"
VERSION = 1
_UNIT_TOL = 1e-3  # a saved vector's norm must be 1 within this


class DirectionError(UserError, ValueError):
    """A bad direction spec or file; the message is one line naming the spec or the file."""


# ----------------------------------------------------------------------------- the record


@dataclasses.dataclass(frozen=True, eq=False)
class Direction:
    """One editing direction in W and the W+ entries (`mask`) it moves.

    vector: [w_dim] float32, unit norm. mask: [num_ws] bool. scale: W distance of one unit of
    strength (1 for SeFa / InterFaceGAN, the component's std for GANSpace). value: the SeFa
    eigenvalue, the GANSpace std, or InterFaceGAN's training accuracy. classes: (A, B) for
    InterFaceGAN. generator: `generator_fingerprint` of the G it was computed from;
    generator_desc: a human-readable description of that G.
    """

    kind: str
    vector: np.ndarray
    mask: np.ndarray
    index: int = -1
    scale: float = 1.0
    value: float = float("nan")
    classes: tuple = ()
    generator: str = ""
    generator_desc: str = ""
    name: str = ""

    @property
    def w_dim(self) -> int:
        return int(self.vector.shape[0])

    @property
    def num_ws(self) -> int:
        return int(self.mask.shape[0])

    @property
    def layers(self) -> Optional[tuple[int, int]]:
        """(start, stop) when the mask is one contiguous range, else None."""
        on = np.flatnonzero(self.mask)
        if on.size and on[-1] - on[0] + 1 == on.size:
            return int(on[0]), int(on[-1]) + 1
        return None


def save(path: str, d: Direction) -> None:
    """Write `d` as an .npz (atomically)."""
    atomic.write_npz(
        path,
        format=np.asarray(FORMAT),
        version=np.asarray(VERSION, np.int32),
        kind=np.asarray(d.kind),
        name=np.asarray(d.name),
        vector=np.asarray(d.vector, np.float32),
        mask=np.asarray(d.mask, np.bool_),
        index=np.asarray(d.index, np.int64),
        scale=np.asarray(d.scale, np.float64),
        value=np.asarray(d.value, np.float64),
        classes=np.asarray(list(d.classes), dtype=np.str_),
        generator=np.asarray(d.generator),
        generator_desc=np.asarray(d.generator_desc),
        w_dim=np.asarray(d.w_dim, np.int64),
        num_ws=np.asarray(d.num_ws, np.int64),
    )


def load(path: str, w_dim: Optional[int] = None, num_ws: Optional[int] = None) -> Direction:
    """Read a direction .npz; checks it and, if given, that it fits `w_dim` / `num_ws`.

    Raises `DirectionError` (one line naming the file) on a missing, corrupt or mismatched file.
    """
    if not os.path.isfile(path):
        raise DirectionError(f"{path}: no such direction file")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DirectionError(f"{path}: not a readable .npz direction file ({msg})") from None
    if str(data.get("format", "")) != FORMAT:
        raise DirectionError(f"{path}: not a ganinv_jax direction file (no format={FORMAT!r})")
    missing = [k for k in ("kind", "vector", "mask", "scale", "w_dim", "num_ws") if k not in data]
    if missing:
        raise DirectionError(f"{path}: corrupt direction file (missing {', '.join(missing)})")
    try:
        d = Direction(
            kind=str(data["kind"]),
            vector=np.asarray(data["vector"], np.float32),
            mask=np.asarray(data["mask"]).astype(np.bool_),
            index=int(data.get("index", -1)),
            scale=float(data["scale"]),
            value=float(data.get("value", float("nan"))),
            classes=tuple(str(c) for c in np.atleast_1d(data.get("classes", ()))),
            generator=str(data.get("generator", "")),
            generator_desc=str(data.get("generator_desc", "")),
            name=str(data.get("name", "")) or os.path.basename(path),
        )
        stated = (int(data["w_dim"]), int(data["num_ws"]))
    except (TypeError, ValueError) as e:
        raise DirectionError(f"{path}: corrupt direction file ({e})") from None
    _check(d, path, stated)
    if w_dim is not None and d.w_dim != w_dim:
        raise DirectionError(
            f"{path}: direction is for w_dim {d.w_dim}, this generator has w_dim {w_dim}"
        )
    if num_ws is not None and d.num_ws != num_ws:
        raise DirectionError(
            f"{path}: direction has {d.num_ws} layers (num_ws), this generator has {num_ws}"
        )
    return d


def _check(d: Direction, where: str, stated: tuple[int, int]) -> None:
    if d.kind not in KINDS:
        raise DirectionError(f"{where}: unknown direction kind {d.kind!r} (known: {KINDS})")
    if d.vector.ndim != 1 or d.mask.ndim != 1 or (d.w_dim, d.num_ws) != stated:
        raise DirectionError(
            f"{where}: corrupt direction file (vector {d.vector.shape}, mask {d.mask.shape}, "
            f"stated w_dim {stated[0]}, num_ws {stated[1]})"
        )
    norm = float(np.linalg.norm(d.vector))
    if not np.all(np.isfinite(d.vector)) or abs(norm - 1.0) > _UNIT_TOL:
        raise DirectionError(f"{where}: corrupt direction file (vector norm {norm:.6g}, want 1)")
    if not d.mask.any():
        raise DirectionError(f"{where}: corrupt direction file (its layer mask selects nothing)")
    if not (math.isfinite(d.scale) and d.scale > 0):
        raise DirectionError(f"{where}: corrupt direction file (scale {d.scale})")


# ----------------------------------------------------------------------------- edits


def layer_mask(layers: Optional[Sequence[int]], num_ws: int) -> np.ndarray:
    """`None` (all) or (start, stop) over the num_ws W+ entries -> bool mask [num_ws]."""
    mask = np.zeros((num_ws,), np.bool_)
    if layers is None:
        mask[:] = True
        return mask
    start, stop = (int(x) for x in layers)
    if not 0 <= start < stop <= num_ws:
        raise ValueError(f"layers ({start}, {stop}) not a non-empty range within [0, {num_ws}]")
    mask[start:stop] = True
    return mask


def apply(latents, direction: Direction, strength: float, layers: Optional[Sequence[int]] = None):
    """Edited W+ latents [..., num_ws, w_dim]: the W+ entries of the direction's mask (or of
    `layers=(start, stop)`, which replaces it) move by `strength * direction.scale` along
    `direction.vector`; the other entries are returned unchanged (exactly). numpy in, numpy out;
    a jax array in, a jax array out."""
    shape = tuple(latents.shape[-2:])
    if shape != (direction.num_ws, direction.w_dim):
        raise ValueError(
            f"latents must be [..., {direction.num_ws}, {direction.w_dim}], got {latents.shape}"
        )
    mask = direction.mask if layers is None else layer_mask(layers, direction.num_ws)
    shift = np.where(
        mask[:, None], float(strength) * direction.scale * direction.vector.astype(np.float64), 0.0
    ).astype(latents.dtype)
    return latents + shift


def sweep(latent, direction: Direction, strengths, layers=None) -> np.ndarray:
    """One latent [num_ws, w_dim] edited at each strength -> [S, num_ws, w_dim]."""
    latent = np.asarray(latent)
    return np.stack([apply(latent, direction, s, layers) for s in np.atleast_1d(strengths)])


def interpolate(a, b, t):
    """Linear interpolation in W+: (1 - t) a + t b; t a scalar in [0, 1] or an array [T] (then
    [T, *a.shape]). t = 0 gives a and t = 1 gives b exactly."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"interpolate: shapes differ, {a.shape} vs {b.shape}")
    t_arr = np.asarray(t, np.float64)
    if np.any(t_arr < 0) or np.any(t_arr > 1):
        raise ValueError(f"interpolate: t must lie in [0, 1], got {t}")
    tt = t_arr.reshape(t_arr.shape + (1,) * a.ndim)
    return ((1.0 - tt) * a + tt * b).astype(np.result_type(a.dtype, b.dtype))


def mix(a, b, index: int) -> np.ndarray:
    """Style mixing of two inverted latents: W+ entries [:index] from `a` (coarse styles) and
    [index:] from `b` (`models.stylegan2.style_mix`). a, b: [num_ws, w_dim] or batches."""
    from ganinv_jax.models.stylegan2 import style_mix

    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim not in (2, 3):
        raise ValueError(
            f"mix: want two [num_ws, w_dim] (or batched) latents, got {a.shape}, {b.shape}"
        )
    if not 0 <= index <= a.shape[-2]:
        raise ValueError(f"mix: index must lie in [0, {a.shape[-2]}], got {index}")
    single = a.ndim == 2
    out = np.asarray(style_mix(a[None] if single else a, b[None] if single else b, int(index)))
    return out[0] if single else out


# ----------------------------------------------------------------------------- SeFa


def _synthesis_params(tree) -> Any:
    """G variables {'params': ...}, G params {'mapping', 'synthesis'} or the synthesis subtree."""
    if "params" in tree:
        tree = tree["params"]
    return tree["synthesis"] if "synthesis" in tree else tree


def style_layers(cfg, include_torgb: bool = False) -> list[tuple[int, tuple[str, ...]]]:
    """(W+ index, path in the synthesis params) of every style affine, in synthesis order: the
    W+ entry that feeds each modulated conv (and ToRGB) layer, as `SynthesisNetwork` reads ws."""
    out = []
    w_idx = 0
    for r in cfg.resolutions:
        rgb = include_torgb and (r == cfg.resolution or cfg.architecture == "skip")
        convs = ("conv1",) if r == 4 else ("conv0", "conv1")
        for k, conv in enumerate(convs):
            out.append((w_idx + k, (f"b{r}", conv, "affine")))
        if rgb:
            out.append((w_idx + len(convs), (f"b{r}", "torgb", "affine")))
        w_idx += len(convs)
    return out


def style_matrices(g_params, cfg, layers=None, include_torgb: bool = False) -> list[np.ndarray]:
    """Effective affine matrices [w_dim, C] (styles = w @ A + b; the equalized-LR gain
    1/sqrt(w_dim) applied, and ToRGB's extra 1/sqrt(C)) of the layers fed by W+ entries in
    `layers` = (start, stop) (None: all)."""
    syn = _synthesis_params(g_params)
    mask = layer_mask(layers, cfg.num_ws)
    mats = []
    for i, path in style_layers(cfg, include_torgb):
        if not mask[i]:
            continue
        node = syn
        for k in path:
            node = node[k]
        w = np.asarray(node["weight"], np.float64) / math.sqrt(cfg.w_dim)
        if path[1] == "torgb":
            w = w / math.sqrt(w.shape[1])
        mats.append(w)
    return mats


def _fix_signs(rows: np.ndarray) -> np.ndarray:
    """Eigenvectors have no sign: make each row's largest-magnitude entry positive."""
    idx = np.argmax(np.abs(rows), axis=1)
    signs = np.sign(rows[np.arange(rows.shape[0]), idx])
    return rows * np.where(signs == 0, 1.0, signs)[:, None]


def sefa(g_params, cfg, layers=None, include_torgb: bool = False):
    """SeFa: (directions [w_dim, w_dim] (rows, unit, orthonormal), eigenvalues [w_dim]
    (descending), mask [num_ws]) from the eigen-decomposition of AᵀA = sum_l A_l A_lᵀ over the
    style affines A_l [w_dim, C] of the layers fed by W+ entries in `layers`."""
    mats = style_matrices(g_params, cfg, layers, include_torgb)
    if not mats:
        raise ValueError(
            f"no style layers in the W+ range {layers} (include_torgb={include_torgb})"
        )
    ata = sum(m @ m.T for m in mats)
    vals, vecs = np.linalg.eigh(ata)
    order = np.argsort(-vals, kind="stable")
    rows = _fix_signs(vecs[:, order].T)
    return rows.astype(np.float32), vals[order], layer_mask(layers, cfg.num_ws)


# ----------------------------------------------------------------------------- GANSpace


def pca_directions(samples) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA of samples [N, w_dim]: (components [K, w_dim] (rows, unit, orthonormal, by variance
    descending), stds [K] (per-component standard deviation), mean [w_dim]); K = min(N, w_dim)."""
    x = np.asarray(samples, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"pca_directions: want [N >= 2, w_dim] samples, got {x.shape}")
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    stds = s / math.sqrt(x.shape[0] - 1)
    return _fix_signs(vt).astype(np.float32), stds, mean


def sample_w(gan, n: int, seed: int = 0, batch_size: int = 2048) -> np.ndarray:
    """n latents w = mapping(z) [n, w_dim], z ~ N(0, I) from key(seed), no truncation (a
    conditional G gets the classes in turn)."""
    import jax

    cfg = gan.config
    bs = min(int(n), batch_size)
    total = -(-int(n) // bs) * bs  # equal batches: one compile
    z = np.asarray(jax.random.normal(jax.random.key(seed), (total, cfg.z_dim)), np.float32)
    c = None
    if cfg.c_dim:
        c = np.eye(cfg.c_dim, dtype=np.float32)[np.arange(total) % cfg.c_dim]
    out = [
        np.asarray(gan.mapping(z[i : i + bs], None if c is None else c[i : i + bs])[:, 0])
        for i in range(0, total, bs)
    ]
    return np.concatenate(out)[:n]


def ganspace(gan, n: int = 10000, seed: int = 0):
    """GANSpace in W: `pca_directions` of `sample_w(gan, n, seed)`."""
    return pca_directions(sample_w(gan, n, seed))


# ----------------------------------------------------------------------------- InterFaceGAN


def _as_w(latents) -> np.ndarray:
    x = np.asarray(latents, np.float64)
    if x.ndim == 3:  # W+ -> its mean over layers
        x = x.mean(axis=1)
    if x.ndim != 2:
        raise ValueError(f"want latents [N, w_dim] or [N, num_ws, w_dim], got {x.shape}")
    return x


def fit_linear_direction(latents_a, latents_b, l2: float = 1e-3, max_iter: int = 100):
    """InterFaceGAN's boundary: L2-regularized logistic regression of class B (1) vs class A (0)
    on w vectors (W+ averaged over layers), fitted by Newton's method with backtracking.

    Returns (normal [w_dim] unit float32, pointing from A to B; info {'accuracy', 'bias',
    'iterations'}); the boundary is {w : normal · w + bias = 0} with `bias` for the unit normal.
    """
    a, b = _as_w(latents_a), _as_w(latents_b)
    if a.shape[1] != b.shape[1] or len(a) < 1 or len(b) < 1:
        raise ValueError(f"fit_linear_direction: bad class shapes {a.shape}, {b.shape}")
    x = np.concatenate([a, b])
    y = np.concatenate([np.zeros(len(a)), np.ones(len(b))])
    center = x.mean(axis=0)
    xa = np.concatenate([x - center, np.ones((len(x), 1))], axis=1)  # last column: the bias
    n, d = xa.shape
    reg = np.full((d,), float(l2))
    reg[-1] = 0.0

    def objective(theta):
        z = xa @ theta
        return np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * np.sum(reg * theta * theta)

    theta = np.zeros((d,))
    it = 0
    for it in range(1, max_iter + 1):
        p = 1.0 / (1.0 + np.exp(-(xa @ theta)))
        grad = xa.T @ (p - y) / n + reg * theta
        hess = (xa.T * (p * (1 - p))) @ xa / n + np.diag(reg) + 1e-12 * np.eye(d)
        step = np.linalg.solve(hess, grad)
        f0, t = objective(theta), 1.0
        while objective(theta - t * step) > f0 - 1e-4 * t * (grad @ step) and t > 1e-8:
            t *= 0.5
        theta = theta - t * step
        if np.max(np.abs(t * step)) < 1e-9 * (1 + np.max(np.abs(theta))):
            break
    w, bias = theta[:-1], theta[-1] - theta[:-1] @ center
    norm = float(np.linalg.norm(w))
    if not np.isfinite(norm) or norm == 0:
        raise ValueError("fit_linear_direction: the classes cannot be separated (zero normal)")
    acc = float(np.mean(((x @ w + bias) > 0) == (y > 0.5)))
    return (w / norm).astype(np.float32), {"accuracy": acc, "bias": bias / norm, "iterations": it}


def class_index(name: str) -> int:
    if name not in FMNIST_CLASSES:
        raise DirectionError(f"unknown class {name!r}; choose from {', '.join(FMNIST_CLASSES)}")
    return FMNIST_CLASSES.index(name)


def has_encoder(gan) -> bool:
    return bool(gan.config.d_w_head and "D" in gan.params)


def encode_images(gan, images_uint8: np.ndarray, batch_size: int = 250) -> np.ndarray:
    """The InvGAN encoder's w [N, w_dim] of uint8 images (equal batches: one compile)."""
    from ganinv_jax.data import from_uint8

    n = len(images_uint8)
    bs = max(1, min(batch_size, n))
    pad = -n % bs
    x = np.concatenate([images_uint8, images_uint8[:pad]]) if pad else images_uint8
    out = [np.asarray(gan.encode(from_uint8(x[i : i + bs]))[:, 0]) for i in range(0, len(x), bs)]
    return np.concatenate(out)[:n]


def labelled_codes(
    gan, classes: Sequence[int], per_class: int = 500, seed: int = 0, data_dir: Optional[str] = None
) -> dict[int, np.ndarray]:
    """{class index: encoder latents [n, w_dim]} of `per_class` seeded Fashion-MNIST train images
    of each class (the default model's own data, with its real labels)."""
    from ganinv_jax import data as data_lib

    images, labels = data_lib.load_fashion_mnist(
        "train",
        data_dir or data_lib.DEFAULT_DIR,
        resolution=gan.config.resolution,
        channels=gan.config.img_channels,
        with_labels=True,
    )
    rng = np.random.default_rng(seed)
    picks = {}
    for i in classes:
        pool = np.flatnonzero(labels == i)
        picks[i] = np.sort(rng.choice(pool, size=min(int(per_class), len(pool)), replace=False))
    w = encode_images(gan, images[np.concatenate(list(picks.values()))])
    bounds = np.cumsum([0] + [len(p) for p in picks.values()])
    return {c: w[bounds[k] : bounds[k + 1]] for k, c in enumerate(picks)}


def interfacegan_from_encoder(
    gan,
    class_a: str,
    class_b: str,
    per_class: int = 500,
    seed: int = 0,
    data_dir: Optional[str] = None,
    generator_desc: str = "",
) -> Direction:
    """InterFaceGAN direction A -> B fitted on the encoder's latents of `per_class` seeded
    Fashion-MNIST train images of each class (the default model's own data)."""
    ia, ib = class_index(class_a), class_index(class_b)
    if not has_encoder(gan):
        raise DirectionError(
            f"interfacegan:{class_a}-{class_b}: the generator has no encoder (InvGAN w head)"
        )
    codes = labelled_codes(gan, (ia, ib), per_class, seed, data_dir)
    normal, info = fit_linear_direction(codes[ia], codes[ib])
    return Direction(
        kind="interfacegan",
        vector=normal,
        mask=layer_mask(None, gan.config.num_ws),
        scale=1.0,
        value=info["accuracy"],
        classes=(class_a, class_b),
        generator=generator_fingerprint(gan),
        generator_desc=generator_desc,
        name=f"interfacegan:{class_a}-{class_b}",
    )


# ----------------------------------------------------------------------------- specs


def generator_fingerprint(gan) -> str:
    """16 hex digits of sha256 over G's architecture and its parameters (mapping + synthesis)."""
    import jax

    h = hashlib.sha256(json.dumps(gan.config.to_dict(), sort_keys=True, default=str).encode())
    leaves = jax.tree_util.tree_leaves_with_path(gan.G["params"])
    for path, leaf in sorted(leaves, key=lambda pl: jax.tree_util.keystr(pl[0])):
        h.update(jax.tree_util.keystr(path).encode())
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()[:16]


def parse_layers(text: str, num_ws: int, key: str = "layers") -> Optional[tuple[int, int]]:
    """'' -> None (the direction's own layers); 'start:stop' -> (start, stop) within num_ws."""
    text = str(text or "").strip()
    if not text:
        return None
    m = re.fullmatch(r"(\d*):(\d*)", text)
    if not m:
        raise DirectionError(f"{key}={text!r}: want 'start:stop' over the {num_ws} W+ entries")
    start = int(m.group(1)) if m.group(1) else 0
    stop = int(m.group(2)) if m.group(2) else num_ws
    if not 0 <= start < stop <= num_ws:
        raise DirectionError(
            f"{key}={text!r}: not a non-empty range within the generator's {num_ws} W+ entries"
        )
    return start, stop


@dataclasses.dataclass(frozen=True)
class Spec:
    text: str
    kind: str  # sefa | ganspace | interfacegan | file
    index: int = -1
    classes: tuple = ()
    path: str = ""
    loaded: Optional[Direction] = None


_SPEC = re.compile(r"(sefa|ganspace):(\d+)|interfacegan:([a-z]+)-([a-z]+)")


class Resolver:
    """Turns specs into `Direction`s for one generator: `check` (cheap, before any work) then
    `resolve` (computes; SeFa / GANSpace decompositions are cached per layer range)."""

    def __init__(
        self,
        gan,
        *,
        layers: Optional[Sequence[int]] = None,
        ganspace_samples: int = 10000,
        interfacegan_per_class: int = 500,
        seed: int = 0,
        data_dir: Optional[str] = None,
        generator_desc: str = "",
        include_torgb: bool = False,
    ):
        self.gan = gan
        self.cfg = gan.config
        self.layers = None if layers is None else tuple(int(x) for x in layers)
        if self.layers is not None:
            layer_mask(self.layers, self.cfg.num_ws)
        self.ganspace_samples = int(ganspace_samples)
        self.per_class = int(interfacegan_per_class)
        self.seed = int(seed)
        self.data_dir = data_dir
        self.desc = generator_desc
        self.include_torgb = include_torgb
        self._fingerprint: Optional[str] = None
        self._sefa: dict = {}
        self._ganspace = None

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = generator_fingerprint(self.gan)
        return self._fingerprint

    def check(self, text: str) -> Spec:
        """Parse and check one spec against the generator; raises a one-line DirectionError."""
        text = str(text).strip()
        cfg = self.cfg
        if text.endswith(".npz"):
            d = load(text, w_dim=cfg.w_dim, num_ws=cfg.num_ws)
            return Spec(text, "file", d.index, d.classes, text, d)
        m = _SPEC.fullmatch(text)
        if not m:
            raise DirectionError(
                f"direction {text!r}: want sefa:K, ganspace:K, interfacegan:A-B (A, B among "
                f"{', '.join(FMNIST_CLASSES)}) or a path to a saved .npz"
            )
        if m.group(1):
            kind, k = m.group(1), int(m.group(2))
            limit = cfg.w_dim if kind == "sefa" else min(cfg.w_dim, self.ganspace_samples)
            if k >= limit:
                raise DirectionError(
                    f"direction {text!r}: K={k} out of range, this generator has {limit} "
                    f"{kind} directions (K = 0..{limit - 1}; w_dim {cfg.w_dim})"
                )
            if kind == "sefa":
                mats = style_matrices(self.gan.G, cfg, self.layers, self.include_torgb)
                if not mats:
                    raise DirectionError(
                        f"direction {text!r}: no style layer is fed by W+ entries {self.layers}"
                    )
            return Spec(text, kind, k)
        a, b = m.group(3), m.group(4)
        for c in (a, b):
            if c not in FMNIST_CLASSES:
                raise DirectionError(
                    f"direction {text!r}: unknown class {c!r}; choose from "
                    f"{', '.join(FMNIST_CLASSES)}"
                )
        if a == b:
            raise DirectionError(f"direction {text!r}: the two classes must differ")
        if not has_encoder(self.gan):
            raise DirectionError(
                f"direction {text!r}: this generator has no encoder (InvGAN w head), which "
                "InterFaceGAN's class labels need"
            )
        return Spec(text, "interfacegan", -1, (a, b))

    def _suffix(self) -> str:
        return "" if self.layers is None else f"@{self.layers[0]}:{self.layers[1]}"

    def resolve(self, spec) -> Direction:
        """A `Spec` (or a spec string, checked first) -> its Direction (with `layers`, if set,
        replacing the direction's own mask)."""
        if not isinstance(spec, Spec):
            spec = self.check(spec)
        cfg = self.cfg
        mask = layer_mask(self.layers, cfg.num_ws)
        common = dict(generator=self.fingerprint, generator_desc=self.desc)
        if spec.kind == "file":
            d = spec.loaded
            if d.generator and d.generator != self.fingerprint:
                from absl import logging

                logging.warning(
                    "%s: computed on another generator (%s, fingerprint %s; this one %s)",
                    spec.path,
                    d.generator_desc or "?",
                    d.generator,
                    self.fingerprint,
                )
            if self.layers is not None:
                d = dataclasses.replace(d, mask=mask, name=d.name + self._suffix())
            return d
        if spec.kind == "sefa":
            if self.layers not in self._sefa:
                self._sefa[self.layers] = sefa(self.gan.G, cfg, self.layers, self.include_torgb)
            rows, vals, mask = self._sefa[self.layers]
            return Direction(
                kind="sefa",
                vector=rows[spec.index],
                mask=mask,
                index=spec.index,
                scale=1.0,
                value=float(vals[spec.index]),
                name=spec.text + self._suffix(),
                **common,
            )
        if spec.kind == "ganspace":
            if self._ganspace is None:
                self._ganspace = ganspace(self.gan, self.ganspace_samples, self.seed)
            comps, stds, _ = self._ganspace
            return Direction(
                kind="ganspace",
                vector=comps[spec.index],
                mask=mask,
                index=spec.index,
                scale=float(stds[spec.index]),
                value=float(stds[spec.index]),
                name=spec.text + self._suffix(),
                **common,
            )
        d = interfacegan_from_encoder(
            self.gan, *spec.classes, self.per_class, self.seed, self.data_dir, self.desc
        )
        return dataclasses.replace(d, mask=mask, name=spec.text + self._suffix())


def resolve_all(specs: Sequence[str], gan, **kwargs) -> list[Direction]:
    """Every spec checked first (one-line DirectionError before any is computed), then all
    resolved. kwargs: `Resolver`'s."""
    r = Resolver(gan, **kwargs)
    checked = [r.check(s) for s in specs]
    return [r.resolve(s) for s in checked]


def resolve(spec: str, gan, **kwargs) -> Direction:
    """One spec (`sefa:K`, `ganspace:K`, `interfacegan:A-B` or a saved .npz) -> Direction."""
    return resolve_all([spec], gan, **kwargs)[0]
