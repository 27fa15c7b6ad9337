"""Per-image records of the invert job: the per-chunk result file and the CSV/summary views.

The truth of a finished chunk is its `chunks/chunk_XXXXXXXX.npz` (written atomically before the
chunk enters the manifest). `metrics.csv` and `failures.csv` are views: rows are appended as
chunks commit, and at start-up they are rebuilt from the committed chunk files, so a kill in the
middle of an append never leaves a torn or duplicated row behind.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Iterable, Sequence

import numpy as np

from ganinv_jax import atomic

# Per-image status codes (chunk files) and their names (metrics.csv).
CONVERGED, MAX_STEPS, FAILED, BAD_INPUT, EMPTY = 0, 1, 2, 3, -1
STATUS_NAMES = {
    CONVERGED: "converged",
    MAX_STEPS: "max_steps",
    FAILED: "failed",
    BAD_INPUT: "bad_input",
}
OK_STATUSES = (CONVERGED, MAX_STEPS)
REASON_BYTES = 240  # reasons travel between hosts as fixed-size uint8 rows

METRIC_COLUMNS = (
    "id",
    "path",
    "method",
    "mse",
    "psnr",
    "ssim",
    "ms_ssim",
    "lpips",
    "iterations",
    "seconds",
    "status",
)
FAILURE_COLUMNS = ("id", "path", "reason")
METRIC_KEYS = ("mse", "psnr", "ssim", "ms_ssim", "lpips")


def encode_reasons(reasons: Sequence[str]) -> np.ndarray:
    out = np.zeros((len(reasons), REASON_BYTES), np.uint8)
    for i, r in enumerate(reasons):
        b = r.encode("utf-8", "replace")[:REASON_BYTES]
        out[i, : len(b)] = np.frombuffer(b, np.uint8)
    return out


def decode_reason(row: np.ndarray) -> str:
    return bytes(np.asarray(row, np.uint8)).rstrip(b"\0").decode("utf-8", "replace")


# What the CSVs and the summary need: everything but the (large) latents and extras.
RECORD_KEYS = ("ids", "status", "reasons", "iterations", "seconds") + METRIC_KEYS


def load_chunk(path: str, keys=None) -> dict:
    """A chunk file's arrays (only `keys`, if given: npz members are read lazily)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files if keys is None or k in keys}


def fmt(x: float) -> str:
    x = float(x)
    return "nan" if math.isnan(x) else ("inf" if math.isinf(x) else f"{x:.6g}")


def metric_rows(chunk: dict, paths: Sequence[str], method: str) -> list[list[str]]:
    """One metrics.csv row per image of a chunk file (empty slots skipped), in id order."""
    rows = []
    order = np.argsort(chunk["ids"], kind="stable")
    for j in order:
        status = int(chunk["status"][j])
        if status == EMPTY:
            continue
        i = int(chunk["ids"][j])
        # a chunk written before a metric existed (a resumed older run) reports it as nan
        rows.append(
            [str(i), paths[i], method]
            + [fmt(chunk[k][j]) if k in chunk else "nan" for k in METRIC_KEYS]
            + [
                str(int(chunk["iterations"][j])),
                f"{float(chunk['seconds'][j]):.3f}",
                STATUS_NAMES[status],
            ]
        )
    return rows


def failure_rows(chunk: dict, paths: Sequence[str]) -> list[list[str]]:
    rows = []
    for j in np.argsort(chunk["ids"], kind="stable"):
        if int(chunk["status"][j]) in (FAILED, BAD_INPUT):
            i = int(chunk["ids"][j])
            rows.append([str(i), paths[i], decode_reason(chunk["reasons"][j])])
    return rows


def _csv_text(rows: Iterable[Sequence[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def write_csv_atomic(path: str, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    with atomic.atomic_open(path, "w", newline="") as f:
        f.write(_csv_text([header]) + _csv_text(rows))


def append_csv(path: str, rows: Sequence[Sequence[str]]) -> None:
    if rows:
        with open(path, "a", newline="") as f:
            f.write(_csv_text(rows))
            f.flush()


def read_csv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def aggregate(chunks: Sequence[dict]) -> dict:
    """Counts by status, and `losses.metrics.summarize` statistics (mean, std, min, max,
    percentiles) of each metric over the successfully inverted images."""
    from ganinv_jax.losses.metrics import summarize

    if not chunks:
        return {"images": 0}
    status = np.concatenate([c["status"] for c in chunks])
    keep = status != EMPTY
    status = status[keep]
    ok = np.isin(status, OK_STATUSES)
    out = {
        "images": int(keep.sum()),
        "counts": {name: int((status == code).sum()) for code, name in STATUS_NAMES.items()},
    }
    for k in METRIC_KEYS + ("iterations", "seconds"):
        v = np.concatenate(
            [c[k] if k in c else np.full(c["status"].shape, np.nan) for c in chunks]
        )[keep][ok].astype(np.float64)
        out[k] = summarize(v) if np.isfinite(v).any() else None
    return out
