"""Grad-CAM attention for misaligned images (seed-000's AT1/AT2 when objects are not centred).

Grad-CAM (Selvaraju et al. 2017): for activations A_k of VGG16's last conv layer (relu5_3) and a
scalar target E, the map is relu(sum_k alpha_k A_k) with alpha_k = mean_hw dE/dA_k, upsampled to
the image and min-max normalized to [0, 1]. It is computed without gradient (stop_gradient) and
only decides where to crop or weight the loss.

Which target (document what you ran with; `target=`):
  * 'loss_energy' (DEFAULT): E = 1/2 |A(x) - A(x_ref)|^2, the reconstruction error energy in VGG16
    feature space, so dE/dA = A(x) - A(x_ref) and the map lights up where the reconstruction is
    worst. We default to this because no ImageNet classifier head ships offline.
  * 'feature_energy': E = 1/2 |A(x)|^2 (no reference image needed): salient, strongly activated
    regions.
  * 'classifier': the paper's setting, E = logit of `class_idx` (default: top-1) of a torchvision
    VGG16 ImageNet classifier the user converts with `convert_torchvision_vgg16(state_dict)`.
The conv features for the first two targets are the real ImageNet VGG16 features that LPIPS ships
(LPIPS v0.1 freezes torchvision's VGG16 backbone), so the maps are ImageNet-feature based.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ganinv_jax.losses import perceptual as lpips_lib

Target = Literal["loss_energy", "feature_energy", "classifier"]

# torchvision vgg16: indices of the 13 convs in `features`, and of the 3 linears in `classifier`.
_TV_CONV_IDX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_TV_FC_IDX = (0, 3, 6)


def _adaptive_avg_matrix(n_in: int, n_out: int) -> np.ndarray:
    """torch AdaptiveAvgPool1d as a matrix [n_out, n_in]: bins [floor(i n/o), ceil((i+1) n/o))."""
    m = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def adaptive_avg_pool(x: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
    """torch.nn.AdaptiveAvgPool2d for NHWC x (identity when sizes already match)."""
    if x.shape[1:3] == tuple(out_hw):
        return x
    ph = jnp.asarray(_adaptive_avg_matrix(x.shape[1], out_hw[0]))
    pw = jnp.asarray(_adaptive_avg_matrix(x.shape[2], out_hw[1]))
    return jnp.einsum("oh,pw,nhwc->nopc", ph, pw, x, precision=jax.lax.Precision.HIGHEST)


class VGG16Head(nn.Module):
    """torchvision VGG16 classifier on relu5_3 activations: pool5, adaptive 7x7, fc6-fc8 -> logits.

    Dropout is omitted (evaluation mode). fc6's kernel rows are in NHWC flatten order (h, w, c);
    `convert_torchvision_vgg16` permutes torch's (c, h, w) order accordingly.
    """

    hidden: int = 4096
    num_classes: int = 1000

    @nn.compact
    def __call__(self, a: jax.Array) -> jax.Array:
        x = nn.max_pool(a, (2, 2), strides=(2, 2))
        x = adaptive_avg_pool(x, (7, 7))
        x = jnp.reshape(x, (x.shape[0], -1))
        x = nn.relu(nn.Dense(self.hidden, name="fc6")(x))
        x = nn.relu(nn.Dense(self.hidden, name="fc7")(x))
        return nn.Dense(self.num_classes, name="fc8")(x)


def convert_torchvision_vgg16(state_dict: Mapping[str, Any]) -> dict:
    """torchvision `vgg16().state_dict()` (tensors or numpy) -> {'features': ..., 'head': ...}.

    Strict: every one of the 32 source arrays is used once; conv OIHW -> HWIO; linear [out, in] ->
    [in, out]; fc6's input axis re-ordered from torch's (c, 7, 7) flatten to NHWC's (7, 7, c).
    """
    sd = {
        k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v, np.float32)
        for k, v in state_dict.items()
    }
    used, features, head = set(), {}, {}

    def take(key):
        if key not in sd:
            raise KeyError(f"convert_torchvision_vgg16: missing {key}")
        used.add(key)
        return sd[key]

    for name, idx in zip(lpips_lib.VGG16_CONVS, _TV_CONV_IDX):
        features[name] = {
            "kernel": take(f"features.{idx}.weight").transpose(2, 3, 1, 0),
            "bias": take(f"features.{idx}.bias"),
        }
    for name, idx in zip(("fc6", "fc7", "fc8"), _TV_FC_IDX):
        w = take(f"classifier.{idx}.weight").T  # [in, out]
        if name == "fc6":
            c = features["conv5_3"]["kernel"].shape[-1]
            s = int(round((w.shape[0] / c) ** 0.5))
            if c * s * s != w.shape[0]:
                raise ValueError(
                    f"convert_torchvision_vgg16: fc6 input {w.shape[0]} is not {c}*s*s"
                )
            w = w.reshape(c, s, s, -1).transpose(1, 2, 0, 3).reshape(c * s * s, -1)
        head[name] = {"kernel": w, "bias": take(f"classifier.{idx}.bias")}
    unused = set(sd) - used
    if unused:
        raise KeyError(f"convert_torchvision_vgg16: unused source arrays {sorted(unused)}")
    return jax.tree_util.tree_map(jnp.asarray, {"features": features, "head": head})


def vgg16_classifier_logits(classifier_params: Mapping, x: jax.Array) -> jax.Array:
    """ImageNet logits of [-1, 1] NHWC images from converted torchvision VGG16 params."""
    a = lpips_lib.VGG16Features().apply(
        {"params": classifier_params["features"]}, lpips_lib.scale_input(x)
    )["conv5_3"]
    return _head(classifier_params).apply({"params": classifier_params["head"]}, a)


def _head(classifier_params: Mapping) -> VGG16Head:
    hidden, classes = classifier_params["head"]["fc8"]["kernel"].shape
    return VGG16Head(hidden=hidden, num_classes=classes)


def gradcam_heatmap(
    x: jax.Array,
    ref: jax.Array | None = None,
    *,
    target: Target = "loss_energy",
    lpips_params: Any = None,
    classifier_params: Mapping | None = None,
    class_idx: jax.Array | int | None = None,
) -> jax.Array:
    """Grad-CAM heat maps [N, H, W] in [0, 1] (no gradient flows through them).

    lpips_params: VGG16 LPIPS params (for their ImageNet backbone); loaded/cached when None.
    A map with no positive evidence (e.g. x == ref under 'loss_energy') is all ones: no region is
    preferred, so the crop becomes the whole image.
    """
    x = jax.lax.stop_gradient(x)
    if target == "classifier":
        if classifier_params is None:
            raise ValueError(
                "gradcam: target='classifier' needs classifier_params "
                "(convert_torchvision_vgg16(torchvision vgg16 state_dict))"
            )
        feat_params = classifier_params["features"]
    elif target in ("loss_energy", "feature_energy"):
        if lpips_params is None:
            lpips_params = lpips_lib.load_lpips_params("vgg")
        feat_params = lpips_params["backbone"]
    else:
        raise ValueError(
            f"gradcam: unknown target {target!r}; expected 'loss_energy', "
            "'feature_energy' or 'classifier'"
        )

    def feats(img):
        return lpips_lib.VGG16Features().apply({"params": feat_params}, lpips_lib.scale_input(img))[
            "conv5_3"
        ]

    a = feats(x)
    if target == "loss_energy":
        if ref is None:
            raise ValueError("gradcam: target='loss_energy' needs the reference image (ref=)")
        if ref.shape != x.shape:
            raise ValueError(f"gradcam: shape mismatch {x.shape} vs {ref.shape}")
        grad = a - feats(jax.lax.stop_gradient(ref))  # d/dA of 1/2 |A - A_ref|^2
    elif target == "feature_energy":
        grad = a
    else:
        head = _head(classifier_params)

        def score(act):
            logits = head.apply({"params": classifier_params["head"]}, act)
            idx = (
                jnp.argmax(logits, axis=-1)
                if class_idx is None
                else jnp.broadcast_to(jnp.asarray(class_idx), (act.shape[0],))
            )
            return jnp.sum(jnp.take_along_axis(logits, idx[:, None], axis=-1))

        grad = jax.grad(score)(a)
    alpha = jnp.mean(grad, axis=(1, 2), keepdims=True)
    cam = jax.nn.relu(jnp.sum(alpha * a, axis=-1))  # [N, h, w]
    cam = jax.image.resize(cam, (x.shape[0],) + x.shape[1:3], "bilinear")
    lo = jnp.min(cam, axis=(1, 2), keepdims=True)
    hi = jnp.max(cam, axis=(1, 2), keepdims=True)
    flat = (hi - lo) <= 1e-12 * jnp.maximum(hi, 1.0)
    cam = jnp.where(flat, 1.0, (cam - lo) / jnp.where(flat, 1.0, hi - lo))
    return jax.lax.stop_gradient(cam)


def heatmap_box(heat: jax.Array, threshold: float = 0.5) -> jax.Array:
    """Bounding box [N, 4] int32 (top, left, bottom, right; bottom/right exclusive) of heat >= t.

    Fixed-shape and jit-safe. An empty mask gives the whole image.
    """
    mask = heat >= threshold
    n, h, w = heat.shape
    rows, cols = jnp.any(mask, axis=2), jnp.any(mask, axis=1)
    top, left = jnp.argmax(rows, axis=1), jnp.argmax(cols, axis=1)
    bottom, right = h - jnp.argmax(rows[:, ::-1], axis=1), w - jnp.argmax(cols[:, ::-1], axis=1)
    box = jnp.stack([top, left, bottom, right], axis=1).astype(jnp.int32)
    full = jnp.asarray([0, 0, h, w], jnp.int32)
    return jnp.where(jnp.any(rows, axis=1)[:, None], box, full[None])


def crop_and_resize(x: jax.Array, boxes: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
    """Crops per-image boxes [N, 4] from NHWC x and resizes each to out_hw (bilinear, jit-safe).

    Differentiable w.r.t. x; the boxes are data (traced), so no recompilation per box.
    """
    boxes = boxes.astype(jnp.float32)

    def one(img, box):
        size = jnp.maximum(box[2:] - box[:2], 1.0)
        scale = jnp.asarray(out_hw, jnp.float32) / size
        return jax.image.scale_and_translate(
            img,
            tuple(out_hw) + img.shape[-1:],
            (0, 1),
            scale,
            -box[:2] * scale,
            method="linear",
            antialias=True,
        )

    return jax.vmap(one)(x, boxes)
