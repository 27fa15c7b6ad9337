"""The generic training loop: metrics, progress/ETA, checkpoints, NaN guard, preemption.

Trainers supply a jitted `train_step(state, batch) -> (state, metrics)` whose metrics include
a scalar `finite` (1.0 when every loss and gradient was finite) and a `get_batch(step)` that
returns this process's rows of global batch `step`. Everything random inside the step is a
function of (seed, state.step), so a resumed run repeats the uninterrupted one exactly.

Host syncs. Looking at a step's metrics makes the host wait for that step, which would stall
async dispatch on accelerators if done every step. So metrics stay on device (the list of the
small per-step dicts) and are fetched together, checked and averaged only at check points:
logging steps (`step % log_every == 0`), the last step, and before every checkpoint save, so a
non-finite state is never saved. A non-finite step is found up to `log_every` steps late; the
error names the first bad step of the window and the last good checkpoint.

Preemption (`ganinv_jax.preemption`): SIGTERM on any process stops every process after the same
step, which then checkpoints. The loop asks `should_stop()` once per step: free in a single
process; with several processes it is one tiny all-gather per step (a host sync, so on
accelerators it waits for the step in flight) -- the price of deciding at the same step on
every host without a grace-period guess; checking less often would risk outliving the
preemption notice on long `log_every` windows.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from absl import logging

from ganinv_jax import atomic, checkpointing, preemption
from ganinv_jax import progress as progress_lib


class NonFiniteError(FloatingPointError):
    pass


def first_non_finite(window: Sequence[tuple[int, dict]]) -> Optional[tuple[int, list[str]]]:
    """(step, metric names) of the first step of `window` [(step, host metrics)] with a
    non-finite metric or `finite` < 1; None when every step is finite."""
    for step, metrics in window:
        bad = [k for k, v in metrics.items() if not np.all(np.isfinite(np.asarray(v)))]
        if bad or float(np.asarray(metrics.get("finite", 1.0))) < 1.0:
            return step, bad or ["finite=0"]
    return None


def check_finite(window: Sequence[tuple[int, dict]], last_good: Optional[int]) -> None:
    """Raise a one-line NonFiniteError naming the first bad step of `window` and the last good
    checkpoint (the steps after a bad one are not trusted either: none of them is saved)."""
    found = first_non_finite(window)
    if found is None:
        return
    step, names = found
    where = (
        "the last good checkpoint is step %d" % last_good
        if last_good is not None
        else "no checkpoint was written yet"
    )
    raise NonFiniteError(
        f"non-finite loss/gradient at step {step} (metrics {names}); "
        f"stopped without saving any state from that step on; {where}"
    )


def train_loop(
    *,
    state: Any,
    train_step: Callable,
    get_batch: Callable[[int], Any],
    start_step: int,
    num_steps: int,
    mgr=None,
    writer=None,
    checkpoint_every: int = 1000,
    log_every: int = 50,
    hooks: Sequence[Callable[[int, Any], None]] = (),
    stop_after: Optional[int] = None,
    stop_when: Optional[Callable[[int, Any], bool]] = None,
) -> tuple[Any, int, str]:
    """Run steps [start_step, num_steps). Returns (state, step reached, reason).

    reason: 'done' | 'sigterm' | 'stop_after' | 'early_stop'. `stop_after` ends early after that
    many steps (tests use it to emulate a kill); `stop_when(step, state)` ends the run when true
    (early stopping; it must give the same answer on every process, e.g. read replicated state);
    every exit path checkpoints when `mgr` is given.
    """
    last_good = mgr.latest_step() if mgr is not None else None
    step, reason = start_step, "done"
    progress = progress_lib.Progress(num_steps, start_step, unit="steps")
    pending: list[tuple[int, Any]] = []  # (step, device metrics), not yet fetched
    window: list[tuple[int, dict]] = []  # (step, host metrics), checked, since the last log

    def fetch_and_check():
        if not pending:
            return
        host = jax.device_get([m for _, m in pending])  # one sync for the whole window
        fetched = [(s, m) for (s, _), m in zip(pending, host)]
        pending.clear()
        check_finite(fetched, last_good)
        window.extend(fetched)

    def log():
        scalars = {k: float(np.mean([m[k] for _, m in window])) for k in window[0][1]}
        scalars["steps_per_sec"] = progress.rate()
        if writer is not None:
            writer.write_scalars(step, scalars)
            writer.flush()
        logging.info(
            "train: %s | %s",
            progress.line(),
            "  ".join(
                f"{k}={v:.4g}"
                for k, v in sorted(scalars.items())
                if k not in ("finite", "steps_per_sec")
            ),
        )
        window.clear()

    def save(s):
        nonlocal last_good
        fetch_and_check()  # a non-finite state is never saved
        if mgr is not None and s != last_good:
            checkpointing.save_train_state(mgr, s, state)
            last_good = s

    with preemption.Preemption(message="checkpointing and exiting") as preempt:
        while step < num_steps:
            state, metrics = train_step(state, get_batch(step))
            pending.append((step, metrics))
            step += 1
            progress.advance()
            if step % log_every == 0 or step == num_steps:
                fetch_and_check()
                log()
            for hook in hooks:
                hook(step, state)
            if step % checkpoint_every == 0:
                save(step)
            if preempt.should_stop():  # the same step on every process
                reason = "sigterm"
                break
            if stop_after is not None and step - start_step >= stop_after:
                reason = "stop_after"
                break
            if stop_when is not None and stop_when(step, state):
                reason = "early_stop"
                break
        save(step)
        if mgr is not None:
            mgr.wait_until_finished()
    return state, step, reason


def open_run(config, workdir: str, start_step: int):
    """What every trainer does before its loop: WORKDIR/config.json (process 0) and a clu
    metric writer (TensorBoard + log on process 0, log only elsewhere) with the config's scalar
    hyperparameters written once, at the start of a run."""
    from clu import metric_writers  # lazy: clu pulls in TensorFlow's summary writer

    pid = jax.process_index()
    if pid == 0:
        atomic.write_text(
            os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2)
        )
    writer = metric_writers.create_default_writer(workdir, just_logging=pid > 0)
    if start_step == 0:
        writer.write_hparams(
            {k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str, bool))}
        )
    return writer
