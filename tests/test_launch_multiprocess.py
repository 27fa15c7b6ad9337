"""Multi-host: 2 jax.distributed processes x 4 fake CPU devices on 127.0.0.1 produce the same
per-image results as one process with 8 devices (and the launch script really works)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_invert_job_support as support  # noqa: E402

from ganinv_jax.jobs import invert, records  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUPPORT = os.path.join(REPO, "tests", "test_invert_job_support.py")
FLOATS = ("mse", "psnr", "ssim", "lpips")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compare_rows(a_dir: str, b_dir: str) -> None:
    a = records.read_csv(os.path.join(a_dir, "metrics.csv"))
    b = records.read_csv(os.path.join(b_dir, "metrics.csv"))
    assert len(a) == len(b) > 0
    for ra, rb in zip(a, b):
        for k in ("id", "path", "method", "iterations", "status"):
            assert ra[k] == rb[k], (k, ra, rb)
        for k in FLOATS:
            np.testing.assert_allclose(float(ra[k]), float(rb[k]), rtol=1e-4, atol=1e-6)
    la, lb = (np.load(os.path.join(d, "latents.npz"))["latents"] for d in (a_dir, b_dir))
    np.testing.assert_allclose(la, lb, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("mp")
    gen = support.make_tiny_gan_dir(str(root / "gen"))
    data = support.write_array_images(str(root / "x.npy"), 10, seed=3)
    return root, gen, data


def run_processes(workdir, gen, data, nproc, ndev, overrides) -> None:
    port = free_port()
    procs = []
    for i in range(nproc):
        env = dict(
            os.environ,
            TEST_NUM_CPU_DEVICES=str(ndev),
            TEST_COORDINATOR=f"127.0.0.1:{port}",
            TEST_NUM_PROCESSES=str(nproc),
            TEST_PROCESS_ID=str(i),
            JAX_PLATFORMS="cpu",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, SUPPORT, workdir, gen] + overrides,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]


def test_two_processes_match_one(setup):
    root, gen, data = setup
    overrides = [f"data.path={data}", "method=toy_tuned", "batch_size=1"]
    multi = str(root / "multi")
    run_processes(multi, gen, data, 2, 4, overrides)
    single = str(root / "single")
    support.register_toys()
    invert.run(support.job_config(gen, data__path=data, method="toy_tuned", batch_size=1), single)
    compare_rows(single, multi)
    summary = json.load(open(os.path.join(multi, "summary.json")))
    assert summary["process_count"] == 2 and summary["device_count"] == 8
    assert summary["local_device_count"] == 4
    # image 5 was inverted by process 1 (slots 4..7 of chunk 0): its tuned params, saved by the
    # collective orbax save, match the single-process run's
    for i in (1, 5, 9):
        a, b = invert.load_tuned(single, i), invert.load_tuned(multi, i)
        np.testing.assert_allclose(a["delta"]["w_shift"], b["delta"]["w_shift"], atol=1e-6)
    pngs = sorted(os.listdir(os.path.join(multi, "recon")))
    assert pngs == [f"{i:08d}.png" for i in range(10)]


@pytest.mark.slow
def test_launch_script_local_multiprocess(setup):
    """launch/local_multiprocess.sh through `python -m ganinv_jax.main` (the user's path)."""
    root, gen, data = setup
    flags = [
        f"--config.generator={gen}",
        f"--config.data.path={data}",
        "--config.steps=4",
        "--config.steps_per_call=2",
        "--config.batch_size=1",
        "--config.latent_opt.perceptual=pooled_l2",
    ]
    multi = str(root / "script")
    r = subprocess.run(
        ["bash", os.path.join(REPO, "launch", "local_multiprocess.sh"), "2", "4", multi] + flags,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    single = str(root / "script_single")
    invert.run(
        support.job_config(gen, data__path=data, steps=4, steps_per_call=2, batch_size=1), single
    )
    compare_rows(single, multi)
