"""`python -m ganinv_jax.main` with configs/stylegan2.py: the user's entry point.

Subprocesses (the real command line); a tiny random generator DIR stands in for the default.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_invert_job_support as support  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "stylegan2.py")


def load_config(variant: str = ""):
    spec = importlib.util.spec_from_file_location("cfg_stylegan2_main", CONFIG)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(variant)


def main(workdir, *flags, timeout=600, config=CONFIG):
    """`python -m ganinv_jax.main --config=CONFIG --workdir=W FLAGS...` as a subprocess."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "ganinv_jax.main", f"--config={config}", f"--workdir={workdir}"]
    return subprocess.run(
        cmd + list(flags), capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env
    )


def last_line(stderr: str) -> str:
    lines = [
        l
        for l in stderr.strip().splitlines()
        if l and not l.startswith(("WARNING: All log", "I0000", "W0000"))
    ]
    return lines[-1] if lines else ""


def test_config_contract():
    c = load_config()
    assert c.task == "invert"
    for key in (
        "method",
        "steps",
        "batch_size",
        "seed",
        "generator",
        "data.path",
        "data.tfds_name",
        "data.split",
        "data.limit",
    ):
        node = c
        for part in key.split("."):
            node = node[part]
    assert c.generator == "default" and c.method == "latent_opt" and c.init == "auto"
    assert c.keep_best is True  # a tuning method never ends above its pivot (engine guard)
    from ganinv_jax.inversion import latent_opt, pti

    assert c.latent_opt.initial_lr == latent_opt.default_config().initial_lr
    assert "num_steps" not in c.latent_opt  # config.steps is the one source of truth
    # the job's PTI departures (documented in the config): lr 1e-2 ramped up over the first
    # 10% and down over the last half, around a W+ pivot; the paper's constant 3e-4 stays the
    # method's default
    assert c.pti.lr == 1e-2 and c.pti.lr_rampdown == 0.5 and c.init_space == "w+"
    assert c.pti.lr_rampup == 0.1 and c.clone.lr_rampup == 0.1 and c.gmm.out_rampup == 0.1
    paper = pti.default_config()
    assert paper.lr == 3e-4 and paper.lr_rampdown == 0 and paper.lr_rampup == 0
    assert c.pti.reg_weight == pti.default_config().reg_weight
    # the locality terms that hold the drift on OOD photos (README "Round 11", "Round 12"):
    # PTI's latents 3 w_std out (the method's 1), GMM's 4 samples also steering θ (paper: φ only)
    assert c.pti.reg_alpha == 3.0 and pti.default_config().reg_alpha == 1.0
    assert c.gmm.grad_reg is True and c.gmm.reg_samples == 4 and c.gmm.out_scale == 2e-2
    assert load_config("tiny").steps < c.steps
    assert c.sample.num > 0  # task 'sample' keeps working
    with pytest.raises(ValueError):
        load_config("huge")


def test_end_to_end_tiny(tmp_path):
    gen = support.make_tiny_gan_dir(str(tmp_path / "gen"))
    data = support.write_array_images(str(tmp_path / "x.npy"), 5)
    wd = tmp_path / "w"
    r = main(
        wd,
        f"--config.generator={gen}",
        f"--config.data.path={data}",
        "--config.steps=3",
        "--config.steps_per_call=3",
        "--config.latent_opt.perceptual=pooled_l2",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "invert: 5/5 images (100.0%)" in r.stderr and "images/s" in r.stderr
    rows = (wd / "metrics.csv").read_text().splitlines()
    assert rows[0] == "id,path,method,mse,psnr,ssim,ms_ssim,lpips,iterations,seconds,status"
    assert len(rows) == 6
    summary = json.loads((wd / "summary.json").read_text())
    assert summary["complete"] and summary["config"]["steps"] == 3
    assert len(np.load(wd / "latents.npz")["ids"]) == 5


@pytest.mark.parametrize(
    "flag,needle",
    [
        ("--config.methd=pti", "unknown config key '--config.methd'"),
        ("--config.generator=/no/such/gan", "invert: error: config.generator='/no/such/gan'"),
        ("--config.method=nope", "invert: error: config.method='nope'"),
        ("--config.data.path=/no/such/data.npz", "invert: error: data.path"),
    ],
)
def test_bad_settings_one_line(tmp_path, flag, needle):
    r = main(tmp_path / "w", flag, timeout=300)
    assert r.returncode != 0
    assert needle in last_line(r.stderr), r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "w" / "manifest.json").exists()


INVGAN_CONFIG = os.path.join(REPO, "configs", "invgan_fashion_mnist.py")


def main_invgan(workdir, variant, *flags, timeout=600):
    return main(workdir, *flags, timeout=timeout, config=f"{INVGAN_CONFIG}:{variant}")


@pytest.mark.parametrize(
    "task,flags,needle",
    [
        ("sample", ("--config.generator=/no/such/gan",), "sample: error: /no/such/gan: no such"),
        (
            "train_invgan",
            ("--config.data.dir=/no/such/fmnist",),
            "train_invgan: error: /no/such/fmnist/train-images-idx3-ubyte.gz: dataset file "
            "not found",
        ),
        ("export", (), "export: error: config.export.out"),
        ("export", ("--config.export.out=OUT",), "export: error: {wd}: no training checkpoints"),
        ("ablation", ("--config.ablation.figure_only=True",), "ablation: error: "),
        ("edit", ("--config.edit.source=/no/such/inversion",), "edit: error: "),
    ],
)
def test_every_task_fails_with_one_line(tmp_path, task, flags, needle):
    """The error contract of every task: one line naming the problem and the file, exit 1,
    no traceback, nothing written where the output would go."""
    wd = tmp_path / "w"
    flags = [f.replace("OUT", str(tmp_path / "out")) for f in flags]
    if task in ("sample", "edit"):
        r = main(wd, f"--config.task={task}", *flags, timeout=300)
    else:
        r = main_invgan(wd, "tiny", f"--config.task={task}", *flags, timeout=300)
    assert r.returncode == 1, r.stderr[-2000:]
    assert needle.format(wd=wd) in last_line(r.stderr), r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()
    assert not (wd / "checkpoints").exists() or task == "ablation"


def test_train_then_export_through_main(tmp_path):
    """The trainer and the exporter are tasks of the one entry point: 4 tiny steps, then the
    workdir becomes a DIR that `pretrained.load` reads and that generates what G_ema does."""
    wd, out = tmp_path / "w", tmp_path / "dir"
    r = main_invgan(wd, "tiny")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (wd / "checkpoints" / "4").is_dir()
    r = main_invgan(
        wd,
        "tiny",
        "--config.task=export",
        f"--config.export.out={out}",
        "--config.export.num_test=16",
        "--config.export.note=from test",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    from ganinv_jax import pretrained

    gan = pretrained.load(str(out))
    assert gan.meta["source"]["step"] == 4 and gan.meta["source"]["note"] == "from test"
    ev = json.loads((out / "eval.json").read_text())
    assert ev["num_test"] == 16 and np.isfinite(ev["test_mae_g_ema"])
    for f in ("samples.png", "reconstructions.png", "MODEL.md", "train_config.json"):
        assert (out / f).is_file(), f
    from PIL import Image

    assert Image.open(out / "samples.png").size[0] >= 8 * 128  # readable: >= 128 px per cell
