"""Aggregation of per-image metrics and dataset-level reports (JSON summary + CSV rows).

Inversion runs produce one value per image per metric (the losses in this package all return
[N]). Tables need the distribution, not only the mean: std and percentiles show whether a method
fails badly on a few images. Non-finite values (a PSNR of +inf for a perfect copy, a NaN from a
diverged run) are counted and excluded from the statistics instead of poisoning them.

These helpers run on the host (numpy); `write_report` is the only function here that does I/O and
writes atomically (temp file + rename) so a crash never leaves a half-written report.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
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
  out.update(mean=float(finite.mean()), std=float(finite.std()), min=float(finite.min()),
             max=float(finite.max()))
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


def csv_rows(per_image: Mapping[str, object], image_ids: Sequence[str] | None = None) -> list[dict]:
  """One dict per image: {'image_id': ..., metric: value, ...}."""
  n = _check_lengths(per_image)
  ids = [str(i) for i in (image_ids if image_ids is not None else range(n))]
  if len(ids) != n:
    raise ValueError(f"metrics: {len(ids)} image ids for {n} images")
  cols = {k: np.asarray(v, np.float64).reshape(-1) for k, v in per_image.items()}
  return [{"image_id": ids[i], **{k: float(c[i]) for k, c in cols.items()}} for i in range(n)]


def _json_safe(obj):
  if isinstance(obj, float) and not math.isfinite(obj):
    return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
  if isinstance(obj, dict):
    return {k: _json_safe(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_json_safe(v) for v in obj]
  return obj


def report(per_image: Mapping[str, object], image_ids: Sequence[str] | None = None,
           meta: Mapping | None = None) -> dict:
  """Dataset-level report dict: {'meta', 'num_images', 'summary': {metric: stats}}."""
  return {"meta": dict(meta or {}), "num_images": _check_lengths(per_image),
          "summary": summarize_all(per_image)}


def _atomic_write(path: str, text: str) -> None:
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp_", suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, "w", newline="") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_report(out_prefix: str, per_image: Mapping[str, object],
                 image_ids: Sequence[str] | None = None, meta: Mapping | None = None) -> dict:
  """Writes `<out_prefix>.json` (summary) and `<out_prefix>.csv` (one row per image)."""
  rep = report(per_image, image_ids, meta)
  _atomic_write(out_prefix + ".json", json.dumps(_json_safe(rep), indent=2, sort_keys=True) + "\n")
  rows = csv_rows(per_image, image_ids)
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=["image_id", *per_image.keys()])
  writer.writeheader()
  writer.writerows(rows)
  _atomic_write(out_prefix + ".csv", buf.getvalue())
  return rep
