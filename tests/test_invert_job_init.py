"""The invert job's starting latents (config.init), end to end through `invert.run`.

`init=encoder` (what `init=auto` resolves to for latent_opt on a G with an InvGAN w head: the
README's default run) and `init=latent_opt` (a projected pivot) on the embedded default model
(32x32x3, with an encoder) and 2 of the bundled Fashion-MNIST test images, on one device.

The job runs the method for `steps=1`. latent_opt's learning-rate ramp (the StyleGAN2
projector's linear ramp-up) is 0 at step 0, so after that one step the saved latent IS the
initial latent the job handed to the engine: what `config.init` produced. (test_invert_job.py
checks `resolve_init`/`pivot_config` as functions and that a PTI run around a pivot completes.)
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_invert_job_support as support  # noqa: E402

from ganinv_jax import encoders, pretrained  # noqa: E402
from ganinv_jax.jobs import invert, records, sources  # noqa: E402

N = 2


@pytest.fixture(scope="module")
def gan():
    return pretrained.load("default")


@pytest.fixture(scope="module")
def images():
    """The job's input (the bundled sample, first N), decoded here independently."""
    with np.load(sources.BUNDLED_SAMPLE) as z:
        u8 = z["images"][:N]
    return np.repeat(u8.astype(np.float32) / 127.5 - 1.0, 3, axis=-1)


def _run_job(workdir, **overrides):
    """The job on the first N bundled images; the InvGAN w-head is the encoder unless
    `encoder=` says otherwise (with a shipped default encoder, 'auto' would pick that one)."""
    settings = dict(data__limit=N, method="latent_opt", steps=1, steps_per_call=1, batch_size=N)
    settings.update(encoder="invgan")
    settings.update(overrides)
    config = support.job_config("default", **settings)
    invert.run(config, workdir, devices=jax.devices()[:1])
    settings = json.load(open(os.path.join(workdir, "manifest.json")))["run"]
    with np.load(os.path.join(workdir, "latents.npz")) as z:
        ids, latents = z["ids"], z["latents"]
    np.testing.assert_array_equal(ids, np.arange(N))
    rows = records.read_csv(os.path.join(workdir, "metrics.csv"))
    assert [int(r["id"]) for r in rows] == list(range(N))
    assert all(r["status"] in ("converged", "max_steps") for r in rows), rows
    return settings, latents, np.array([float(r["mse"]) for r in rows])


def _mse01(gan, ws, x):
    """The job's metrics.csv MSE (on [0, 1], of the clipped reconstruction) of G(ws) vs x."""
    rec = np.clip(np.asarray(gan.synthesis(jnp.asarray(ws))), -1, 1)
    return np.mean(np.square(rec - x).reshape(len(x), -1), axis=1) / 4.0


@pytest.fixture(scope="module")
def encoder_run(tmp_path_factory):
    return _run_job(str(tmp_path_factory.mktemp("enc")), init="encoder")


def test_init_encoder_starts_at_the_w_head(encoder_run, gan, images):
    settings, latents, mse = encoder_run
    assert settings["init"] == "encoder" and settings["init_config"] is None
    enc = np.asarray(gan.encode(jnp.asarray(images)))  # [N, num_ws, w_dim]
    assert latents.shape == enc.shape == (N, gan.config.num_ws, gan.config.w_dim)
    np.testing.assert_allclose(latents, enc, rtol=0, atol=1e-5)
    # not the mean w (the other start a mistaken job would take)
    w_avg = np.asarray(gan.G["buffers"]["mapping"]["w_avg"])
    assert np.abs(latents - w_avg).max() > 0.1
    # the job's reconstruction is G(encoder(x)): its MSE matches, and it is a real
    # reconstruction (the mean w's is several times worse)
    np.testing.assert_allclose(mse, _mse01(gan, enc, images), rtol=1e-4, atol=1e-7)
    mean_w_mse = _mse01(gan, np.broadcast_to(w_avg, enc.shape), images)
    print(f"\ninit=encoder MSE {mse} (mean w: {mean_w_mse})")
    assert np.all(mse < 0.5 * mean_w_mse), (mse, mean_w_mse)


