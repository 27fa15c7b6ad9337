"""Editing (ganinv_jax/editing): SeFa, GANSpace and InterFaceGAN directions, the edits, the
direction files, and the `edit` task on tiny inversion workdirs (latent_opt: base G; PTI: the
image's tuned G).

A tiny random StyleGAN2 DIR (16 px, w_dim 16, num_ws 6) stands in for the default model, except
in the one InterFaceGAN test that needs the real encoder and Fashion-MNIST.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import jax
import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _ci  # noqa: E402
import test_invert_job_support as support  # noqa: E402

from ganinv_jax import pretrained  # noqa: E402
from ganinv_jax.data import images as image_io  # noqa: E402
from ganinv_jax.editing import directions as dirs  # noqa: E402
from ganinv_jax.editing import measure  # noqa: E402
from ganinv_jax.editing import task as edit_task  # noqa: E402
from ganinv_jax.errors import UserError  # noqa: E402
from ganinv_jax.jobs import invert  # noqa: E402

RES, CELL, PAD = 16, 128, 2  # tiny G's size; grid cells are upscaled to READABLE_CELL = 128


@pytest.fixture(scope="module")
def gen_dir(tmp_path_factory):
    return support.make_tiny_gan_dir(str(tmp_path_factory.mktemp("gen") / "tiny"))


@pytest.fixture(scope="module")
def gan(gen_dir):
    return pretrained.load(gen_dir)


def one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


# ----------------------------------------------------------------------------- SeFa


def independent_ata(g_params, w_dim: int, ws_range=None) -> np.ndarray:
    """AᵀA from the params tree, written independently of directions.style_layers: conv0 of
    block b{r} reads W+ entry 2 log2(r) - 5, conv1 reads 2 log2(r) - 4 (ToRGB left out)."""
    rows = []
    syn = g_params["params"]["synthesis"]
    for block, layers in syn.items():
        lg = int(np.log2(int(block[1:])))
        for conv, entry in (("conv0", 2 * lg - 5), ("conv1", 2 * lg - 4)):
            if conv not in layers:
                continue
            if ws_range is not None and not ws_range[0] <= entry < ws_range[1]:
                continue
            a = np.asarray(layers[conv]["affine"]["weight"], np.float64).T / np.sqrt(w_dim)
            rows.append(a)  # [C, w_dim]: styles = A w + b
    a = np.concatenate(rows)
    return a.T @ a


@pytest.mark.parametrize("ws_range", [None, (2, 4)])
def test_sefa_is_orthonormal_top_eigenvectors(gan, ws_range):
    rows, vals, mask = dirs.sefa(gan.G, gan.config, layers=ws_range)
    w_dim = gan.config.w_dim
    np.testing.assert_allclose(rows @ rows.T, np.eye(w_dim), atol=1e-5)
    assert np.all(np.diff(vals) <= 1e-9)  # descending
    ref_vals, ref_vecs = np.linalg.eigh(independent_ata(gan.G, w_dim, ws_range))
    ref_vals, ref_vecs = ref_vals[::-1], ref_vecs[:, ::-1]
    np.testing.assert_allclose(vals, ref_vals, rtol=1e-6, atol=1e-9)
    for k in range(3):  # top eigenvectors, up to sign
        assert abs(float(rows[k] @ ref_vecs[:, k])) > 0.9999
    want = np.zeros(gan.config.num_ws, bool)
    want[slice(*(ws_range or (0, gan.config.num_ws)))] = True
    np.testing.assert_array_equal(mask, want)
    # the top direction really maximizes |A n|: more than any of 50 random unit vectors
    ata = independent_ata(gan.G, w_dim, ws_range)
    rand = np.random.default_rng(0).normal(size=(50, w_dim))
    rand /= np.linalg.norm(rand, axis=1, keepdims=True)
    assert rows[0] @ ata @ rows[0] > np.max(np.einsum("ij,jk,ik->i", rand, ata, rand))


def test_sefa_top_direction_moves_the_image_more_than_random(gan):
    """In the linear regime (a small strength), the direction that changes the styles most
    changes the image more than random unit directions do, and ~2x more than the last one
    (measured on this G: 1.45x the random mean, 2.0x the last)."""
    rows, _, _ = dirs.sefa(gan.G, gan.config)
    d = dirs.resolve("sefa:0", gan)
    ws = np.asarray(gan.mapping(jax.random.normal(jax.random.key(1), (16, gan.config.z_dim))))
    base = np.asarray(gan.synthesis(ws))

    def moved(vector):
        edited = dirs.apply(ws, dataclasses.replace(d, vector=vector.astype(np.float32)), 0.3)
        return float(np.mean(np.abs(np.asarray(gan.synthesis(edited)) - base)))

    rand = np.random.default_rng(0).normal(size=(16, gan.config.w_dim))
    random_moves = [moved(v / np.linalg.norm(v)) for v in rand]
    top = moved(d.vector)
    assert top > 1.25 * np.mean(random_moves), (top, random_moves)
    assert top > 1.5 * moved(rows[-1])


# ----------------------------------------------------------------------------- GANSpace


def test_ganspace_components_orthonormal_and_variance_sorted(gan):
    w = dirs.sample_w(gan, 600, seed=3)
    assert w.shape == (600, gan.config.w_dim)
    comps, stds, mean = dirs.pca_directions(w)
    np.testing.assert_allclose(comps @ comps.T, np.eye(len(comps)), atol=1e-5)
    assert np.all(np.diff(stds) <= 0)
    # each component's std is the spread of the samples along it; eigh of the covariance agrees
    proj = (w - mean) @ comps.T
    np.testing.assert_allclose(proj.std(axis=0, ddof=1), stds, rtol=1e-4)
    ref = np.linalg.eigh(np.cov(w.T.astype(np.float64)))[0][::-1]
    np.testing.assert_allclose(stds**2, ref, rtol=1e-4, atol=1e-10)
    # through resolve: seeded (the same samples -> the same direction), scale = that std
    d = dirs.resolve("ganspace:1", gan, ganspace_samples=600, seed=3)
    np.testing.assert_allclose(d.vector, comps[1], atol=1e-6)
    assert d.scale == pytest.approx(stds[1]) and d.kind == "ganspace"
    moved = dirs.apply(np.zeros((gan.config.num_ws, gan.config.w_dim), np.float32), d, 2.0)
    np.testing.assert_allclose(np.linalg.norm(moved, axis=1), 2.0 * stds[1], rtol=1e-5)


# ----------------------------------------------------------------------------- InterFaceGAN


def test_interfacegan_recovers_the_true_normal():
    rng = np.random.default_rng(0)
    dim = 16
    normal = rng.normal(size=dim)
    normal /= np.linalg.norm(normal)
    offset = rng.normal(size=dim) * 3  # the classes are not centred at 0
    a = rng.normal(size=(400, dim)) + offset - 1.5 * normal
    b = rng.normal(size=(400, dim)) + offset + 1.5 * normal
    got, info = dirs.fit_linear_direction(a, b)
    assert np.linalg.norm(got) == pytest.approx(1.0, abs=1e-6)
    assert float(got @ normal) > 0.95  # and it points from A to B
    assert info["accuracy"] > 0.9
    flipped, _ = dirs.fit_linear_direction(b, a)
    assert float(flipped @ normal) < -0.95
    # W+ latents are averaged over layers
    plus, _ = dirs.fit_linear_direction(np.repeat(a[:, None], 3, 1), np.repeat(b[:, None], 3, 1))
    np.testing.assert_allclose(plus, got, atol=1e-5)


@_ci.needs_fmnist
def test_interfacegan_from_the_default_encoder():
    gan = pretrained.load("default")
    d = dirs.resolve("interfacegan:trouser-dress", gan, interfacegan_per_class=100)
    assert d.kind == "interfacegan" and d.classes == ("trouser", "dress")
    assert d.value > 0.9  # the encoder's w separates trousers from dresses linearly
    assert d.mask.all() and np.linalg.norm(d.vector) == pytest.approx(1.0, abs=1e-6)


# ----------------------------------------------------------------------------- edits


def test_editability_summary_and_label_proxy():
    tuned = np.array([[[0.2, 0.4]], [[0.1, 0.1]]])  # 2 images, 1 direction, 2 strengths
    base = np.array([[[0.3, 0.3]], [[0.2, 0.2]]])
    ed = measure.summarize_editability(tuned, base, ["d"])
    assert ed["ratio"] == pytest.approx((1.0 + 0.5) / 2)  # per-image ratios, then the mean
    assert ed["ratio_of_means"] == pytest.approx(0.2 / 0.25)
    assert ed["per_direction"]["d"]["ratio_median"] == pytest.approx(0.75)
    means = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])  # classes 0, 1, 2
    recon = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])  # all nearest class 0
    edited = np.array([[6.0, 0.0], [1.0, 0.0], [-3.0, 0.0]])  # toward 1, away, away
    proxy = measure.label_proxy(recon, edited, means, 0, 1)
    assert proxy["moved_toward_b"] == pytest.approx(1 / 3)
    assert proxy["nearest_is_b_before"] == 0 and proxy["nearest_is_b_after"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match=r"no codes for classes \[2\]"):
        measure.class_means({0: recon, 1: edited}, 3)


def test_apply_moves_only_the_selected_layers(gan):
    num_ws, w_dim = gan.config.num_ws, gan.config.w_dim
    d = dirs.resolve("sefa:0", gan, layers=(2, 4))
    lat = np.random.default_rng(0).normal(size=(3, num_ws, w_dim)).astype(np.float32)
    out = dirs.apply(lat, d, 2.5)
    np.testing.assert_array_equal(out[:, [0, 1, 4, 5]], lat[:, [0, 1, 4, 5]])
    np.testing.assert_allclose(
        out[:, 2:4] - lat[:, 2:4], np.broadcast_to(2.5 * d.vector, (3, 2, w_dim)), atol=1e-6
    )
    over = dirs.apply(lat, d, -1.0, layers=(5, 6))  # an explicit range replaces the mask
    np.testing.assert_array_equal(over[:, :5], lat[:, :5])
    np.testing.assert_allclose(
        over[:, 5] - lat[:, 5], np.broadcast_to(-d.vector, (3, w_dim)), atol=1e-6
    )
    np.testing.assert_array_equal(dirs.apply(lat, d, 0.0), lat)
    sw = dirs.sweep(lat[0], d, [-1.0, 0.0, 3.0])
    assert sw.shape == (3, num_ws, w_dim)
    np.testing.assert_array_equal(sw[1], lat[0])
    with pytest.raises(ValueError):
        dirs.apply(lat[:, :, :8], d, 1.0)


def test_interpolate_and_mix(gan):
    rng = np.random.default_rng(1)
    a, b = (rng.normal(size=(gan.config.num_ws, gan.config.w_dim)).astype(np.float32) for _ in "ab")
    path = dirs.interpolate(a, b, np.linspace(0, 1, 5))
    assert path.shape == (5, *a.shape) and path.dtype == np.float32
    np.testing.assert_array_equal(path[0], a)
    np.testing.assert_array_equal(path[-1], b)
    np.testing.assert_allclose(path[2], (a + b) / 2, atol=1e-6)
    np.testing.assert_array_equal(dirs.interpolate(a, b, 0.0), a)
    with pytest.raises(ValueError):
        dirs.interpolate(a, b, 1.5)
    m = dirs.mix(a, b, 2)
    np.testing.assert_array_equal(m[:2], a[:2])
    np.testing.assert_array_equal(m[2:], b[2:])
    np.testing.assert_array_equal(dirs.mix(a[None], b[None], 0)[0], b)


# ----------------------------------------------------------------------------- files and specs


def test_save_load_roundtrip_and_mismatch(gan, tmp_path):
    d = dirs.resolve("sefa:2", gan, layers=(1, 3))
    path = str(tmp_path / "d.npz")
    dirs.save(path, d)
    got = dirs.load(path, w_dim=gan.config.w_dim, num_ws=gan.config.num_ws)
    np.testing.assert_array_equal(got.vector, d.vector)
    np.testing.assert_array_equal(got.mask, d.mask)
    for f in ("kind", "index", "scale", "value", "classes", "generator", "generator_desc", "name"):
        assert getattr(got, f) == getattr(d, f), f
    assert got.layers == (1, 3) and got.generator == dirs.generator_fingerprint(gan)
    # a path is a spec of its own, and edits with it equal the original's
    same = dirs.resolve(path, gan)
    lat = np.ones((gan.config.num_ws, gan.config.w_dim), np.float32)
    np.testing.assert_array_equal(dirs.apply(lat, same, 3.0), dirs.apply(lat, d, 3.0))
    # a direction of another generator (w_dim 8): one line naming the file
    other = str(tmp_path / "other.npz")
    dirs.save(other, dataclasses.replace(d, vector=np.eye(8, dtype=np.float32)[0]))
    with pytest.raises(dirs.DirectionError) as e:
        dirs.resolve(other, gan)
    assert other in one_line(e) and "w_dim 8" in one_line(e)
    with pytest.raises(dirs.DirectionError) as e:
        dirs.load(path, num_ws=8)
    assert path in one_line(e)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(dirs.DirectionError) as e:
        dirs.load(str(bad))
    assert str(bad) in one_line(e)
    broken = str(tmp_path / "broken.npz")
    dirs.save(broken, dataclasses.replace(d, vector=2 * d.vector))  # not a unit vector
    with pytest.raises(dirs.DirectionError) as e:
        dirs.load(broken)
    assert broken in one_line(e) and "norm" in one_line(e)


@pytest.mark.parametrize(
    "spec,needle",
    [
        ("sefa:999", "K=999 out of range"),
        ("ganspace:16", "K=16 out of range"),
        ("interfacegan:cat-dress", "unknown class 'cat'"),
        ("interfacegan:trouser-dress", "no encoder"),  # the tiny G has no InvGAN w head
        ("interfacegan:bag-bag", "must differ"),
        ("pca:0", "want sefa:K"),
        ("/no/such/dir.npz", "/no/such/dir.npz: no such direction file"),
    ],
)
def test_bad_specs_fail_with_one_line(gan, spec, needle):
    with pytest.raises(dirs.DirectionError) as e:
        dirs.Resolver(gan).check(spec)
    assert needle in one_line(e), one_line(e)


def test_resolve_all_checks_every_spec_before_computing(gan, monkeypatch):
    monkeypatch.setattr(dirs, "sefa", lambda *a, **k: 1 / 0)  # any computation would fail
    with pytest.raises(dirs.DirectionError, match="sefa:99"):
        dirs.resolve_all(["sefa:0", "sefa:99"], gan)
    with pytest.raises(dirs.DirectionError, match="config.edit.layers"):
        dirs.parse_layers("3:2", gan.config.num_ws, key="config.edit.layers")
    assert dirs.parse_layers("2:", 6) == (2, 6) and dirs.parse_layers("", 6) is None


# ----------------------------------------------------------------------------- the edit task


def edit_config(gen_dir, source=None, **kw):
    if source is not None:
        kw["edit__source"] = source
    kw.setdefault("edit__directions", "sefa:0,ganspace:0")
    kw.setdefault("edit__strengths", "-3,0,3")
    kw.setdefault("edit__ganspace_samples", 200)
    return support.job_config(gen_dir, task="edit", **kw)


def invert_workdir(root, gen_dir, data, **kw) -> str:
    # keep_best off: these tests need each method's TUNED generator, and the job's guard would
    # return the pivot where the tests' 2 large steps do not improve on it
    kw.setdefault("keep_best", False)
    wd = str(root / "inv")
    cfg = support.job_config(gen_dir, data__path=data, steps=2, steps_per_call=2, **kw)
    invert.run(cfg, wd, devices=jax.devices()[:1])
    return wd


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return support.write_array_images(str(tmp_path_factory.mktemp("data") / "x.npy"), 2, seed=5)


@pytest.fixture(scope="module")
def inv_latent_opt(tmp_path_factory, gen_dir, data):
    return invert_workdir(tmp_path_factory.mktemp("lo"), gen_dir, data)


@pytest.fixture(scope="module")
def inv_pti(tmp_path_factory, gen_dir, data):
    # a large lr so the 2 tuning steps visibly change G (the test must tell tuned from base)
    return invert_workdir(
        tmp_path_factory.mktemp("pti"),
        gen_dir,
        data,
        method="pti",
        init_steps=2,
        pti__lr=0.05,
        pti__perceptual="none",
        pti__reg_weight=0.0,
    )


ROWS, COLS = 2, 4  # the edit grids below: 2 directions; reconstruction + 3 strengths


def cell(grid: np.ndarray, row: int, col: int) -> np.ndarray:
    """One cell of a grayscale grid PNG, back at G's resolution (nearest-upscaled 128 / 16).
    The cells sit below the header line and right of the row labels."""
    top = grid.shape[0] - (PAD + ROWS * (CELL + PAD))
    left = grid.shape[1] - (PAD + COLS * (CELL + PAD))
    y, x = top + PAD + row * (CELL + PAD), left + PAD + col * (CELL + PAD)
    return grid[y : y + CELL : CELL // RES, x : x + CELL : CELL // RES].astype(np.int32)


def recon_png(inv_dir: str, image_id: int) -> np.ndarray:
    return np.asarray(Image.open(os.path.join(inv_dir, "recon", f"{image_id:08d}.png")), np.int32)


def check_edit_outputs(wd, inv_dir, gan, strengths):
    edits = np.load(os.path.join(wd, "edits.npz"))
    src = np.load(os.path.join(inv_dir, "latents.npz"))
    np.testing.assert_array_equal(edits["ids"], src["ids"])
    assert list(edits["directions"]) == ["sefa:0", "ganspace:0"]
    np.testing.assert_array_equal(edits["strengths"], strengths)
    lat = edits["latents"]
    assert lat.shape == (2, 2, 3, gan.config.num_ws, gan.config.w_dim)
    np.testing.assert_array_equal(lat[:, :, 1], np.repeat(src["latents"][:, None], 2, 1))
    vec, scale = edits["vectors"], edits["scales"]
    np.testing.assert_allclose(
        lat[:, :, 2] - src["latents"][:, None],
        np.broadcast_to(3 * (scale[:, None] * vec)[None, :, None], lat[:, :, 2].shape),
        atol=1e-5,
    )
    grids = {}
    for i in src["ids"]:
        g = np.asarray(Image.open(os.path.join(wd, "grids", f"{int(i):08d}.png")))
        top = g.shape[0] - (PAD + ROWS * (CELL + PAD))
        left = g.shape[1] - (PAD + COLS * (CELL + PAD))
        assert top == image_io.LABEL_PX + 6 and 0 < left <= 2 * CELL  # header line, row labels
        assert g[:top].min() < 128 and g[top:, :left].min() < 128  # ... with text in them
        for row in range(2):
            recon = cell(g, row, 0)
            np.testing.assert_array_equal(cell(g, row, 2), recon)  # strength 0 = reconstruction
            for col in (1, 3):  # a nonzero strength changes the image
                assert np.abs(cell(g, row, col) - recon).mean() > 1.0
        grids[int(i)] = g
    assert os.listdir(os.path.join(wd, "tensorboard"))
    report = json.load(open(os.path.join(wd, "edit.json")))
    for d in report["directions"]:  # each resolved direction is saved for reuse
        assert dirs.load(os.path.join(wd, d["file"])).name == d["name"]
    return edits, grids


def test_edit_task_latent_opt(tmp_path, gen_dir, gan, inv_latent_opt):
    wd = str(tmp_path / "edit")
    edit_task.run(edit_config(gen_dir, inv_latent_opt), wd)
    edits, grids = check_edit_outputs(wd, inv_latent_opt, gan, [-3, 0, 3])
    assert list(edits["generator"]) == ["base", "base"]
    measured = json.load(open(os.path.join(wd, "edit.json")))["measured"]
    assert measured["strengths"] == [-3, 3] and "editability" not in measured  # base G only
    assert all(v > 0 for v in measured["lpips_moved"].values())
    for i, g in grids.items():  # the reconstruction column is the invert job's reconstruction
        assert np.abs(cell(g, 0, 0) - recon_png(inv_latent_opt, i)).max() <= 1


def test_edit_task_pti_uses_the_tuned_generator(tmp_path, gen_dir, gan, inv_pti):
    wd = str(tmp_path / "edit")
    edit_task.run(edit_config(gen_dir, inv_pti), wd)
    edits, grids = check_edit_outputs(wd, inv_pti, gan, [-3, 0, 3])
    assert list(edits["generator"]) == ["tuned", "tuned"]
    src = np.load(os.path.join(inv_pti, "latents.npz"))
    base_imgs = np.asarray(gan.synthesis(src["latents"]))
    for k, (i, g) in enumerate(grids.items()):
        want = recon_png(inv_pti, i)
        assert np.abs(cell(g, 0, 0) - want).max() <= 1  # tuned G reproduces PTI's recon
        base = np.clip(np.rint((base_imgs[k, ..., 0] + 1) * 127.5), 0, 255)
        assert np.abs(base - want).mean() > 3  # ...which the base G would not
    ed = json.load(open(os.path.join(wd, "edit.json")))["measured"]["editability"]
    assert ed["images"] == 2 and set(ed["per_direction"]) == {"sefa:0", "ganspace:0"}
    assert ed["lpips_moved_tuned"] > 0 and ed["lpips_moved_base"] > 0
    # the base G's movement is measured on the base G: it differs from the tuned one
    assert ed["lpips_moved_tuned"] != ed["lpips_moved_base"]


def test_edit_task_bad_input_one_line_before_any_output(tmp_path, gen_dir, inv_latent_opt):
    cases = [
        (dict(edit__directions="sefa:0,sefa:999"), "config.edit.directions: direction 'sefa:999'"),
        (dict(edit__strengths="-3,x"), "config.edit.strengths='-3,x'"),
        (dict(edit__layers="4:9"), "config.edit.layers='4:9'"),
        (dict(edit__source=str(tmp_path / "nowhere")), "config.edit.source="),
        (dict(edit__source=str(tmp_path)), f"{tmp_path}/latents.npz: no latents.npz"),
    ]
    for kw, needle in cases:
        wd = tmp_path / "edit"
        kw = {"edit__source": inv_latent_opt, **kw}
        with pytest.raises(UserError) as e:
            edit_task.run(edit_config(gen_dir, **kw), str(wd))
        assert needle in one_line(e), one_line(e)
        assert not wd.exists() or not os.listdir(wd)


@pytest.mark.slow
@pytest.mark.parametrize(
    "method,kw",
    [
        # GMM, the paper's one-shot form: φ is saved; the edit job rebuilds θ' from φ and the
        # target image's gradient
        (
            "gmm",
            dict(
                gmm__perceptual="pooled_l2",
                gmm__reg_weight=0.0,
                gmm__lr=0.05,
                gmm__update_mode="once",
                gmm__grad_norm="none",
                gmm__out_scale=1.0,
                gmm__out_rampup=0.0,
                gmm__out_rampdown=0.0,
                gmm__init_scale=0.1,  # the paper's one-shot form (the job starts at the identity)
            ),
        ),
        # GMM as the job runs it (update_mode 'iterative'): the synthesis delta is saved
        ("gmm", dict(gmm__perceptual="pooled_l2", gmm__reg_weight=0.0, gmm__out_scale=0.05)),
        ("clone", dict(clone__lr=0.05, reals__num=0)),
    ],
    ids=["gmm_once", "gmm_iterative", "clone"],
)
def test_edit_task_gmm_and_clone_use_the_tuned_generator(tmp_path, gen_dir, gan, data, method, kw):
    """About 30 s (each GMM) and 60 s (Clone) of CPU: the tuned generator of each method
    reproduces the invert job's reconstruction; one-shot GMM with recompute_g falls back to the
    base G (documented)."""
    inv = invert_workdir(tmp_path, gen_dir, data, method=method, init_steps=2, **kw)
    wd = str(tmp_path / "edit")
    report = edit_task.run(edit_config(gen_dir, inv), wd)
    once = kw.get("gmm__update_mode") == "once"
    mode = "gmm_delta" if method == "gmm" and not once else method
    assert report["generator_mode"] == mode and not report["note"]
    edits, grids = check_edit_outputs(wd, inv, gan, [-3, 0, 3])
    assert list(edits["generator"]) == ["tuned", "tuned"]
    src = np.load(os.path.join(inv, "latents.npz"))
    base_imgs = np.asarray(gan.synthesis(src["latents"]))
    for k, (i, g) in enumerate(grids.items()):
        want = recon_png(inv, i)
        assert np.abs(cell(g, 0, 0) - want).max() <= 1
        base = np.clip(np.rint((base_imgs[k, ..., 0] + 1) * 127.5), 0, 255)
        assert np.abs(base - want).mean() > 3
    if not once:
        return
    manifest = os.path.join(inv, "manifest.json")
    doc = json.load(open(manifest))
    doc["run"]["method_config"]["recompute_g"] = True
    json.dump(doc, open(manifest, "w"))
    report = edit_task.run(edit_config(gen_dir, inv), str(tmp_path / "edit2"))
    assert report["generator_mode"] == "base" and "recompute_g" in report["note"]
    edits = np.load(os.path.join(tmp_path, "edit2", "edits.npz"))
    assert list(edits["generator"]) == ["base", "base"]
