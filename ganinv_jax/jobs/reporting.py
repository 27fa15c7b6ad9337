"""Reporting of the invert job: progress line, TensorBoard, versions, the final summary line."""
from __future__ import annotations

import os
import platform
import subprocess
import time
from typing import Optional

import jax
import numpy as np
from absl import logging

from ganinv_jax.jobs import records


class Progress:
    """images done/total, images/s over this session, ETA."""

    def __init__(self, total: int, done: int):
        self.total, self.done, self.start_done = total, done, done
        self.t0 = time.perf_counter()

    def update(self, n: int, failed: int) -> str:
        self.done += n
        elapsed = time.perf_counter() - self.t0
        rate = (self.done - self.start_done) / max(elapsed, 1e-9)
        left = self.total - self.done
        eta = left / rate if rate > 0 else float("inf")
        eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if np.isfinite(eta) else "?"
        return (f"invert: {self.done}/{self.total} images ({100.0 * self.done / self.total:.1f}%)"
                f" | {rate:.2f} images/s | ETA {eta_s} | failed so far {failed}")

    def rate(self) -> float:
        return (self.done - self.start_done) / max(time.perf_counter() - self.t0, 1e-9)


def make_writer(logdir: str, is_writer: bool):
    """clu writer: TensorBoard (+ log lines) on the writing process, log lines elsewhere."""
    from clu import metric_writers
    return metric_writers.create_default_writer(logdir, just_logging=not is_writer,
                                                asynchronous=False)


def report_chunk(writer, step: int, full: dict, grid: Optional[np.ndarray]) -> None:
    """TensorBoard: chunk means of the metrics at step = images finished so far."""
    keep = np.isin(full["status"], records.OK_STATUSES)
    scalars = {}
    for k in records.METRIC_KEYS + ("iterations",):
        v = np.asarray(full[k], np.float64)[keep]
        v = v[np.isfinite(v)]
        if v.size:
            scalars[f"chunk_mean/{k}"] = float(v.mean())
    scalars["chunk/failed"] = float((~keep & (full["status"] != records.EMPTY)).sum())
    try:
        writer.write_scalars(step, scalars)
        if grid is not None:
            writer.write_images(step, {"target_vs_recon": grid[None]})
        writer.flush()
    except Exception as e:  # noqa: BLE001 -- TensorBoard must never stop the job
        logging.warning("invert: TensorBoard write failed: %s", e)


def versions() -> dict:
    import flax
    import optax
    out = {"python": platform.python_version(), "jax": jax.__version__,
           "jaxlib": getattr(jax.lib, "__version__", None) or _pkg_version("jaxlib"),
           "flax": flax.__version__, "optax": optax.__version__,
           "orbax_checkpoint": _pkg_version("orbax-checkpoint"), "numpy": np.__version__}
    try:
        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        out["ganinv_jax_commit"] = subprocess.run(
            ["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True,
            timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        out["ganinv_jax_commit"] = None
    return out


def _pkg_version(name: str) -> Optional[str]:
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def done_line(summary: dict, workdir: str) -> str:
    """'invert: done: 16 images (16 ok, 0 failed, 0 bad input) | mean MSE ... | -> workdir'."""
    a = summary["aggregates"]
    counts = a.get("counts", {})
    ok = counts.get("converged", 0) + counts.get("max_steps", 0)
    means = " ".join(f"{k.upper()} {a[k]['mean']:.4g}" for k in records.METRIC_KEYS
                     if a.get(k))
    return (f"invert: done: {a.get('images', 0)} images ({ok} ok, {counts.get('failed', 0)} "
            f"failed, {counts.get('bad_input', 0)} bad input) | mean {means or '-'} | -> {workdir}")
