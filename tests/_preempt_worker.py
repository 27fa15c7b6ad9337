"""One process of tests/test_preemption_multiprocess.py: `train_loop` on a tiny linear
regression, parameters replicated over a ('data',) mesh of every process's device, the batch
sharded over it. Importable (the test's single-process reference uses the same step).

  TEST_COORDINATOR=127.0.0.1:PORT TEST_PROCESS_ID=P python tests/_preempt_worker.py \
      WORKDIR NUM_STEPS MARKER_STEP DELAY_S

Writes WORKDIR/reached_P once step MARKER_STEP is done (the test then sends SIGTERM to one
process) and prints 'RESULT {json}' (pid, start, step, reason, params) at the end.
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from ganinv_jax import checkpointing
from ganinv_jax import sharding as shd
from ganinv_jax.training import loop
from ganinv_jax.training import state as state_lib

DIM, BATCH, LR = 4, 8, 0.05
NUM_PROCESSES = 2


def global_batch(step: int) -> np.ndarray:
    """Rows [x | y] of global batch `step`: a function of the step only (exact resume)."""
    rng = np.random.default_rng(step)
    x = rng.normal(size=(BATCH, DIM)).astype(np.float32)
    y = x @ np.arange(1, DIM + 1, dtype=np.float32) + 0.1 * rng.normal(size=BATCH)
    return np.concatenate([x, y[:, None].astype(np.float32)], axis=1)


def init_state(key):  # noqa: ARG001 -- zeros: nothing random
    return {"w": jnp.zeros((DIM,)), "b": jnp.zeros(()), "step": jnp.zeros((), jnp.int32)}


def train_step(state, batch):
    x, y = batch[:, :DIM], batch[:, DIM]
    params = {"w": state["w"], "b": state["b"]}
    loss, grads = jax.value_and_grad(lambda p: jnp.mean(jnp.square(x @ p["w"] + p["b"] - y)))(
        params
    )
    new = jax.tree.map(lambda p, g: p - LR * g, params, grads)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(grads)]))
    return (
        {**new, "step": state["step"] + 1},
        {"loss": loss, "finite": (finite & jnp.isfinite(loss)).astype(jnp.float32)},
    )


def make_trainer(mesh, pid: int, nproc: int, delay: float = 0.0):
    """(jitted step with state donated, get_batch giving this process's rows of each batch)."""
    _, shardings = state_lib.abstract_state(init_state, jax.random.key(0), mesh)
    step_fn = jax.jit(
        train_step,
        in_shardings=(shardings, shd.batch_sharding(mesh)),
        out_shardings=(shardings, shd.replicated(mesh)),
        donate_argnums=0,
    )
    rows = BATCH // nproc

    def get_batch(step):
        time.sleep(delay)  # slow enough to signal one process mid-run
        return shd.host_to_global(global_batch(step)[pid * rows : (pid + 1) * rows], mesh)

    return step_fn, get_batch


def host_params(state) -> dict:
    return {k: np.asarray(state[k].addressable_data(0)) for k in ("w", "b")}


def main(workdir: str, num_steps: int, marker_step: int, delay: float) -> None:
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", 1)
    pid = int(os.environ["TEST_PROCESS_ID"])
    jax.distributed.initialize(
        os.environ["TEST_COORDINATOR"],
        num_processes=NUM_PROCESSES,
        process_id=pid,
        initialization_timeout=60,
    )
    mesh = shd.make_mesh()
    mgr = checkpointing.train_checkpoint_manager(os.path.join(workdir, "checkpoints"))
    state, _, _ = state_lib.restore_or_init(mgr, init_state, jax.random.key(0), mesh)
    start = int(jax.device_get(state["step"]))
    step_fn, get_batch = make_trainer(mesh, pid, jax.process_count(), delay)

    def marker(step, _):
        if step == marker_step:
            tmp = os.path.join(workdir, f".reached_{pid}.tmp")
            open(tmp, "w").close()
            os.rename(tmp, os.path.join(workdir, f"reached_{pid}"))

    with jax.set_mesh(mesh):
        state, step, reason = loop.train_loop(
            state=state,
            train_step=step_fn,
            get_batch=get_batch,
            start_step=start,
            num_steps=num_steps,
            mgr=mgr,
            checkpoint_every=1000,
            log_every=5,
            hooks=[marker],
        )
    mgr.close()
    print(
        "RESULT "
        + json.dumps(
            {
                "pid": pid,
                "start": start,
                "step": step,
                "reason": reason,
                **{k: v.tolist() for k, v in host_params(state).items()},
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
