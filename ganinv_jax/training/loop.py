"""The generic training loop: metrics, progress/ETA, checkpoints, NaN guard, SIGTERM.

Trainers supply a jitted `train_step(state, batch) -> (state, metrics)` whose metrics include
a scalar `finite` (1.0 when every loss and gradient was finite) and a `get_batch(step)` that
returns this process's rows of global batch `step`. Everything random inside the step is a
function of (seed, state.step), so a resumed run repeats the uninterrupted one exactly.
"""
from __future__ import annotations

import signal
import time
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from absl import logging

from ganinv_jax import checkpointing


class NonFiniteError(FloatingPointError):
    pass


class TerminationFlag:
    """Context manager that turns SIGTERM (and optionally SIGINT) into a flag the loop polls."""

    def __init__(self, signals: Sequence[int] = (signal.SIGTERM,)):
        self.signals = tuple(signals)
        self.set = False
        self._old = {}

    def _handler(self, signum, frame):  # noqa: ARG002
        logging.warning("received signal %d: checkpointing and exiting", signum)
        self.set = True

    def __enter__(self):
        try:
            for s in self.signals:
                self._old[s] = signal.signal(s, self._handler)
        except ValueError:   # not the main thread: no handlers, the flag stays False
            self._old = {}
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        return False


def check_finite(metrics: dict, step: int, last_good: Optional[int]) -> None:
    """Raise a one-line error if the step produced a non-finite loss or gradient."""
    bad = [k for k, v in metrics.items() if not np.all(np.isfinite(np.asarray(v)))]
    if float(np.asarray(metrics.get("finite", 1.0))) < 1.0 or bad:
        where = ("the last good checkpoint is step %d" % last_good if last_good is not None
                 else "no checkpoint was written yet")
        raise NonFiniteError(f"non-finite loss/gradient at step {step} "
                             f"(metrics {bad or ['finite=0']}); stopped without saving it; "
                             f"{where}")


def train_loop(*, state: Any, train_step: Callable, get_batch: Callable[[int], Any],
               start_step: int, num_steps: int, mgr=None, writer=None,
               checkpoint_every: int = 1000, log_every: int = 50,
               hooks: Sequence[Callable[[int, Any], None]] = (),
               stop_after: Optional[int] = None) -> tuple[Any, int, str]:
    """Run steps [start_step, num_steps). Returns (state, step reached, reason).

    reason: 'done' | 'sigterm' | 'stop_after'. `stop_after` ends early after that many steps
    (tests use it to emulate a kill); every exit path checkpoints when `mgr` is given.
    """
    last_good = checkpointing.latest_train_step(mgr) if mgr is not None else None
    step, reason = start_step, "done"
    t0, s0 = time.time(), start_step
    acc: dict[str, list] = {}

    def save(s):
        nonlocal last_good
        if mgr is not None and s != last_good:
            checkpointing.save_train_state(mgr, s, state)
            last_good = s

    with TerminationFlag() as term:
        while step < num_steps:
            batch = get_batch(step)
            new_state, metrics = train_step(state, batch)
            metrics = jax.device_get(metrics)
            check_finite(metrics, step, last_good)   # raises before `state` is replaced
            state = new_state
            step += 1
            for k, v in metrics.items():
                acc.setdefault(k, []).append(float(v))
            if step % log_every == 0 or step == num_steps:
                dt = time.time() - t0
                rate = (step - s0) / max(dt, 1e-9)
                eta = (num_steps - step) / max(rate, 1e-9)
                scalars = {k: float(np.mean(v)) for k, v in acc.items()}
                scalars["steps_per_sec"] = rate
                if writer is not None:
                    writer.write_scalars(step, scalars)
                    writer.flush()
                logging.info("step %d/%d  %.2f steps/s  ETA %.0fs  %s", step, num_steps, rate,
                             eta, "  ".join(f"{k}={v:.4g}" for k, v in sorted(scalars.items())
                                            if k not in ("finite", "steps_per_sec")))
                acc = {}
            for hook in hooks:
                hook(step, state)
            if step % checkpoint_every == 0:
                save(step)
            if term.set:
                reason = "sigterm"
                break
            if stop_after is not None and step - start_step >= stop_after:
                reason = "stop_after"
                break
        save(step)
        if mgr is not None:
            checkpointing.wait_until_finished(mgr)
    return state, step, reason
