"""The invert job (ganinv_jax/jobs/invert.py): sharding invariance, resume, bad inputs, outputs.

A tiny random StyleGAN2 DIR is made per module, so nothing here needs the embedded default model.
The job runs in-process on the 8 fake CPU devices of conftest.py (or on a 1-device subset).
"""

from __future__ import annotations

import errno
import io
import json
import os
import struct
import subprocess
import sys
import time
import zlib

import jax
import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_invert_job_support as support  # noqa: E402

from ganinv_jax import atomic, inversion  # noqa: E402
from ganinv_jax.jobs import invert, methods, records, sources  # noqa

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def gen_dir(tmp_path_factory):
    return support.make_tiny_gan_dir(str(tmp_path_factory.mktemp("gen") / "tiny"))


@pytest.fixture(scope="module")
def images_npy(tmp_path_factory):
    return support.write_array_images(str(tmp_path_factory.mktemp("data") / "x.npy"), 11)


def read_rows(workdir):
    return records.read_csv(os.path.join(workdir, "metrics.csv"))


def strip_seconds(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def latents(workdir):
    with np.load(os.path.join(workdir, "latents.npz")) as z:
        return z["ids"], z["latents"], z["status"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, gen_dir, images_npy):
    """One uninterrupted run on all 8 devices (batch 1 per device: chunks of 8)."""
    wd = str(tmp_path_factory.mktemp("ref"))
    invert.run(support.job_config(gen_dir, data__path=images_npy, batch_size=1), wd)
    return wd


# ----------------------------------------------------------------------------- sharding


def test_outputs_complete(reference):
    rows = read_rows(reference)
    assert [int(r["id"]) for r in rows] == list(range(11))
    assert all(r["status"] in ("max_steps", "converged") for r in rows)
    assert all(int(r["iterations"]) == 6 for r in rows)
    for r in rows:
        assert 0 < float(r["mse"]) < 1 and np.isfinite(float(r["lpips"]))
        assert abs(float(r["psnr"]) + 10 * np.log10(float(r["mse"]))) < 1e-3
        assert os.path.isfile(os.path.join(reference, "recon", f"{int(r['id']):08d}.png"))
    ids, lat, status = latents(reference)
    assert list(ids) == list(range(11)) and lat.shape == (11, 6, 16) and np.isfinite(lat).all()
    summary = json.load(open(os.path.join(reference, "summary.json")))
    assert summary["complete"] and summary["device_count"] == 8
    assert (
        summary["aggregates"]["counts"]["max_steps"] + summary["aggregates"]["counts"]["converged"]
        == 11
    )
    assert summary["versions"]["jax"] == jax.__version__
    grids = os.listdir(os.path.join(reference, "grids"))
    assert len(grids) == 2  # 11 images in chunks of 8
    assert os.listdir(os.path.join(reference, "tensorboard"))
    assert open(os.path.join(reference, "failures.csv")).read().strip() == "id,path,reason"


def test_one_device_equals_eight(tmp_path, gen_dir, images_npy, reference):
    """Same per-image results on a 1-device mesh (chunks of 3) as on 8 devices (chunks of 8)."""
    wd = str(tmp_path)
    invert.run(
        support.job_config(gen_dir, data__path=images_npy, batch_size=3),
        wd,
        devices=jax.devices()[:1],
    )
    a, b = read_rows(reference), read_rows(wd)
    assert [(r["id"], r["path"], r["status"], r["iterations"]) for r in a] == [
        (r["id"], r["path"], r["status"], r["iterations"]) for r in b
    ]
    for k in ("mse", "psnr", "ssim", "lpips"):
        np.testing.assert_allclose(
            [float(r[k]) for r in a], [float(r[k]) for r in b], rtol=2e-4, atol=1e-5
        )
    np.testing.assert_allclose(latents(reference)[1], latents(wd)[1], rtol=1e-4, atol=1e-5)
    assert json.load(open(os.path.join(wd, "summary.json")))["device_count"] == 1


# ----------------------------------------------------------------------------- resume


def test_rerun_skips_finished_work(tmp_path, gen_dir, images_npy, reference, monkeypatch):
    wd = str(tmp_path)
    cfg = support.job_config(gen_dir, data__path=images_npy, batch_size=1)
    invert.run(cfg, wd)
    calls = []
    monkeypatch.setattr(invert, "invert_local", lambda *a: calls.append(a) or 1 / 0)
    invert.run(cfg, wd)  # everything done: no inversion at all
    assert calls == []
    assert strip_seconds(read_rows(wd)) == strip_seconds(read_rows(reference))


@pytest.mark.parametrize("crash_at", ["chunk_file", "manifest", "csv_append"])
def test_crash_then_resume_identical(
    tmp_path, gen_dir, images_npy, reference, monkeypatch, crash_at
):
    """A crash at any write of the 2nd chunk loses at most that chunk; the rerun completes
    with bit-identical latents and the same rows (no image lost or duplicated)."""
    wd = str(tmp_path)
    cfg = support.job_config(gen_dir, data__path=images_npy, batch_size=1)
    target = {
        "chunk_file": (atomic, "write_npz"),
        "manifest": (atomic, "write_json"),
        "csv_append": (records, "append_csv"),
    }[crash_at]
    real = getattr(*target)
    count = {"n": 0}

    def flaky(*a, **k):
        count["n"] += 1
        if count["n"] == (3 if crash_at == "csv_append" else 2):  # in chunk 2 (of 2)
            if crash_at == "csv_append":  # a torn row, then death
                with open(a[0], "a") as f:
                    f.write("8,x.npy[8],latent_o")
            raise KeyboardInterrupt("simulated kill")
        return real(*a, **k)

    monkeypatch.setattr(*target, flaky)
    with pytest.raises(KeyboardInterrupt):
        invert.run(cfg, wd)
    monkeypatch.setattr(*target, real)
    committed = json.load(open(os.path.join(wd, "manifest.json")))["chunks"]
    assert len(committed) == (2 if crash_at == "csv_append" else 1)
    invert.run(cfg, wd)
    assert strip_seconds(read_rows(wd)) == strip_seconds(read_rows(reference))
    np.testing.assert_array_equal(latents(wd)[1], latents(reference)[1])
    assert not [f for _, _, fs in os.walk(wd) for f in fs if ".tmp-" in f]


def test_sigterm_commits_chunk_in_flight_then_stops(
    tmp_path, gen_dir, images_npy, reference, monkeypatch
):
    """SIGTERM (preemption) during chunk 1: chunk 1 is finished and committed, the job stops
    with one line, and the rerun completes with the reference results."""
    import signal

    wd = str(tmp_path)
    cfg = support.job_config(gen_dir, data__path=images_npy, batch_size=1)
    real = invert.process_chunk

    def preempted(ctx, chunk, loaded=None):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the chunk is in flight
        return real(ctx, chunk, loaded)

    monkeypatch.setattr(invert, "process_chunk", preempted)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as e:
        invert.run(cfg, wd)
    assert "stopped by SIGTERM after chunk_00000000" in str(e.value)
    assert len(json.load(open(os.path.join(wd, "manifest.json")))["chunks"]) == 1
    assert signal.getsignal(signal.SIGTERM) == before  # restored
    monkeypatch.setattr(invert, "process_chunk", real)
    invert.run(cfg, wd)
    assert strip_seconds(read_rows(wd)) == strip_seconds(read_rows(reference))


def test_disk_full_is_clear_and_resumable(tmp_path, gen_dir, images_npy, reference, monkeypatch):
    wd = str(tmp_path)
    cfg = support.job_config(gen_dir, data__path=images_npy, batch_size=1)
    real = atomic.write_npz
    count = {"n": 0}

    def full_disk(path, **arrays):
        count["n"] += 1
        if count["n"] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return real(path, **arrays)

    monkeypatch.setattr(atomic, "write_npz", full_disk)
    with pytest.raises(SystemExit) as e:
        invert.run(cfg, wd)
    msg = str(e.value)
    assert "No space left on device" in msg and "rerun" in msg and "\n" not in msg
    assert len(json.load(open(os.path.join(wd, "manifest.json")))["chunks"]) == 1
    monkeypatch.setattr(atomic, "write_npz", real)
    invert.run(cfg, wd)
    assert strip_seconds(read_rows(wd)) == strip_seconds(read_rows(reference))


def test_real_disk_full_on_tmpfs(tmp_path, gen_dir, images_npy, reference):
    """A genuinely full filesystem (a 40 KiB tmpfs): one-line error naming the file, every
    chunk the manifest lists is complete, and after growing the filesystem the same command
    finishes with the reference results."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=40k", "tmpfs", str(mnt)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        wd = str(mnt / "w")
        cfg = support.job_config(gen_dir, data__path=images_npy, batch_size=1)
        with pytest.raises(SystemExit) as e:
            invert.run(cfg, wd)
        msg = str(e.value)
        assert "No space left on device" in msg and wd in msg and "\n" not in msg
        _check_workdir_consistent(wd)
        subprocess.run(["mount", "-o", "remount,size=8m", str(mnt)], check=True)
        invert.run(cfg, wd)
        assert strip_seconds(read_rows(wd)) == strip_seconds(read_rows(reference))
        np.testing.assert_array_equal(latents(wd)[1], latents(reference)[1])
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)  # still open: lazy


def test_resume_with_other_settings_fails_fast(tmp_path, gen_dir, images_npy, reference):
    with pytest.raises(SystemExit) as e:
        invert.run(
            support.job_config(gen_dir, data__path=images_npy, batch_size=1, seed=5), reference
        )
    assert "different seed" in str(e.value)


# ----------------------------------------------------------------------------- fail fast


@pytest.mark.parametrize(
    "override,needle",
    [
        ({"method": "projection"}, "config.method='projection'"),
        ({"generator": "/nonexistent/gan"}, "no such directory"),
        ({"data__path": "/nonexistent/images"}, "no such file or folder"),
        ({"steps": 0}, "config.steps"),
        ({"init": "magic"}, "config.init"),
        ({"g_dtype": "float16"}, "config.g_dtype='float16'"),
        ({"latent_opt__space": "z"}, None),  # a bad method value surfaces from the method itself
    ],
)
def test_bad_settings_fail_fast(tmp_path, gen_dir, images_npy, override, needle):
    kw = {"data__path": images_npy, **override}
    wd = str(tmp_path / "w")
    if needle is None:
        with pytest.raises(Exception):
            invert.run(support.job_config(gen_dir, **kw), wd)
        return
    with pytest.raises(SystemExit) as e:
        invert.run(support.job_config(gen_dir, **kw), wd)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert not os.path.exists(os.path.join(wd, "manifest.json"))


def test_missing_checkpoint_files(tmp_path, images_npy):
    broken = tmp_path / "gan"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    with pytest.raises(SystemExit) as e:
        invert.run(support.job_config(str(broken), data__path=images_npy), str(tmp_path / "w"))
    assert "cannot load" in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- bad inputs


def _png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h (a decompression bomb's calling card)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    chunk = lambda t, d: (
        struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    )
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def make_messy_folder(root) -> tuple[list[str], list[str]]:
    """(good relative paths, broken relative paths)."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), "RGB")
    good = {
        "a/rgb.jpg": _png_bytes(rgb, format="JPEG"),
        "a/b/rgba.png": _png_bytes(rgb.convert("RGBA")),
        "gray.png": _png_bytes(rgb.convert("L")),
        "palette.png": _png_bytes(rgb.convert("P")),
        "sixteen.png": _png_bytes(
            Image.fromarray(rng.integers(0, 65535, (20, 20), dtype=np.uint16))
        ),
        "tall.webp": _png_bytes(
            Image.fromarray(rng.integers(0, 256, (300, 7, 3), dtype=np.uint8)), format="WEBP"
        ),
        "tiny.PNG": _png_bytes(Image.new("RGB", (3, 5), (200, 10, 10))),
        "cmyk.jpg": _png_bytes(rgb.convert("CMYK"), format="JPEG"),
    }
    full_png = _png_bytes(rgb)
    full_jpg = good["a/rgb.jpg"]
    corrupt_idat = bytearray(full_png)
    corrupt_idat[len(corrupt_idat) // 2 : len(corrupt_idat) // 2 + 40] = b"\0" * 40
    broken = {
        "empty.png": b"",
        "truncated.png": full_png[: len(full_png) // 2],
        "truncated.jpg": full_jpg[: len(full_jpg) // 3],
        "text_as.jpg": b"hello, I am not an image\n" * 10,
        "noise.webp": rng.integers(0, 256, 2000, dtype=np.uint8).tobytes(),
        "bomb.png": _png_header_only(100_000, 100_000),  # PIL's own limit refuses it
        "bomb_mid.png": _png_header_only(9_000, 9_000),  # under PIL's, over data.max_pixels
        "notes.txt": b"not an image extension",
        "page.png": b"<html><body>404</body></html>",
        "corrupt_idat.png": bytes(corrupt_idat),
        "header_only.jpg": full_jpg[:20],
        "noext": b"\x89PNG",
        "arr.npy": b"\x93NUMPY",
    }
    for rel, data in {**good, **broken}.items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
    os.symlink(os.path.join(root, "does_not_exist.png"), os.path.join(root, "dangling.png"))
    broken["dangling.png"] = b""
    os.makedirs(os.path.join(root, ".hidden"))
    with open(os.path.join(root, ".hidden", "skip.png"), "wb") as f:
        f.write(b"ignored")
    return sorted(good), sorted(broken)


def test_broken_files_recorded_good_ones_done(tmp_path, gen_dir):
    folder = tmp_path / "messy"
    good, broken = make_messy_folder(str(folder))
    wd = str(tmp_path / "w")
    invert.run(support.job_config(gen_dir, data__path=str(folder), batch_size=1), wd)
    rows = {r["path"]: r for r in read_rows(wd)}
    assert sorted(rows) == sorted(good + broken)  # every file exactly once, nothing hidden
    assert len(read_rows(wd)) == len(rows)
    for p in good:
        assert rows[p]["status"] in ("max_steps", "converged"), (p, rows[p])
    fails = {r["path"]: r["reason"] for r in records.read_csv(os.path.join(wd, "failures.csv"))}
    assert sorted(fails) == sorted(broken)
    assert all(
        rows[p]["status"] == "bad_input"
        and rows[p]["iterations"] == "0"
        and rows[p]["mse"] == "nan"
        for p in broken
    )
    assert "empty file" in fails["empty.png"]
    assert "decompression bomb" in fails["bomb.png"]
    assert "too large" in fails["bomb_mid.png"]
    assert "extension" in fails["notes.txt"]
    assert "not a recognized image" in fails["text_as.jpg"]
    assert fails["truncated.png"] and fails["dangling.png"]


def test_preprocess_modes_and_arrays():
    pre = sources.Preprocess(resolution=8, channels=3, background=255)
    rgba = np.zeros((4, 4, 4), np.uint8)  # fully transparent -> the background
    out = sources.prepare_array(rgba, pre)
    assert out.shape == (8, 8, 3) and np.allclose(out, 1.0)
    pad = sources.Preprocess(resolution=8, channels=1, resize_mode="pad")
    small = np.full((4, 4), 255, np.uint8)
    out = sources.prepare_array(small, pad)
    assert out.shape == (8, 8, 1) and out[4, 4, 0] == 1.0 and out[0, 0, 0] == -1.0
    f = np.linspace(-1, 1, 8 * 8).reshape(8, 8, 1).astype(np.float32)
    np.testing.assert_array_equal(sources.prepare_array(f, pad), f)  # exact, no 8-bit trip
    for bad, why in [
        (f * 3, "outside"),
        (f * np.nan, "non-finite"),
        (np.zeros((8, 8, 2), np.uint8), "expected"),
    ]:
        with pytest.raises(sources.ItemError, match=why):
            sources.prepare_array(bad, pad)


def test_alignment_hook(tmp_path):
    Image.new("L", (16, 16), 255).save(tmp_path / "white.png")
    img = np.zeros((16, 16), np.uint8)
    img[4:12, 4:12] = 200  # the "face" fills the centre
    Image.fromarray(img).save(tmp_path / "face.png")
    hook = sources.resolve_align("test_invert_job_support:align_center_or_none")
    pre = sources.Preprocess(resolution=8, channels=1, align=hook)
    src = sources.FolderSource(str(tmp_path))
    (face, why_face), (white, why_white) = src.load_many(range(2), pre)
    assert src.paths == ["face.png", "white.png"]
    assert why_face == "" and np.allclose(face, 200 / 127.5 - 1, atol=1e-6)  # the crop only
    assert white is None and "alignment hook" in why_white
    with pytest.raises(sources.SourceError, match="cannot import"):
        sources.resolve_align("no_such_module:fn")


def test_array_layouts(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (3, 1, 8, 8), dtype=np.uint8)  # NCHW
    np.savez(tmp_path / "a.npz", images=x, labels=np.arange(3))
    src = sources.ArraySource(str(tmp_path / "a.npz"))
    img, why = src.load_prepared(1, sources.Preprocess(8, 1))
    assert why == "" and np.allclose(img[..., 0], x[1, 0] / 127.5 - 1, atol=1e-6)
    np.save(tmp_path / "b.npy", np.zeros((2, 3), np.float32))
    with pytest.raises(sources.SourceError, match="expected images"):
        sources.ArraySource(str(tmp_path / "b.npy"))


from _ci import needs_fmnist  # noqa: E402  (skips locally, fails under CI=true)


@needs_fmnist
def test_bundled_sample_is_fashion_mnist_test():
    from ganinv_jax.data import load_fashion_mnist

    with np.load(sources.BUNDLED_SAMPLE) as z:
        imgs, idx = z["images"], z["test_index"]
    ref = load_fashion_mnist("test", resolution=32, channels=1)
    assert imgs.shape == (16, 32, 32, 1) and np.array_equal(imgs, ref[idx])


@needs_fmnist
def test_tfds_fashion_mnist_offline():
    src = sources.open_source(
        support.job_config("default", data__tfds_name="fashion_mnist", data__limit=5).data
    )
    assert len(src) == 5
    img, why = src.load_prepared(0, sources.Preprocess(32, 3))
    assert why == "" and img.shape == (32, 32, 3)


# ----------------------------------------------------------------------------- NaN isolation


def test_nan_fails_one_image_others_continue(tmp_path, gen_dir):
    inversion.register(support.toy_nan_method())
    x = np.random.default_rng(1).integers(0, 120, (6, 16, 16, 1), dtype=np.uint8)
    x[[1, 4]] = 255  # the two "bright" images
    np.save(tmp_path / "x.npy", x)
    wd = str(tmp_path / "w")
    cfg = support.job_config(
        gen_dir, data__path=str(tmp_path / "x.npy"), method="toy_nan", batch_size=1
    )
    invert.run(cfg, wd)
    rows = read_rows(wd)
    assert [r["status"] for r in rows] == [
        "max_steps",
        "failed",
        "max_steps",
        "max_steps",
        "failed",
        "max_steps",
    ]
    assert [int(r["iterations"]) for r in rows] == [6, 2, 6, 6, 2, 6]
    fails = records.read_csv(os.path.join(wd, "failures.csv"))
    assert [f["id"] for f in fails] == ["1", "4"] and "non-finite" in fails[0]["reason"]
    assert not os.path.exists(os.path.join(wd, "recon", "00000001.png"))


# ----------------------------------------------------------------------------- tuned params


def test_tuned_params_saved_with_orbax_and_loadable(tmp_path, gen_dir, images_npy):
    inversion.register(support.toy_tuned_method())
    wd = str(tmp_path)
    invert.run(
        support.job_config(gen_dir, data__path=images_npy, method="toy_tuned", batch_size=1), wd
    )
    chunks = json.load(open(os.path.join(wd, "manifest.json")))["chunks"]
    assert [c["tuned"] for c in chunks] == ["tuned/chunk_00000000", "tuned/chunk_00000008"]
    _, lat, _ = latents(wd)
    for i in (0, 7, 9):
        delta = invert.load_tuned(wd, i)
        assert int(delta["delta"]["t"]) == 6
        # the saved tree belongs to image i: its w_shift + w_avg is image i's latent
        assert delta["delta"]["w_shift"].shape == lat[i].shape
    d7, d9 = invert.load_tuned(wd, 7), invert.load_tuned(wd, 9)
    assert not np.allclose(d7["delta"]["w_shift"], d9["delta"]["w_shift"])
    np.testing.assert_allclose(
        d9["delta"]["w_shift"] - d7["delta"]["w_shift"], lat[9] - lat[7], atol=1e-5
    )
    with pytest.raises(KeyError):
        invert.load_tuned(wd, 11)


@pytest.mark.slow
def test_pti_saves_tuned_deltas(tmp_path, gen_dir, images_npy):
    wd = str(tmp_path)
    cfg = support.job_config(
        gen_dir,
        data__path=images_npy,
        method="pti",
        steps=2,
        steps_per_call=2,
        data__limit=3,
        pti__perceptual="pooled_l2",
        pti__reg_weight=0.0,
        batch_size=1,
    )
    invert.run(cfg, wd)
    chunks = json.load(open(os.path.join(wd, "manifest.json")))["chunks"]
    assert all(c["tuned"] for c in chunks)
    delta = invert.load_tuned(wd, 2)
    leaves = jax.tree_util.tree_leaves(delta)
    assert leaves and all(np.isfinite(l).all() for l in leaves)
    assert max(float(np.abs(l).max()) for l in leaves) > 0  # G was actually tuned


# ----------------------------------------------------------------------------- real kill -9


def _check_workdir_consistent(wd: str) -> int:
    """Every chunk the manifest lists has its files; no final-named file is half-written."""
    path = os.path.join(wd, "manifest.json")
    if not os.path.exists(path):
        return 0
    chunks = json.load(open(path))["chunks"]
    for c in chunks:
        rec = records.load_chunk(os.path.join(wd, c["file"]))  # loads: not torn
        for i, s in zip(rec["ids"], rec["status"]):
            if s in records.OK_STATUSES:
                Image.open(os.path.join(wd, "recon", f"{int(i):08d}.png")).load()
    for name in (
        os.listdir(os.path.join(wd, "recon")) if os.path.isdir(os.path.join(wd, "recon")) else []
    ):
        if ".tmp-" not in name:
            Image.open(os.path.join(wd, "recon", name)).load()
    return len(chunks)


@pytest.mark.slow
def test_kill9_at_random_moments_then_resume(tmp_path, gen_dir):
    """SIGKILL the job (a real subprocess) at random moments, rerun until it finishes: the result
    equals an uninterrupted run bit for bit, with every image exactly once."""
    data = support.write_array_images(str(tmp_path / "x.npy"), 24, seed=7)
    ref = str(tmp_path / "ref")
    invert.run(
        support.job_config(gen_dir, data__path=data, batch_size=2), ref, devices=jax.devices()[:2]
    )
    wd = str(tmp_path / "killed")
    env = dict(os.environ, TEST_NUM_CPU_DEVICES="2", JAX_PLATFORMS="cpu")
    cmd = [
        sys.executable,
        os.path.join(HERE, "test_invert_job_support.py"),
        wd,
        gen_dir,
        f"data.path={data}",
        "batch_size=2",
    ]
    rng = np.random.default_rng(0)
    kills = 0

    def committed() -> int:
        try:
            return len(json.load(open(os.path.join(wd, "manifest.json")))["chunks"])
        except (OSError, ValueError):
            return 0

    # attempt 0: killed during start-up; attempts 1-3: killed a random moment (0-1.5 s) after
    # the next chunk commits, i.e. inside the following chunk's compute or writes; then finish.
    for attempt in range(5):
        before = committed()
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if attempt < 4:
            deadline = time.time() + 600
            if attempt == 0:
                time.sleep(float(rng.uniform(0.5, 3.0)))
            else:
                while committed() == before and p.poll() is None and time.time() < deadline:
                    time.sleep(0.05)
                time.sleep(float(rng.uniform(0.0, 1.5)))
            if p.poll() is None:
                p.kill()  # SIGKILL
                p.wait()
                kills += 1
                _check_workdir_consistent(wd)
                continue
        p.wait(timeout=900)
        assert p.returncode == 0, p.stderr.read()[-3000:]
        if attempt == 4 or committed() == 6:
            break
    assert kills >= 3
    assert strip_seconds(read_rows(wd)) == strip_seconds(read_rows(ref))
    ids = [int(r["id"]) for r in read_rows(wd)]
    assert ids == list(range(24))
    np.testing.assert_array_equal(latents(wd)[1], latents(ref)[1])
    assert _check_workdir_consistent(wd) == 6


# ----------------------------------------------------------------------------- paper starts


@pytest.mark.parametrize(
    "method,has_encoder,want",
    [
        ("latent_opt", True, "encoder"),
        ("latent_opt", False, "mean_w"),
        ("pti", True, "latent_opt"),
        ("clone", False, "latent_opt"),
        ("gmm", True, "latent_opt"),
    ],
)
def test_init_auto_is_each_methods_paper_start(gen_dir, method, has_encoder, want):
    config = support.job_config(gen_dir, method=method)
    assert invert.resolve_init(config, has_encoder) == want
    explicit = support.job_config(gen_dir, method=method, init="mean_w")
    assert invert.resolve_init(explicit, has_encoder) == "mean_w"


def test_pivot_projection_uses_the_jobs_latent_opt_loss(gen_dir):
    config = support.job_config(gen_dir, method="pti", init_steps=7, init_space="w+")
    cfg = invert.pivot_config(config, has_encoder=True)
    assert (cfg.space, cfg.num_steps, cfg.perceptual, cfg.initial_noise_factor) == (
        "w+",
        7,
        "pooled_l2",
        0.0,
    )
    assert invert.pivot_config(config, has_encoder=False).initial_noise_factor > 0


def test_latent_opt_from_an_encoder_has_no_noise_ramp(gen_dir):
    # as the pivot: latent_opt started at an encoder keeps its head start; from the mean w
    # (and for the other methods) the method's config is config.<method> as given
    config = support.job_config(gen_dir, method="latent_opt")
    lo = methods.get("latent_opt")
    assert invert.method_run_config(config, lo, "encoder").initial_noise_factor == 0.0
    assert (
        invert.method_run_config(config, lo, "mean_w").initial_noise_factor
        == (config.latent_opt.initial_noise_factor)
        > 0
    )
    pti = support.job_config(gen_dir, method="pti")
    got = invert.method_run_config(pti, methods.get("pti"), "latent_opt")
    assert got.lr == pti.pti.lr and got.num_steps == pti.steps


@needs_fmnist
def test_clone_reals_default_to_the_default_models_training_split(gen_dir):
    from ganinv_jax import data as data_lib

    pre = sources.Preprocess(resolution=32, channels=3)
    reals = invert.load_reals(support.job_config("default", method="clone", reals__num=16), pre)
    train = data_lib.load_fashion_mnist("train", resolution=32, channels=3)
    assert reals.shape == (16, 32, 32, 3) and reals.min() >= -1 and reals.max() <= 1
    as_uint8 = np.round((reals + 1) * 127.5).astype(np.uint8)
    # each real is a train image (not a test image, not a sample of G)
    assert all((train == img).all(axis=(1, 2, 3)).any() for img in as_uint8[:4])
    # another generator without reals: None (Clone's documented fallback to G's samples)
    assert invert.load_reals(support.job_config(gen_dir, method="clone"), pre) is None


def test_tuning_method_runs_around_a_projected_pivot(tmp_path, gen_dir, images_npy):
    """init=auto with PTI: the job projects a pivot (latent_opt, init_steps) and tunes around it;
    the manifest records the pivot's config so a resume with another pivot is refused."""
    wd = str(tmp_path / "w")
    config = support.job_config(
        gen_dir,
        data__path=images_npy,
        method="pti",
        steps=2,
        steps_per_call=2,
        init_steps=2,
        pti__perceptual="none",
    )
    invert.run(config, wd)
    settings = json.load(open(os.path.join(wd, "manifest.json")))["run"]
    assert settings["init"] == "latent_opt"
    assert settings["init_config"]["num_steps"] == 2 and settings["init_config"]["space"] == "w+"
    rows = read_rows(wd)
    assert len(rows) == len(np.load(images_npy))
    assert all(r["status"] in ("converged", "max_steps") for r in rows)


# ----------------------------------------------------------------------------- tiling


def test_tile_inverts_tiles_and_stitches_them(gen_dir, tmp_path):
    """config.tile=2: 3 images of 2m px become 12 tile items (same compiled programs as the
    reference run), and stitched/ holds each image put back together from its tiles' PNGs,
    with whole-image metrics."""
    import dataclasses
    import types

    from ganinv_jax.data import images as image_io
    from ganinv_jax.errors import UserError

    src = support.write_array_images(str(tmp_path / "x32.npy"), 3, resolution=32)
    wd = str(tmp_path / "tiled")
    config = support.job_config(gen_dir, data__path=src, batch_size=1, tile=2)
    summary = invert.run(config, wd)
    rows = read_rows(wd)
    assert [int(r["id"]) for r in rows] == list(range(12))
    assert rows[5]["path"].endswith("#tile1")
    st = summary["stitched"]
    assert st["stitched"] == 3 and st["complete"] and st["resolution"] == 32
    pre = sources.preprocess_for(config.data, types.SimpleNamespace(resolution=16, img_channels=1))
    for i in range(3):
        recon = [os.path.join(wd, "recon", f"{4 * i + k:08d}.png") for k in range(4)]
        tiles = np.stack([image_io.decode_file(p, pre) for p in recon])
        stitched = image_io.decode_file(
            os.path.join(wd, "stitched", f"{i:08d}.png"), dataclasses.replace(pre, resolution=32)
        )
        np.testing.assert_array_equal(stitched, image_io.from_tiles(tiles))
    stitched_rows = records.read_csv(os.path.join(wd, "stitched", "metrics.csv"))
    assert [int(r["id"]) for r in stitched_rows] == [0, 1, 2]
    assert all(0 < float(r["mse"]) < 1 for r in stitched_rows)
    with pytest.raises(UserError, match="config.tile=-1"):
        invert.prepare(support.job_config(gen_dir, tile=-1), str(tmp_path / "bad"))
