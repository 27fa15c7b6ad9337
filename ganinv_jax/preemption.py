"""Preemption: SIGTERM -> a stop decision that every process of a run takes at the same point.

  with preemption.Preemption() as preempt:
      for step in ...:
          ...
          if preempt.should_stop():     # a collective when jax.process_count() > 1
              break

The signal handler only sets a local flag. `should_stop()` turns the flags into one decision:
in a single process it is the local flag (no collective, free to call every step); with several
processes it all-gathers the flags, so if any process was signalled, every process returns True
from the SAME call. That is what keeps multi-host runs consistent: a process that stopped alone
would enter the collective checkpoint save (or the next chunk's barrier) while the others keep
stepping, and the run would hang. Because it is a collective, every process must call
`should_stop()` at the same points (e.g. once per step, or once per chunk).

Why an all-gather and not `multihost_utils.reached_preemption_sync_point`: the latter is
asynchronous (the coordination service picks "max step seen + 1" as the sync point, which a
fast step loop can already have passed) and only hears SIGTERM through jax.distributed's own
C++ handler. One tiny all-gather per call is exact: the same call returns the same answer on
every process.
"""

from __future__ import annotations

import signal
import threading
from typing import Sequence

import jax
import numpy as np
from absl import logging


def any_process(flag: bool) -> bool:
    """True on every process if `flag` is True on any process. A collective when
    jax.process_count() > 1: every process must call it at the same point."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray([flag], np.bool_))))


class Preemption:
    """Context manager: installs a handler for `signals` (main thread only; elsewhere Python
    cannot install one and the flag stays False) and restores the previous handlers on exit."""

    def __init__(
        self,
        signals: Sequence[int] = (signal.SIGTERM,),
        message: str = "preemption: stopping at the next agreed point",
    ):
        self.signals = tuple(signals)
        self.message = message
        self.requested = False  # this process was signalled
        self._previous: dict = {}

    def _handle(self, signum, frame):  # noqa: ARG002
        logging.warning("received %s: %s", signal.Signals(signum).name, self.message)
        self.requested = True

    def __enter__(self) -> "Preemption":
        self.requested = False
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for s, previous in self._previous.items():
            # Only Python-level handlers can be reinstated (None: installed outside Python).
            # jax.distributed's C++ preemption notifier, which swallows SIGTERM, is invisible
            # to Python (it reads as SIG_DFL): after the block SIGTERM ends the process again.
            signal.signal(s, signal.SIG_DFL if previous is None else previous)
        self._previous = {}
        return False

    def should_stop(self) -> bool:
        """Whether any process was signalled; the same answer on every process (see module doc)."""
        return any_process(self.requested)
