"""InvGAN tiling (paper 004 Sec. 4.3): the invert job's tiled source and stitching
(ganinv_jax/jobs/tiling.py), and patch training (`config.data.patch` in training/invgan.py)."""

import json
import os

import numpy as np
import pytest
from _ci import needs_fmnist  # noqa: E402  (skips locally, fails under CI=true)

from configs.invgan_fashion_mnist import get_config
from ganinv_jax import data as data_lib
from ganinv_jax.data import images as image_io
from ganinv_jax.errors import UserError
from ganinv_jax.jobs import records, sources, tiling
from ganinv_jax.training import invgan

M, N = 8, 2  # G's resolution and tiles per side: base images are 16 px


def _images(k=3, channels=1, seed=0):
    """k float images [k, N*M, N*M, C] on the 8-bit grid (PNG round trips are exact)."""
    u8 = np.random.default_rng(seed).integers(0, 256, (k, N * M, N * M, channels), np.uint8)
    return image_io.from_uint8(u8)


def _source(tmp_path, images):
    path = str(tmp_path / "x.npy")
    np.save(path, images)
    return sources.ArraySource(path)


PRE = sources.Preprocess(resolution=M, channels=1)


def _cheap_metrics(images, recon):
    """The job's MSE/PSNR definitions in numpy; constants for the rest (no LPIPS compile)."""
    mse = np.mean(np.square(images - np.clip(recon, -1, 1)).reshape(len(images), -1), 1) / 4
    with np.errstate(divide="ignore"):
        psnr = -10 * np.log10(mse)
    ones = np.ones(len(images))
    return {"mse": mse, "psnr": psnr, "ssim": ones, "ms_ssim": ones, "lpips": 0 * ones}


# ----------------------------------------------------------------------------- TiledSource


def test_check_tile():
    assert tiling.check_tile(0) == 0 and tiling.check_tile(1) == 0 and tiling.check_tile(3) == 3
    for bad in (-1, tiling.MAX_TILE + 1, "x"):
        with pytest.raises(UserError, match="config.tile"):
            tiling.check_tile(bad)
    with pytest.raises(UserError, match="save_png"):
        tiling.check_tile(2, save_png=False)
    assert tiling.check_tile(0, save_png=False) == 0


def test_tiled_source_ids_and_listing(tmp_path):
    base = _source(tmp_path, _images())
    assert tiling.maybe_tiled(base, 0) is base and tiling.maybe_tiled(base, 1) is base
    src = tiling.maybe_tiled(base, N)
    assert isinstance(src, tiling.TiledSource)
    assert len(src) == 4 * len(base) == len(src.paths) == 12
    assert src.describe() == base.describe() + "|tile:2"
    assert src.fingerprint() != base.fingerprint()
    assert src.fingerprint() != tiling.TiledSource(base, 3).fingerprint()
    assert (src.image_id(7), src.tile_index(7)) == (1, 3)
    assert list(src.tile_ids(2)) == [8, 9, 10, 11]
    assert src.paths[5] == src.name(5) == f"{base.paths[1]}#tile1"
    assert src.paths[-1] == f"{base.paths[2]}#tile3" and list(src.paths)[:2] == src.paths[:2]
    with pytest.raises(IndexError):
        src.paths[12]


