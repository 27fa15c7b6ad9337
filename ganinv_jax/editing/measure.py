"""What an edit did, measured: editability of a tuned generator and a label proxy for InterFaceGAN.

* Editability (the claim of PTI, Clone and GMM that a tuned generator stays editable): for one
  image, latent w and direction step δ, the LPIPS an edit moves the picture,
      moved_tuned = LPIPS(G_tuned(w + δ), G_tuned(w)),  moved_base = LPIPS(G_0(w + δ), G_0(w)).
  `moved_tuned / moved_base` near 1 means the tuned generator still follows the direction; near
  0 means tuning froze the edit out (over-fitting to the one image).
* Label proxy (a classifier-free check that an InterFaceGAN direction A -> B does what it says):
  encode the edited picture with the model's encoder and compare its distance to the class means
  of A and B (encoder latents of labelled train images). An edit "moves toward B" when
  d(e, mu_B) - d(e, mu_A) falls below the reconstruction's; the fraction of images where it does,
  and where the nearest of the ten class means becomes B, are reported.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np


def lpips_moved(lpips_fn, origin: np.ndarray, edited: np.ndarray) -> np.ndarray:
    """[S] LPIPS between one reconstruction [H, W, C] and its S edits [S, H, W, C]."""
    origin = np.broadcast_to(origin, edited.shape)
    return np.asarray(lpips_fn(origin, edited), np.float64)


def summarize_editability(moved_tuned: np.ndarray, moved_base: np.ndarray, names) -> dict:
    """moved_* [N, D, S] (zero strengths excluded) -> per-direction and overall means and ratios.

    `ratio` is the mean over images of the per-image ratio of the mean LPIPS moved (both
    generators at the same latents and strengths); `ratio_of_means` divides the two means."""
    per_image = moved_tuned.mean(axis=2) / np.maximum(moved_base.mean(axis=2), 1e-12)  # [N, D]
    out = {
        "images": int(moved_tuned.shape[0]),
        "lpips_moved_tuned": float(moved_tuned.mean()),
        "lpips_moved_base": float(moved_base.mean()),
        "ratio": float(per_image.mean()),
        "ratio_of_means": float(moved_tuned.mean() / max(moved_base.mean(), 1e-12)),
        "per_direction": {},
    }
    for r, name in enumerate(names):
        out["per_direction"][name] = {
            "lpips_moved_tuned": float(moved_tuned[:, r].mean()),
            "lpips_moved_base": float(moved_base[:, r].mean()),
            "ratio": float(per_image[:, r].mean()),
            "ratio_median": float(np.median(per_image[:, r])),
        }
    return out


def class_margin(codes: np.ndarray, means: np.ndarray, a: int, b: int) -> np.ndarray:
    """d(code, mu_b) - d(code, mu_a) per code [..., K] (negative: closer to class b)."""
    da = np.linalg.norm(codes - means[a], axis=-1)
    db = np.linalg.norm(codes - means[b], axis=-1)
    return db - da


def nearest_class(codes: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Index of the nearest class mean for each code [..., K] -> [...]."""
    d = np.linalg.norm(codes[..., None, :] - means, axis=-1)
    return np.argmin(d, axis=-1)


def label_proxy(
    recon_codes: np.ndarray, edited_codes: np.ndarray, means: np.ndarray, a: int, b: int
) -> dict:
    """recon_codes [N, K] and edited_codes [N, K] (each image edited toward B) -> fractions."""
    before = class_margin(recon_codes, means, a, b)
    after = class_margin(edited_codes, means, a, b)
    nearest_before = nearest_class(recon_codes, means)
    nearest_after = nearest_class(edited_codes, means)
    return {
        "images": int(len(before)),
        "moved_toward_b": float(np.mean(after < before)),
        "nearest_is_b_before": float(np.mean(nearest_before == b)),
        "nearest_is_b_after": float(np.mean(nearest_after == b)),
        "margin_before": float(before.mean()),
        "margin_after": float(after.mean()),
    }


def class_means(codes_by_class: Mapping[int, np.ndarray], num_classes: int) -> np.ndarray:
    """{class: [n, K] codes} -> [num_classes, K] means (every class must be present)."""
    missing = [c for c in range(num_classes) if c not in codes_by_class]
    if missing:
        raise ValueError(f"class_means: no codes for classes {missing}")
    return np.stack([np.asarray(codes_by_class[c]).mean(axis=0) for c in range(num_classes)])