def test_init_auto_is_the_encoder_for_latent_opt(tmp_path, encoder_run):
    """`init=auto` for latent_opt = init=encoder."""
    settings, latents, mse = _run_job(str(tmp_path / "auto"))  # same compiled programs
    assert settings["init"] == "encoder"
    np.testing.assert_array_equal(latents, encoder_run[1])
    np.testing.assert_array_equal(mse, encoder_run[2])


def test_init_latent_opt_projects_a_pivot_from_the_encoder(tmp_path, encoder_run, gan, images):
    settings, pivot, mse = _run_job(
        str(tmp_path / "pivot"), init="latent_opt", init_steps=6, init_space="w+"
    )
    assert settings["init"] == "latent_opt"
    assert settings["init_config"]["num_steps"] == 6 and settings["init_config"]["space"] == "w+"
    enc = encoder_run[1]
    w_avg = np.asarray(gan.G["buffers"]["mapping"]["w_avg"])
    print(
        f"\npivot: moved {np.abs(pivot - enc).max():.3g}, W+ spread "
        f"{np.abs(pivot - pivot[:, :1]).max():.3g}, |p-enc| {np.linalg.norm(pivot - enc):.3g}"
        f" |p-w_avg| {np.linalg.norm(pivot - w_avg):.3g}; MSE {mse} (encoder {encoder_run[2]})"
    )
    # projected: moved off the encoder's latent, per layer (W+), and started there (it is much
    # nearer the encoder's latent than the mean w)
    assert np.abs(pivot - enc).max() > 1e-2
    assert np.abs(pivot - pivot[:, :1]).max() > 1e-3
    assert np.linalg.norm(pivot - enc) < 0.5 * np.linalg.norm(pivot - w_avg)
    # the job's reconstruction is G(pivot), and the projection improved on the encoder
    np.testing.assert_allclose(mse, _mse01(gan, pivot, images), rtol=1e-4, atol=1e-7)
    assert np.all(mse < encoder_run[2]), (mse, encoder_run[2])


# ----------------------------------------------------------------------------- trained encoders


@pytest.fixture(scope="module")
def enc_dir(tmp_path_factory, gan):
    """A small paper-000 encoder DIR for the default G (random weights: the job's wiring is
    under test, not the encoder's training)."""
    cfg = encoders.config_for_generator("adaptive", gan.config, width=0.25)
    w_avg = np.asarray(gan.G["buffers"]["mapping"]["w_avg"])
    params = encoders.init_params(cfg, jax.random.key(1), latent_mean=w_avg)
    return encoders.write_dir(str(tmp_path_factory.mktemp("enc") / "E"), cfg, params)


@pytest.fixture(scope="module")
def encoder_method_run(tmp_path_factory, enc_dir):
    return _run_job(str(tmp_path_factory.mktemp("encm")), method="encoder", encoder=enc_dir)


def test_method_encoder_is_the_encoders_reconstruction(encoder_method_run, enc_dir, gan, images):
    settings, latents, mse = encoder_method_run
    assert settings["init"] == "encoder" and settings["encoder"] == enc_dir
    enc = np.asarray(pretrained.load_encoder(enc_dir).encode_ws(jnp.asarray(images), gan))
    assert latents.shape == (N, gan.config.num_ws, gan.config.w_dim)
    np.testing.assert_allclose(latents, enc, rtol=0, atol=1e-5)
    np.testing.assert_allclose(mse, _mse01(gan, enc, images), rtol=1e-4, atol=1e-7)