def test_tiles_are_the_quadrants_and_each_image_is_decoded_once(tmp_path):
    imgs = _images()
    src = tiling.TiledSource(_source(tmp_path, imgs), N)
    calls = []
    load = src.base.load_many
    src.base.load_many = lambda ids, pre, workers=4: (
        calls.append((list(ids), pre)) or load(ids, pre, workers)
    )
    got = src.load_many([4, 5, 6, 7, 3], PRE)
    assert calls == [([0, 1], sources.Preprocess(resolution=N * M, channels=1))]
    quad = {0: (0, 0), 1: (0, M), 2: (M, 0), 3: (M, M)}  # row-major
    for t, (tile, reason) in zip([4, 5, 6, 7, 3], got):
        r, c = quad[t % 4]
        assert reason == "" and tile.shape == (M, M, 1) and tile.dtype == np.float32
        np.testing.assert_array_equal(tile, imgs[t // 4, r : r + M, c : c + M])
    tile, reason = src.load_prepared(9, PRE)
    np.testing.assert_array_equal(tile, imgs[2, :M, M:])


def test_bad_base_image_fails_all_its_tiles(tmp_path):
    imgs = _images()
    imgs[1, 3, 3] = np.nan
    src = tiling.TiledSource(_source(tmp_path, imgs), N)
    got = src.load_many(range(12), PRE)  # never raises
    for t, (tile, reason) in enumerate(got):
        if t // 4 == 1:
            assert (
                tile is None
                and reason == f"tile {t % 4} of image 1: non-finite values in float image"
            )
        else:
            assert tile is not None and reason == ""


# ----------------------------------------------------------------------------- stitch


def _workdir(tmp_path, imgs, src):
    """A finished tiled run whose recon PNGs are exactly the target tiles."""
    wd = tmp_path / "run"
    (wd / "recon").mkdir(parents=True)
    for i, img in enumerate(imgs):
        for k, tile in enumerate(image_io.to_tiles(img, M)):
            image_io.save_png(str(wd / "recon" / f"{src.tile_ids(i)[k]:08d}.png"), tile)
    return str(wd)


def test_stitch_of_exact_tiles(tmp_path):
    imgs = _images()
    src = tiling.TiledSource(_source(tmp_path, imgs), N)
    wd = _workdir(tmp_path, imgs, src)
    summary = tiling.stitch(wd, src, PRE, metrics_fn=_cheap_metrics, batch_size=2)
    out = os.path.join(wd, "stitched")
    for i, img in enumerate(imgs):
        png = image_io.decode_file(os.path.join(out, f"{i:08d}.png"), src.image_pre(PRE))
        np.testing.assert_array_equal(png, image_io.from_tiles(image_io.to_tiles(img, M)))
        np.testing.assert_array_equal(png, img)
    rows = records.read_csv(os.path.join(out, "metrics.csv"))
    assert [int(r["id"]) for r in rows] == [0, 1, 2]
    assert all(float(r["mse"]) == 0.0 and float(r["psnr"]) > 100 for r in rows)
    assert records.read_csv(os.path.join(out, "skipped.csv")) == []
    assert summary == json.load(open(os.path.join(out, "summary.json")))
    assert summary["complete"] and summary["stitched"] == 3 and summary["resolution"] == 16
    assert summary["metrics"]["mse"]["mean"] == 0.0
    assert os.path.isfile(os.path.join(out, "grid.png"))


def test_stitch_skips_an_image_with_a_missing_tile(tmp_path):
    imgs = _images()
    src = tiling.TiledSource(_source(tmp_path, imgs), N)
    wd = _workdir(tmp_path, imgs, src)
    os.remove(os.path.join(wd, "recon", f"{6:08d}.png"))  # image 1, tile 2
    records.write_csv_atomic(
        os.path.join(wd, "failures.csv"), records.FAILURE_COLUMNS, [["6", src.paths[6], "boom"]]
    )
    summary = tiling.stitch(wd, src, PRE, metrics_fn=_cheap_metrics)
    out = os.path.join(wd, "stitched")
    assert [int(r["id"]) for r in records.read_csv(os.path.join(out, "metrics.csv"))] == [0, 2]
    (skip,) = records.read_csv(os.path.join(out, "skipped.csv"))
    assert skip["id"] == "1" and skip["path"] == src.base.paths[1]
    assert skip["reason"] == "1 of 4 tiles missing; tile 2 (id 6): boom"
    assert not os.path.exists(os.path.join(out, f"{1:08d}.png"))
    assert summary["stitched"] == 2 and summary["skipped"] == 1 and not summary["complete"]


def test_stitch_default_metrics_are_the_jobs(tmp_path):
    """The default metric function is invert.image_metrics at N*M px (real LPIPS)."""
    imgs = _images(k=2, channels=3)
    pre = sources.Preprocess(resolution=M, channels=3)
    src = tiling.TiledSource(_source(tmp_path, imgs), N)
    wd = _workdir(tmp_path, imgs, src)
    from ganinv_jax import losses

    summary = tiling.stitch(wd, src, pre, losses.load_lpips_params("vgg"), "vgg", batch_size=2)
    m = summary["metrics"]
    assert m["mse"]["max"] == 0.0 and m["psnr"] is None  # exact copies: PSNR = +inf only
    assert m["ssim"]["min"] > 0.999 and m["lpips"]["max"] < 1e-4


# ----------------------------------------------------------------------------- patch training


def _patch_source(k=2, n=12):
    u8 = np.random.default_rng(1).integers(0, 256, (n, k * M, k * M, 3), np.uint8)
    return invgan.PatchSource(data_lib.ArraySource(u8), M), u8


def test_patch_batches_are_deterministic_crops():
    src, u8 = _patch_source()
    a = src.local_batch(seed=3, step=5, global_batch_size=8)
    np.testing.assert_array_equal(a, src.local_batch(3, 5, 8))  # a pure function of the step
    assert a.shape == (8, M, M, 3) and a.dtype == np.float32
    rows = data_lib.batch_indices(3, 5, 8, len(u8))
    offsets = invgan.patch_offsets(3, 5, 8, 2 * M, M)
    assert offsets.min() >= 0 and offsets.max() <= M
    for x, i, (t, l) in zip(a, rows, offsets):
        np.testing.assert_array_equal(x, image_io.from_uint8(u8[i, t : t + M, l : l + M]))
    # any process count cuts the same global batch; another step cuts other patches
    parts = [src.local_batch(3, 5, 8, p, 4) for p in range(4)]
    np.testing.assert_array_equal(np.concatenate(parts), a)
    assert not np.array_equal(invgan.patch_offsets(3, 6, 8, 2 * M, M), offsets)


def test_patch_factor_validation():
    c = get_config("tiny")
    assert c.data.patch == 0 and invgan.patch_factor(c) == 0
    c.data.patch = 1
    assert invgan.patch_factor(c) == 0
    for bad in (-1, invgan.MAX_PATCH + 1):
        c.data.patch = bad
        with pytest.raises(UserError, match="data.patch"):
            invgan.patch_factor(c)


@needs_fmnist
def test_patch_training_data():
    c = get_config("tiny")
    plain = invgan.load_train_source(c)  # the switch off: exactly the old data
    assert isinstance(plain, data_lib.ArraySource)
    np.testing.assert_array_equal(
        plain.images, data_lib.load_fashion_mnist("train", resolution=8, channels=3)[:256]
    )
    c.data.patch = 2
    src = invgan.load_train_source(c)
    assert isinstance(src, invgan.PatchSource) and src.base.images.shape == (256, 16, 16, 3)
    assert src.local_batch(c.seed, 0, c.batch_size).shape == (c.batch_size, 8, 8, 3)
    # above 32 px the garment is resized, not padded with a wider border
    big = invgan.load_test_images(get_config(), 4, resolution=64)
    small = invgan.load_test_images(get_config(), 4)
    assert big.shape == (4, 64, 64, 3)
    box = big.reshape(4, 32, 2, 32, 2, 3).mean(axis=(2, 4))
    assert np.mean(np.abs(box - small)) < 0.05


def test_tiled_test_mae_is_the_mae_of_stitched_reconstructions():
    import jax

    nets = invgan.make_nets(get_config("tiny,dcgan"))  # the smallest nets: compile time
    g_vars, d = nets.g_init(jax.random.key(0)), nets.d_init(jax.random.key(1))["params"]
    big = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    got = invgan.tiled_test_mae(nets, g_vars, d, big)
    # per image: its 4 tiles reconstructed on their own, stitched back, compared to the image
    tiles = np.concatenate([image_io.to_tiles(x, M) for x in big])
    _, rec = invgan.reconstruct(nets, g_vars, d, tiles)
    stitched = np.stack([image_io.from_tiles(rec[4 * i : 4 * i + 4]) for i in range(2)])
    np.testing.assert_allclose(got, np.mean(np.abs(stitched - big)), rtol=1e-6)


@needs_fmnist
def test_evaluate_reports_the_tiled_mae_of_a_patch_model(tmp_path):
    import jax

    c = get_config("tiny,dcgan")
    c.data.patch = 2
    nets = invgan.make_nets(c)
    st = invgan.init_state(c, nets, jax.random.key(0))
    res = invgan.evaluate(c, nets, st, str(tmp_path), num_test=4)
    big = invgan.load_test_images(c, 4, resolution=16)
    assert res["patch"] == 2 and big.shape == (4, 16, 16, 3)
    want = invgan.tiled_test_mae(nets, invgan.ema_vars(st), st.d, big)
    assert res["test_mae_tiled_g_ema"] == want
    assert json.load(open(tmp_path / "eval.json"))["test_mae_tiled_g_ema"] == want
