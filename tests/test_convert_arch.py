"""PGGAN (`pggan-zoo`) and BigGAN (`biggan-hf`) through the one CLI, the one loader and the main
job: `python -m weights_convert` -> DIR -> `pretrained.load(DIR)` (the same kind of object as
StyleGAN2's) -> `gan.generate` / `gan.discriminate`, broken and malicious inputs refused with one
line and no DIR, and one tiny invert run on a converted PGGAN DIR.

Parity of the models with the upstream packages is tests/test_pggan.py and tests/test_biggan.py;
here the fixtures only need to round-trip through the CLI and the loader.
"""

from __future__ import annotations

import os
import pickle
import shutil
import sys
import types
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ganinv_jax import pretrained
from ganinv_jax.models import biggan, pggan
from weights_convert.cli import main

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _ci  # noqa: E402
import test_invert_job_support as support  # noqa: E402
from _parity import nchw  # noqa: E402

PG = "pggan_zoo_small.pt"
PG_IO = "pggan_zoo_small_io.npz"
BG = "biggan_small"
BG_IO = "biggan_small_io.npz"


def run_cli(argv, capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out.strip(), captured.err.strip()


def assert_refused(rc, err, out_dir, *needles):
    """One line, the needles in it, no DIR and no temporary sibling left behind."""
    assert rc == 1 and err.startswith("error:") and "\n" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not os.path.exists(out_dir)
    assert not [n for n in os.listdir(os.path.dirname(out_dir)) if ".tmp-" in n]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """Both fixtures converted once through the CLI: {'pggan': DIR (+ raw G), 'biggan': DIR}."""
    root = tmp_path_factory.mktemp("converted")
    out = {}
    for name, fmt, src, extra in (
        ("pggan", "pggan-zoo", PG, ["--raw-g"]),
        ("biggan", "biggan-hf", BG, []),
    ):
        assert main(["--format", fmt, "--src", _ci.fixture_file(src), "--out", str(root / name)]
                    + extra) == 0  # fmt: skip
        out[name] = str(root / name)
    return out


# ----------------------------------------------------------------------------- pretrained.load


def test_pggan_dir_loads_generates_and_discriminates(dirs):
    io_ = np.load(_ci.fixture_file(PG_IO))
    gan = pretrained.load(dirs["pggan"])
    assert isinstance(gan, pretrained.GAN) and gan.architecture == "pggan"
    assert gan.meta["architecture"] == "pggan" and gan.meta["source"]["format"] == "pggan-zoo"
    assert (gan.z_dim, gan.resolution, gan.img_channels, gan.which) == (64, 16, 3, "G_ema")
    assert sorted(gan.params) == ["D", "G", "G_ema"] and gan.G is gan.params["G_ema"]
    img = gan.generate(io_["z"])
    assert img.shape == (4, 16, 16, 3) and img.dtype == jnp.float32
    # the model's apply (to float rounding: jit vs eager); the upstream avgG image
    want = pggan.Generator(gan.config).apply(gan.G, io_["z"])
    np.testing.assert_allclose(img, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(nchw(img), io_["img"], atol=1e-4)
    logits = gan.discriminate(jnp.asarray(io_["img"].transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(logits, io_["d_logits"], atol=1e-4)
    raw = pretrained.load(dirs["pggan"], which="G")  # netG
    assert raw.which == "G"
    np.testing.assert_allclose(nchw(raw.generate(io_["z"])), io_["img_netG"], atol=1e-4)
    for bad in (lambda: gan.generate(io_["z"], c=np.zeros((4, 1))),
                lambda: gan.generate(io_["z"], truncation=0.7)):  # fmt: skip
        with pytest.raises(ValueError, match="pggan"):
            bad()
    # a StyleGAN2-style sample: same calls, the same kind of object
    z, c = gan.sample_inputs(jax.random.key(0), 2)
    assert z.shape == (2, 64) and c is None


def test_biggan_dir_loads_generates_without_d(dirs):
    io_ = np.load(_ci.fixture_file(BG_IO))
    gan = pretrained.load(dirs["biggan"])
    assert isinstance(gan, pretrained.GAN) and gan.architecture == "biggan"
    assert (gan.z_dim, gan.resolution, gan.img_channels, gan.c_dim) == (32, 32, 3, 1000)
    assert sorted(gan.params) == ["G_ema"]
    # truncation 0.725 interpolates two BN-statistics rows (tests/test_biggan.py: both calls)
    img = gan.generate(io_["z_b"], io_["class_vector"], 0.725)  # a Python float
    assert img.shape == (4, 32, 32, 3) and img.dtype == jnp.float32
    np.testing.assert_allclose(nchw(img), io_["img_b"], atol=1e-4)
    apply = jax.jit(biggan.Generator(gan.config).apply, static_argnums=3)
    want = apply(gan.G, io_["z_b"], io_["class_vector"], 0.725)  # the model's apply
    np.testing.assert_allclose(img, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="class vector"):
        gan.generate(io_["z"])
    with pytest.raises(TypeError, match="Python float"):
        gan.generate(io_["z"], io_["class_vector"], np.float32(0.4))
    with pytest.raises(ValueError, match="no discriminator"):
        gan.discriminate(jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(ValueError, match="no discriminator"):
        gan.D
    with pytest.raises(ValueError, match="which"):
        pretrained.load(dirs["biggan"], which="G")
    z, c = gan.sample_inputs(jax.random.key(0), 3, truncation=0.4)
    assert np.abs(np.asarray(z)).max() <= 0.8 and c.shape == (3, 1000)


def test_no_d_and_wrong_architecture_in_config(dirs, tmp_path, capsys):
    out = tmp_path / "pg_no_d"
    rc, line, _ = run_cli(
        ["--format", "pggan-zoo", "--src", _ci.fixture_file(PG), "--out", out, "--no-d"], capsys
    )
    assert rc == 0 and "PGGAN resolution 16" in line and "G_ema" in line, line
    gan = pretrained.load(str(out))
    assert sorted(gan.params) == ["G_ema"]
    with pytest.raises(ValueError, match="no discriminator"):
        gan.discriminate(jnp.zeros((1, 16, 16, 3)))
    # a DIR whose architecture does not match its config: one clear error
    bad = tmp_path / "bad"
    shutil.copytree(dirs["biggan"], bad)
    doc = (bad / "config.json").read_text().replace('"biggan"', '"pggan"')
    (bad / "config.json").write_text(doc)
    with pytest.raises(ValueError, match="corrupt config for architecture 'pggan'"):
        pretrained.load(str(bad))


# ----------------------------------------------------------------------------- CLI errors


def test_biggan_options_and_paths_refused(tmp_path, capsys):
    folder = _ci.fixture_file(BG)
    out = tmp_path / "out"
    for extra, needle in (
        (["--no-d"], "--no-d does not apply"),
        (["--raw-g"], "--raw-g does not apply"),
        (["--conv-clamp", "256"], "--conv-clamp does not apply"),
    ):
        rc, _, err = run_cli(["--format", "biggan-hf", "--src", folder, "--out", out, *extra],
                             capsys)  # fmt: skip
        assert_refused(rc, err, str(out), needle, "biggan-hf")
    weights = os.path.join(folder, "pytorch_model.bin")
    rc, _, err = run_cli(["--format", "biggan-hf", "--src", weights, "--out", out], capsys)
    assert_refused(rc, err, str(out), weights, "not a directory")
    # the weights file given to another format: the hint names the format and the folder
    rc, _, err = run_cli(["--format", "rosinality", "--src", weights, "--out", out], capsys)
    assert_refused(rc, err, str(out), "--format biggan-hf", "folder")
    rc, _, err = run_cli(["--format", "pggan-zoo", "--src", folder, "--out", out], capsys)
    assert_refused(rc, err, str(out), "is a directory")
    rc, _, err = run_cli(
        ["--format", "rosinality", "--src", _ci.fixture_file(PG), "--out", out], capsys
    )
    assert_refused(rc, err, str(out), "--format pggan-zoo")


def test_broken_biggan_folders_refused(tmp_path, capsys):
    src = _ci.fixture_file(BG)
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(os.path.join(src, "pytorch_model.bin"), folder)
    (folder / "config.json").write_text('{"z_dim": 32')  # truncated JSON
    out = tmp_path / "out"
    rc, _, err = run_cli(["--format", "biggan-hf", "--src", folder, "--out", out], capsys)
    assert_refused(rc, err, str(out), "config.json", "not valid JSON")
    shutil.copy(os.path.join(src, "config.json"), folder)
    data = open(os.path.join(src, "pytorch_model.bin"), "rb").read()
    (folder / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    rc, _, err = run_cli(["--format", "biggan-hf", "--src", folder, "--out", out], capsys)
    assert_refused(rc, err, str(out), "pytorch_model.bin")


class _Evil:
    """Pickles as a REDUCE of `fn(*args)`: what a malicious checkpoint does."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _torch_zip(path, obj) -> None:
    """A torch-zip layout whose data.pkl is `obj` (no torch needed)."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(obj, protocol=2))
        zf.writestr("archive/version", "3\n")


def test_malicious_checkpoints_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"
    out = tmp_path / "out"
    # pggan-zoo: the payload where netD would be
    evil = {"config": {"depthScale0": 4}, "netG": {}, "netD": _Evil(os.system, f"touch {marker}")}
    src = tmp_path / "evil.pt"
    _torch_zip(src, evil)
    rc, _, err = run_cli(["--format", "pggan-zoo", "--src", src, "--out", out], capsys)
    assert_refused(rc, err, str(out), str(src), "refusing", "system")
    # biggan-hf: a good config.json next to a malicious pytorch_model.bin
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(os.path.join(_ci.fixture_file(BG), "config.json"), folder)
    _torch_zip(folder / "pytorch_model.bin", {"embeddings.weight": _Evil(eval, "1")})
    rc, _, err = run_cli(["--format", "biggan-hf", "--src", folder, "--out", out], capsys)
    assert_refused(rc, err, str(out), "pytorch_model.bin", "refusing", "eval")
    assert not marker.exists(), "a payload ran"


def test_pggan_without_netd_needs_no_d(tmp_path, capsys):
    """A zoo checkpoint saved without netD (re-saved by torch with the BaseConfig class of a
    stand-in `models.utils.config`): one line that says to pass --no-d, then --no-d works."""
    torch = _ci.importorskip("torch")
    names = ("models", "models.utils", "models.utils.config")
    saved = {n: sys.modules.get(n) for n in names}
    mods = {n: types.ModuleType(n) for n in names}

    class BaseConfig:
        pass

    BaseConfig.__module__, BaseConfig.__qualname__ = "models.utils.config", "BaseConfig"
    mods["models.utils.config"].BaseConfig = BaseConfig
    sys.modules.update(mods)
    try:
        ckpt = torch.load(_ci.fixture_file(PG), map_location="cpu", weights_only=False)
        del ckpt["netD"]
        src = tmp_path / "no_d.pt"
        torch.save(ckpt, src)
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m
    out = tmp_path / "out"
    rc, _, err = run_cli(["--format", "pggan-zoo", "--src", src, "--out", out], capsys)
    assert_refused(rc, err, str(out), str(src), "no 'netD'", "pass --no-d")
    rc, _, _ = run_cli(["--format", "pggan-zoo", "--src", src, "--out", out, "--no-d"], capsys)
    assert rc == 0 and pretrained.load(str(out)).meta["networks"] == ["G_ema"]


# ----------------------------------------------------------------------------- the main job


def test_invert_job_on_a_converted_pggan_dir(dirs, tmp_path):
    """The main job on a converted PGGAN DIR: 2 bundled images, 2 latent_opt steps, one device;
    metrics.csv, and latents.npz holding PGGAN's latent (z)."""
    from ganinv_jax.jobs import invert

    cfg = support.job_config(dirs["pggan"], steps=2, steps_per_call=2, batch_size=2, data__limit=2)
    wd = str(tmp_path / "w")
    invert.run(cfg, wd, devices=jax.devices()[:1])
    rows = open(os.path.join(wd, "metrics.csv")).read().splitlines()
    assert len(rows) == 3 and rows[1].split(",")[2] == "latent_opt", rows
    lat = np.load(os.path.join(wd, "latents.npz"))
    assert lat["latents"].shape == (2, 64) and np.isfinite(lat["latents"]).all()