def test_init_encoder_dir_starts_latent_opt_there(tmp_path, encoder_method_run, enc_dir):
    settings, latents, _ = _run_job(str(tmp_path / "lo"), init="encoder", encoder=enc_dir)
    assert settings["init"] == "encoder" and settings["encoder"] == enc_dir
    np.testing.assert_allclose(latents, encoder_method_run[1], rtol=0, atol=1e-5)


def test_encoder_ft_tunes_each_images_encoder(tmp_path, encoder_method_run, enc_dir, gan):
    """3 steps of per-image fine-tuning (LPIPS term off: its backward's compile is covered by
    the loss tests) lower every image's reconstruction error below the encoder's, and the saved
    latent is what the tuned encoder gives (G(latent) is the reconstruction)."""
    wd = str(tmp_path / "ft")
    settings, latents, mse = _run_job(
        wd, method="encoder_ft", encoder=enc_dir, steps=3, steps_per_call=3, encoder_ft__w_lpips=0.0
    )
    assert settings["method_config"]["num_steps"] == 3
    rows = records.read_csv(os.path.join(wd, "metrics.csv"))
    assert [int(r["iterations"]) for r in rows] == [3] * N
    print(f"\nencoder_ft MSE {mse} (encoder {encoder_method_run[2]})")
    assert np.all(mse < encoder_method_run[2]), (mse, encoder_method_run[2])
    assert np.abs(latents - encoder_method_run[1]).max() > 1e-4
    with np.load(sources.BUNDLED_SAMPLE) as z:
        x = np.repeat(z["images"][:N].astype(np.float32) / 127.5 - 1.0, 3, axis=-1)
    np.testing.assert_allclose(mse, _mse01(gan, latents, x), rtol=1e-4, atol=1e-7)
    tuned = invert.load_tuned(wd, 0)  # the image's own encoder, as a delta
    assert jax.tree_util.tree_structure(tuned) == jax.tree_util.tree_structure(
        pretrained.load_encoder(enc_dir).params
    )


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(method="encoder", encoder="invgan"), "needs a trained encoder"),
        (dict(method="encoder_ft", encoder="none"), "needs a trained encoder"),
        (dict(method="encoder", init="mean_w"), "starts from its encoder"),
        (dict(init="encoder", encoder="/no/such/encoder"), "no such encoder directory"),
        (dict(method="pti", max_drift=0.01, keep_best=False), "needs config.keep_best=True"),
    ],
)
def test_bad_settings_fail_in_one_line(tmp_path, overrides, message):
    config = support.job_config("default", data__limit=N, **overrides)
    with pytest.raises(invert.JobError) as e:
        invert.prepare(config, str(tmp_path / "w"), devices=jax.devices()[:1])
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not os.path.exists(str(tmp_path / "w" / "manifest.json"))


def test_an_encoder_for_another_generator_is_refused(tmp_path, gan):
    small = encoders.EncoderConfig(
        kind="adaptive",
        resolution=16,
        z_dim=64,
        w_dim=64,
        num_ws=6,
        channels=(8, 8, 8),
        in_channels=4,
    )
    d = encoders.write_dir(
        str(tmp_path / "E16"), small, encoders.init_params(small, jax.random.key(0))
    )
    config = support.job_config("default", data__limit=N, init="encoder", encoder=d)
    with pytest.raises(invert.JobError, match="encoder is for a G with"):
        invert.prepare(config, str(tmp_path / "w"), devices=jax.devices()[:1])


def test_encoder_auto_is_the_shipped_default_for_the_default_model(gan):
    """`auto` picks the shipped paper-000 encoder for the default model; `invgan` stays
    reachable."""
    auto = invert.resolve_encoder(support.job_config("default"), gan)
    assert (auto.kind, auto.spec) == ("trained", "default")
    assert auto.trained.path == pretrained.DEFAULT_ENCODER_DIR
    head = invert.resolve_encoder(support.job_config("default", encoder="invgan"), gan)
    assert head.kind == "invgan" and head.encode_fn(gan) == gan.encode
