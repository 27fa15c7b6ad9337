"""Trainer infrastructure: sharded == single-device step, exact resume, NaN guard (checked on
logging/checkpoint steps only), SIGTERM (`ganinv_jax.preemption`), progress/ETA
(`ganinv_jax.progress`), 2-process jax.distributed training."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs.invgan_fashion_mnist import get_config
from ganinv_jax import checkpointing, preemption
from ganinv_jax import progress as progress_lib
from ganinv_jax import sharding as shd
from ganinv_jax.training import invgan, loop
from ganinv_jax.training import state as state_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from _ci import needs_fmnist  # noqa: E402  (skips locally, fails under CI=true)


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
    d = jax.tree.map(
        lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))),
        a,
        b,
    )
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
    out = {}
    for n in (1, 8):
        mesh = shd.make_mesh(n)
        _, sh = state_lib.abstract_state(init_fn, jax.random.key(0), mesh)
        st = jax.device_put(host_state, sh)
        step = invgan.jit_train_step(c, nets, sh, mesh)
        with jax.set_mesh(mesh):
            for s in range(2):  # step 0 runs lazy R1 (r1_interval=2), step 1 does not
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
    part = invgan.train_and_evaluate(c, str(tmp_path / "b"), stop_after=3)  # "killed"
    assert int(part.step) == 3
    mgr = checkpointing.train_checkpoint_manager(str(tmp_path / "b" / "checkpoints"))
    assert mgr.latest_step() == 3  # the exit path checkpointed
    mgr.close()
    resumed = invgan.train_and_evaluate(c, str(tmp_path / "b"))
    assert int(resumed.step) == int(full.step) == 4
    assert _max_abs_diff(full, resumed) == 0.0
    assert _max_abs_diff(full.g["params"], part.g["params"]) > 0  # step 4 did something


def _counting_step(fail_at=(), sigterm_at=None):
    fail_at = (fail_at,) if isinstance(fail_at, int) else tuple(fail_at)

    def step(state, batch):
        s = int(state["step"])
        if sigterm_at is not None and s == sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)
        bad = s in fail_at
        new = {"step": jnp.asarray(s + 1), "x": state["x"] + batch}
        return new, {"loss": jnp.asarray(np.nan if bad else 1.0), "finite": jnp.asarray(1.0)}

    return step


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path):
    mgr = checkpointing.train_checkpoint_manager(str(tmp_path))
    st = {"step": jnp.asarray(0), "x": jnp.zeros(3)}
    with pytest.raises(loop.NonFiniteError, match=r"step 5 .*last good checkpoint is step 4"):
        loop.train_loop(
            state=st,
            train_step=_counting_step(fail_at=5),
            get_batch=lambda s: 1.0,
            start_step=0,
            num_steps=10,
            mgr=mgr,
            checkpoint_every=2,
            log_every=100,
        )
    mgr.wait_until_finished()
    assert mgr.latest_step() == 4
    restored = checkpointing.restore_train_state(
        mgr, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), st)
    )
    np.testing.assert_array_equal(restored["x"], np.full(3, 4.0))
    mgr.close()


def test_sigterm_checkpoints_then_exits(tmp_path):
    mgr = checkpointing.train_checkpoint_manager(str(tmp_path))
    before = signal.getsignal(signal.SIGTERM)
    st = {"step": jnp.asarray(0), "x": jnp.zeros(3)}
    st, step, reason = loop.train_loop(
        state=st,
        train_step=_counting_step(sigterm_at=2),
        get_batch=lambda s: 1.0,
        start_step=0,
        num_steps=100,
        mgr=mgr,
        checkpoint_every=50,
        log_every=100,
    )
    assert (reason, step) == ("sigterm", 3)
    assert mgr.latest_step() == 3
    assert signal.getsignal(signal.SIGTERM) == before  # restored
    mgr.close()


def test_metrics_are_fetched_only_at_check_points(monkeypatch):
    """One host fetch per window: logging steps (every 4), checkpoint steps (6), the last (10);
    none in between (async dispatch keeps running)."""
    fetched = []
    real = jax.device_get

    def counting(x):
        fetched.append(len(x))
        return real(x)

    monkeypatch.setattr(jax, "device_get", counting)
    st = {"step": jnp.asarray(0), "x": jnp.zeros(3)}
    _, step, reason = loop.train_loop(
        state=st,
        train_step=_counting_step(),
        get_batch=lambda s: 1.0,
        start_step=0,
        num_steps=10,
        checkpoint_every=6,
        log_every=4,
    )
    assert (step, reason) == (10, "done")
    assert fetched == [4, 2, 2, 2]  # steps 1-4 | 5-6 | 7-8 | 9-10


def test_nan_guard_names_the_first_bad_step_of_the_window():
    st = {"step": jnp.asarray(0), "x": jnp.zeros(3)}
    with pytest.raises(loop.NonFiniteError) as e:
        loop.train_loop(
            state=st,
            train_step=_counting_step(fail_at=(5, 6)),
            get_batch=lambda s: 1.0,
            start_step=0,
            num_steps=20,
            log_every=8,
        )
    msg = str(e.value)
    assert "step 5 (metrics ['loss'])" in msg and "no checkpoint was written yet" in msg
    assert "\n" not in msg


def test_nan_guard_counts_the_finite_flag():
    window = [(3, {"loss": 1.0, "finite": 1.0}), (4, {"loss": 1.0, "finite": 0.0})]
    assert loop.first_non_finite(window) == (4, ["finite=0"])
    assert loop.first_non_finite(window[:1]) is None
    with pytest.raises(loop.NonFiniteError, match=r"step 4 .*last good checkpoint is step 2"):
        loop.check_finite(window, last_good=2)


# ----------------------------------------------------------------------------- preemption


def test_preemption_flag_and_handler_restored():
    before = signal.getsignal(signal.SIGTERM)
    with preemption.Preemption() as p:
        assert signal.getsignal(signal.SIGTERM) == p._handle and not p.should_stop()
        os.kill(os.getpid(), signal.SIGTERM)
        assert p.requested and p.should_stop()
    assert signal.getsignal(signal.SIGTERM) == before


def test_preemption_optional_sigint():
    before = signal.getsignal(signal.SIGINT)
    with preemption.Preemption((signal.SIGTERM, signal.SIGINT)) as p:
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: a flag
        assert p.should_stop()
    assert signal.getsignal(signal.SIGINT) == before


def test_preemption_off_the_main_thread_installs_nothing():
    before, out = signal.getsignal(signal.SIGTERM), {}

    def body():
        with preemption.Preemption() as p:
            out["handler"] = signal.getsignal(signal.SIGTERM)
            out["stop"] = p.should_stop()

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert out == {"handler": before, "stop": False}


def test_preemption_single_process_needs_no_collective(monkeypatch):
    from jax.experimental import multihost_utils

    def no_collective(*a, **k):
        raise AssertionError("a collective in a single-process run")

    monkeypatch.setattr(multihost_utils, "process_allgather", no_collective)
    assert preemption.any_process(True) and not preemption.any_process(False)


# ----------------------------------------------------------------------------- progress


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0, "00:00:00"),
        (59, "00:00:59"),
        (59.9, "00:00:59"),
        (3600, "01:00:00"),
        (25 * 3600, "1d 01:00:00"),
        (3 * 86400, "3d 00:00:00"),
        (2 * 86400 + 3 * 3600 + 4 * 60 + 5, "2d 03:04:05"),
        (float("inf"), "?"),
        (float("nan"), "?"),
        (-1, "?"),
    ],
)
def test_format_duration(seconds, text):
    assert progress_lib.format_duration(seconds) == text


class _Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_progress_rate_is_this_session_and_eta_reads_past_a_day():
    clock = _Clock()
    p = progress_lib.Progress(total=1_000_000, done=10, unit="steps", clock=clock)
    assert p.line() == "10/1000000 steps (0.0%) | 0.00 steps/s | ETA ?"  # no rate yet
    clock.t += 10.0
    p.advance(20)  # 20 steps in 10 s; the 10 resumed ones do not count
    assert p.rate() == pytest.approx(2.0)
    assert p.eta() == pytest.approx((1_000_000 - 30) / 2.0)
    assert p.line() == "30/1000000 steps (0.0%) | 2.00 steps/s | ETA 5d 18:53:05"


def test_invert_progress_line_uses_the_shared_reporter():
    from ganinv_jax.jobs import reporting

    clock = _Clock()
    p = reporting.Progress(total=160, done=0, clock=clock)
    clock.t += 10.0
    assert p.update(48, failed=1) == (
        "invert: 48/160 images (30.0%) | 4.80 images/s | ETA 00:00:23 | failed so far 1"
    )
    assert isinstance(p, progress_lib.Progress)


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
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(port), str(i), workdir],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, e[-3000:]
    res = [json.loads(o.split("RESULT", 1)[1]) for o, _ in outs]
    assert {r["pid"] for r in res} == {0, 1}
    assert all(r["n"] == 2 and r["devices"] == 2 and r["step"] == 2 for r in res)
    assert res[0]["d0"] == pytest.approx(res[1]["d0"], rel=1e-6)  # replicas agree
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "2"))
