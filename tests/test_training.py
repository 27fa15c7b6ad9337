"""Trainer infrastructure: sharded == single-device step, exact resume, NaN guard, SIGTERM,
2-process jax.distributed training."""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs.invgan_fashion_mnist import get_config
from ganinv_jax import checkpointing
from ganinv_jax import data as data_lib
from ganinv_jax.training import invgan, loop, sharding as shd, state as state_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_FMNIST = os.path.isfile(os.path.join(data_lib.DEFAULT_DIR, "train-images-idx3-ubyte.gz"))
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST and os.environ.get("CI") != "true",  # CI installs it
                                  reason="apt-get install dataset-fashion-mnist")


def tiny_config(**overrides):
    """The tiny config, identical across tests so the in-process jit cache compiles once."""
    c = get_config("tiny")
    c.update(eval_at_end=False, num_train_steps=4, checkpoint_every=100, num_devices=1)
    c.update(overrides)
    return c


def _fake_batch(config, step):
    rng = np.random.default_rng(step)
    r, ch = config.data.resolution, config.data.channels
    return rng.uniform(-1, 1, (config.batch_size, r, r, ch)).astype(np.float32)


def _max_abs_diff(a, b):
    d = jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64)
                                                      - np.asarray(y, np.float64)))), a, b)
    return max(jax.tree.leaves(d))


def test_sharding_rules_are_data():
    mesh = shd.make_mesh(8)
    tree = {"g": {"w": jnp.zeros((3, 8)), "b": jnp.zeros((8,))}}
    rules = ((r"g/w", P(None, "data")), (r".*", P()))
    sh = shd.tree_shardings(mesh, tree, rules)
    assert sh["g"]["w"].spec == P(None, "data") and sh["g"]["b"].spec == P()
    with pytest.raises(ValueError, match="no sharding rule"):
        shd.spec_for("x/y", ((r"g/.*", P()),))
    assert mesh.axis_names == ("data",) and mesh.size == 8


def test_sharded_step_equals_single_device_step():
    assert jax.device_count() >= 8, "conftest should provide 8 CPU devices"
    c = tiny_config()
    nets, _, init_fn = invgan.setup(c, shd.make_mesh(1))
    host_state = jax.device_get(init_fn(jax.random.key(0)))
    batch = _fake_batch(c, 0)
    out = {}
    for n in (1, 8):
        mesh = shd.make_mesh(n)
        _, sh = state_lib.abstract_state(init_fn, jax.random.key(0), mesh)
        st = jax.device_put(host_state, sh)
        step = invgan.jit_train_step(c, nets, sh, mesh)
        with jax.set_mesh(mesh):
            for s in range(2):   # step 0 runs lazy R1 (r1_interval=2), step 1 does not
                xb = shd.host_to_global(_fake_batch(c, s), mesh)
                assert len(xb.sharding.device_set) == n
                st, metrics = step(st, xb)
        out[n] = jax.device_get((st, metrics))
    assert _max_abs_diff(out[1][1], out[8][1]) < 1e-4
    assert _max_abs_diff(out[1][0], out[8][0]) < 1e-4
    # ...and the step really changed the params (the comparison is not vacuous).
    assert _max_abs_diff(host_state.d, out[8][0].d) > 1e-3


@needs_fmnist
def test_kill_and_resume_reproduces_uninterrupted_run(tmp_path):
    c = tiny_config()
    full = invgan.train_and_evaluate(c, str(tmp_path / "a"))
    part = invgan.train_and_evaluate(c, str(tmp_path / "b"), stop_after=3)   # "killed"
    assert int(part.step) == 3
    mgr = checkpointing.train_checkpoint_manager(str(tmp_path / "b" / "checkpoints"))
    assert checkpointing.latest_train_step(mgr) == 3   # the exit path checkpointed
    mgr.close()
    resumed = invgan.train_and_evaluate(c, str(tmp_path / "b"))
    assert int(resumed.step) == int(full.step) == 4
    assert _max_abs_diff(full, resumed) == 0.0
    assert _max_abs_diff(full.g["params"], part.g["params"]) > 0   # step 4 did something


def _counting_step(fail_at=None, sigterm_at=None):
    def step(state, batch):
        s = int(state["step"])
        if sigterm_at is not None and s == sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)
        bad = fail_at is not None and s == fail_at
        new = {"step": jnp.asarray(s + 1), "x": state["x"] + batch}
        return new, {"loss": jnp.asarray(np.nan if bad else 1.0), "finite": jnp.asarray(1.0)}
    return step


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path):
    mgr = checkpointing.train_checkpoint_manager(str(tmp_path))
    st = {"step": jnp.asarray(0), "x": jnp.zeros(3)}
    with pytest.raises(loop.NonFiniteError, match=r"step 5 .*last good checkpoint is step 4"):
        loop.train_loop(state=st, train_step=_counting_step(fail_at=5), get_batch=lambda s: 1.0,
                        start_step=0, num_steps=10, mgr=mgr, checkpoint_every=2, log_every=100)
    checkpointing.wait_until_finished(mgr)
    assert checkpointing.latest_train_step(mgr) == 4
    restored = checkpointing.restore_train_state(
        mgr, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), st))
    np.testing.assert_array_equal(restored["x"], np.full(3, 4.0))
    mgr.close()


def test_sigterm_checkpoints_then_exits(tmp_path):
    mgr = checkpointing.train_checkpoint_manager(str(tmp_path))
    st = {"step": jnp.asarray(0), "x": jnp.zeros(3)}
    st, step, reason = loop.train_loop(state=st, train_step=_counting_step(sigterm_at=2),
                                       get_batch=lambda s: 1.0, start_step=0, num_steps=100,
                                       mgr=mgr, checkpoint_every=50, log_every=100)
    assert (reason, step) == ("sigterm", 3)
    assert checkpointing.latest_train_step(mgr) == 3
    assert signal.getsignal(signal.SIGTERM) is not None
    mgr.close()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_WORKER = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", 1)
    port, pid, workdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid,
                               initialization_timeout=120)
    from configs.invgan_fashion_mnist import get_config
    from ganinv_jax.training import invgan
    c = get_config("tiny"); c.num_train_steps = 2; c.checkpoint_every = 2; c.eval_at_end = False
    st = invgan.train_and_evaluate(c, workdir)
    leaf = jax.tree.leaves(st.d)[0]
    print("RESULT", json.dumps({"pid": jax.process_index(), "n": jax.process_count(),
          "devices": jax.device_count(), "step": int(st.step),
          "d0": float(leaf.addressable_data(0).sum())}))
""")


@needs_fmnist
@pytest.mark.slow
def test_two_process_distributed_training(tmp_path):
    port, workdir = _free_port(), str(tmp_path / "wd")
    env = {**os.environ, "PYTHONPATH": REPO, "XLA_FLAGS": ""}
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(port), str(i), workdir],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, e[-3000:]
    res = [json.loads(o.split("RESULT", 1)[1]) for o, _ in outs]
    assert {r["pid"] for r in res} == {0, 1}
    assert all(r["n"] == 2 and r["devices"] == 2 and r["step"] == 2 for r in res)
    assert res[0]["d0"] == pytest.approx(res[1]["d0"], rel=1e-6)   # replicas agree
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "2"))
