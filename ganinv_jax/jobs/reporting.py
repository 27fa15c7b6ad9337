"""Reporting of the invert job: progress line, TensorBoard, versions, the final summary line."""

from __future__ import annotations

import os
import platform
import subprocess
from typing import Optional

import jax
import numpy as np
from absl import logging

from ganinv_jax import progress as progress_lib
from ganinv_jax.jobs import records


class Progress(progress_lib.Progress):
    """The invert job's progress line: images done/total, images/s over this session, ETA
    (`ganinv_jax.progress`), and the failures so far."""

    def __init__(self, total: int, done: int, **kwargs):
        super().__init__(total, done, unit="images", **kwargs)

    def update(self, n: int, failed: int) -> str:
        self.advance(n)
        return f"invert: {self.line()} | failed so far {failed}"


def make_writer(logdir: str, is_writer: bool):
    """clu writer: TensorBoard (+ log lines) on the writing process, log lines elsewhere."""
    from clu import metric_writers

    return metric_writers.create_default_writer(
        logdir, just_logging=not is_writer, asynchronous=False
    )


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

    out = {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": getattr(jax.lib, "__version__", None) or _pkg_version("jaxlib"),
        "flax": flax.__version__,
        "optax": optax.__version__,
        "orbax_checkpoint": _pkg_version("orbax-checkpoint"),
        "numpy": np.__version__,
    }
    try:
        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        out["ganinv_jax_commit"] = (
            subprocess.run(
                ["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or None
        )
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
    means = " ".join(f"{k.upper()} {a[k]['mean']:.4g}" for k in records.METRIC_KEYS if a.get(k))
    return (
        f"invert: done: {a.get('images', 0)} images ({ok} ok, {counts.get('failed', 0)} "
        f"failed, {counts.get('bad_input', 0)} bad input) | mean {means or '-'} | -> {workdir}"
    )
