"""Preemption across hosts: 2 jax.distributed processes on 127.0.0.1 train with `train_loop`;
SIGTERM to ONE of them stops BOTH after the same step, that step is checkpointed, and resuming
to N steps gives the parameters of an uninterrupted run to N steps."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _preempt_worker as worker  # noqa: E402

from ganinv_jax import sharding as shd  # noqa: E402
from ganinv_jax.training import loop  # noqa: E402
from ganinv_jax.training import state as state_lib  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "_preempt_worker.py")
TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(workdir: str, num_steps: int, marker_step: int = -1, delay: float = 0.0) -> list:
    port = free_port()
    procs = []
    for pid in range(worker.NUM_PROCESSES):
        env = dict(
            os.environ,
            PYTHONPATH=REPO,
            JAX_PLATFORMS="cpu",
            TEST_PROCESS_ID=str(pid),
            TEST_COORDINATOR=f"127.0.0.1:{port}",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, WORKER, workdir, str(num_steps), str(marker_step), str(delay)],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return procs


def finish(procs: list) -> list[dict]:
    """Wait for both processes (killing them on timeout); both must exit 0; their RESULTs."""
    try:
        outs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return [json.loads(out.split("RESULT ", 1)[1].splitlines()[0]) for out in outs]


def wait_for(path: str, procs: list) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not os.path.exists(path):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            for p in procs:
                p.kill()
            outs = [p.communicate()[0][-2000:] for p in procs]
            raise AssertionError(f"{path} never appeared:\n" + "\n---\n".join(outs))
        time.sleep(0.01)


def uninterrupted(num_steps: int) -> dict:
    """The same training in this process, on a mesh of 2 of its fake CPU devices, no stops."""
    mesh = shd.make_mesh(worker.NUM_PROCESSES)
    _, shardings = state_lib.abstract_state(worker.init_state, jax.random.key(0), mesh)
    state = state_lib.init_sharded(worker.init_state, jax.random.key(0), shardings)
    step_fn, get_batch = worker.make_trainer(mesh, pid=0, nproc=1)
    with jax.set_mesh(mesh):
        state, step, reason = loop.train_loop(
            state=state,
            train_step=step_fn,
            get_batch=get_batch,
            start_step=0,
            num_steps=num_steps,
            log_every=5,
        )
    assert (step, reason) == (num_steps, "done")
    return worker.host_params(state)


def test_sigterm_to_one_process_stops_both_at_the_same_step_then_resume_is_exact(tmp_path):
    workdir = str(tmp_path)
    marker_step = 3
    procs = start(workdir, num_steps=500, marker_step=marker_step, delay=0.05)
    wait_for(os.path.join(workdir, "reached_1"), procs)
    procs[1].send_signal(signal.SIGTERM)  # process 1 only
    first = finish(procs)
    assert [r["reason"] for r in first] == ["sigterm", "sigterm"], first
    stopped = first[0]["step"]
    assert first[1]["step"] == stopped and marker_step <= stopped < 500, first
    assert os.path.isdir(os.path.join(workdir, "checkpoints", str(stopped)))
    assert first[0]["w"] == first[1]["w"]  # replicas agree

    num_steps = stopped + 4
    second = finish(start(workdir, num_steps))
    assert [(r["start"], r["step"], r["reason"]) for r in second] == [
        (stopped, num_steps, "done")
    ] * 2, second
    ref = uninterrupted(num_steps)
    for r in second:
        for k in ("w", "b"):
            np.testing.assert_allclose(np.asarray(r[k], np.float32), ref[k], rtol=0, atol=0)
