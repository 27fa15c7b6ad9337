"""BigGAN (pytorch-pretrained-biggan 0.1.1): parity with the package, strict conversion errors.

The fixture folder `biggan_small/` and `biggan_small_io.npz` (outputs of the unmodified package,
eval mode) live in `../shared/fixtures` (override with GANINV_FIXTURES); see its README,
section 3. A test that needs a missing fixture (or torch) skips, except under CI=true, where it
fails (tests/_ci.py).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict

from ganinv_jax.models.biggan import (
    BigGANConfig,
    Generator,
    bn_stat_selection,
    check_truncation,
    power_iteration,
)
from weights_convert import biggan_hf
from weights_convert.convert import apply_table
from weights_convert.safe_load import CheckpointError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _ci  # noqa: E402
from _parity import max_err  # noqa: E402

TOL = 1e-4
FOLDER = "biggan_small"
IO = "biggan_small_io.npz"

# Every key of the .npz: each output image with the inputs of its call (both calls share
# `class_vector`), and the BN-statistics selection the package made for it.
CALLS = {"img": ("z", "truncation_float64"), "img_b": ("z_b", "truncation_b_float64")}
STAT_KEYS = {
    "": ("truncation_float64", "bn_stat_index", "bn_stat_coef"),
    "_b": ("truncation_b_float64", "bn_stat_index_b", "bn_stat_coef_b"),
}
OTHER_INPUTS = {"class_index", "class_vector", "truncation", "truncation_b"}


@pytest.fixture(scope="module")
def io_():
    return dict(np.load(_ci.fixture_file(IO), allow_pickle=False))


@pytest.fixture(scope="module")
def converted():
    return biggan_hf.convert_biggan_hf(_ci.fixture_file(FOLDER))


@pytest.fixture(scope="module")
def generate():
    """One jitted forward per (config, truncation): truncation is static (it picks BN rows)."""
    cache = {}

    def get(cfg: BigGANConfig):
        if cfg not in cache:
            fn = lambda v, z, c, t: Generator(cfg).apply(v, z, c, t)
            cache[cfg] = jax.jit(fn, static_argnums=3)
        return cache[cfg]

    return get


# ----------------------------------------------------------------------------- parity


def test_fixture_keys_are_all_checked(io_):
    covered = set(CALLS) | {k for call in CALLS.values() for k in call} | OTHER_INPUTS
    covered |= {k for keys in STAT_KEYS.values() for k in keys}
    assert set(io_) == covered, "the fixture gained keys this test does not check"
    # The inputs agree with each other: one-hot classes, float32 copies of the truncations.
    np.testing.assert_array_equal(io_["class_vector"], np.eye(1000)[io_["class_index"]])
    for suffix in STAT_KEYS:
        t64 = io_[f"truncation{suffix}_float64"]
        assert io_[f"truncation{suffix}"] == np.float32(t64)


@pytest.mark.parametrize("out_key", sorted(CALLS))
def test_parity(converted, generate, io_, out_key):
    cfg, trees, _ = converted
    z_key, t_key = CALLS[out_key]
    img = generate(cfg)(trees["G_ema"], io_[z_key], io_["class_vector"], float(io_[t_key]))
    assert img.shape == (4, cfg.resolution, cfg.resolution, 3) and img.dtype == jnp.float32
    err = max_err(np.asarray(img).transpose(0, 3, 1, 2), io_[out_key])
    print(f"\n{out_key}: max abs error {err:.1e}")
    assert err <= TOL, f"{out_key} off by {err}"


@pytest.mark.parametrize("suffix", sorted(STAT_KEYS))
def test_bn_stat_selection_matches_package(converted, io_, suffix):
    cfg = converted[0]
    t_key, idx_key, coef_key = STAT_KEYS[suffix]
    got = bn_stat_selection(float(io_[t_key]), cfg.n_stats)
    assert got == (int(io_[idx_key]), float(io_[coef_key]))


def test_truncation_checks():
    # The float32 trap from the fixture README: 0.4 in float32 interpolates towards row 21.
    idx, coef = bn_stat_selection(float(np.float32(0.4)), 51)
    assert idx == 20 and 0 < coef < 1e-6
    with pytest.raises(TypeError, match="float32"):
        check_truncation(np.float32(0.4))
    with pytest.raises(TypeError, match="static"):
        check_truncation(jnp.asarray(0.4))
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            check_truncation(bad)
    assert bn_stat_selection(1, 51) == (50, 0.0)
    assert check_truncation(np.float64(0.725)) == 0.725


# ----------------------------------------------------------------------------- config


def test_config_round_trips_the_package_json(converted):
    cfg, _, prov = converted
    doc = json.load(open(os.path.join(_ci.fixture_file(FOLDER), "config.json")))
    assert cfg.to_dict() == doc
    assert BigGANConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.resolution == 32 and cfg.condition_dim == 64
    assert [kind for kind, _ in cfg.modules()] == ["block"] * 4 + ["attn"] + ["block"] * 2
    assert json.loads(json.dumps(prov)) == prov
    assert prov["format"] == "biggan-hf" and prov["container"] == "zip"
    assert set(prov["files"]) == {"config.json", "pytorch_model.bin"}


def test_package_default_config_is_biggan_deep_128():
    cfg = BigGANConfig()
    assert cfg.resolution == 128 and len(cfg.layers) == 10 and cfg.attention_layer_position == 8


# ----------------------------------------------------------------------------- broken folders


def _fixture_state_dict():
    torch = _ci.importorskip("torch")
    path = os.path.join(_ci.fixture_file(FOLDER), "pytorch_model.bin")
    return torch, torch.load(path, map_location="cpu", weights_only=True)


def _folder(tmp_path, *, state_dict=None, config_text=None, torch=None) -> str:
    """A model folder: the fixture's files unless a state_dict / config text replaces one."""
    src = _ci.fixture_file(FOLDER)
    out = tmp_path / "model"
    out.mkdir()
    if config_text is None:
        shutil.copy(os.path.join(src, "config.json"), out / "config.json")
    else:
        (out / "config.json").write_text(config_text)
    if state_dict is None:
        shutil.copy(os.path.join(src, "pytorch_model.bin"), out / "pytorch_model.bin")
    else:
        torch.save(state_dict, out / "pytorch_model.bin")
    return str(out)


def _conversion_error(folder: str) -> str:
    with pytest.raises(CheckpointError) as info:
        biggan_hf.convert_biggan_hf(folder)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


def test_missing_tensor(tmp_path):
    torch, sd = _fixture_state_dict()
    del sd["generator.layers.5.conv_2.bias"]
    folder = _folder(tmp_path, state_dict=sd, torch=torch)
    msg = _conversion_error(folder)
    assert os.path.join(folder, "pytorch_model.bin") in msg
    assert "missing" in msg and "generator.layers.5.conv_2.bias" in msg


def test_extra_tensor(tmp_path):
    torch, sd = _fixture_state_dict()
    sd["generator.layers.7.gamma"] = torch.zeros(1)
    msg = _conversion_error(_folder(tmp_path, state_dict=sd, torch=torch))
    assert "unexpected" in msg and "generator.layers.7.gamma" in msg


def test_wrong_shape(tmp_path):
    torch, sd = _fixture_state_dict()
    sd["generator.bn.weight"] = torch.zeros(7)
    msg = _conversion_error(_folder(tmp_path, state_dict=sd, torch=torch))
    assert "generator.bn.weight" in msg and "[7]" in msg


def _config_doc() -> dict:
    return json.load(open(os.path.join(_ci.fixture_file(FOLDER), "config.json")))


def _edit(**changes) -> str:
    doc = _config_doc()
    for key, value in changes.items():
        if value is _DROP:
            del doc[key]
        else:
            doc[key] = value
    return json.dumps(doc)


_DROP = object()


@pytest.mark.parametrize(
    "make_text,needle",
    [
        (lambda: json.dumps(_config_doc())[:40], "not valid JSON"),
        (lambda: "[1, 2]", "JSON object"),
        (lambda: _edit(n_stats=_DROP), "missing config field(s) n_stats"),
        (lambda: _edit(hidden_dim=3), "unknown config field(s) hidden_dim"),
        (lambda: _edit(z_dim="32"), "z_dim must be a positive integer"),
        (lambda: _edit(layers=[[False, 8, 8], [True, 8, 1]]), "in-multiplier must be 16"),
        (lambda: _edit(layers=[[False, 16, 4], [True, 4, 1]]), "keep or halve"),
    ],
    ids=["truncated", "array", "missing", "unknown", "type", "first-mult", "ratio"],
)
def test_bad_config_json(tmp_path, make_text, needle):
    folder = _folder(tmp_path, config_text=make_text())
    msg = _conversion_error(folder)
    assert os.path.join(folder, "config.json") in msg and needle in msg, msg


def test_config_disagreeing_with_tensors(tmp_path):
    folder = _folder(tmp_path, config_text=_edit(channel_width=16))
    msg = _conversion_error(folder)
    assert "pytorch_model.bin" in msg and "generator.gen_z.weight_orig" in msg


def test_missing_files(tmp_path):
    assert "not a directory" in _conversion_error(str(tmp_path / "nope"))
    folder = _folder(tmp_path)
    os.remove(os.path.join(folder, "pytorch_model.bin"))
    assert "pytorch_model.bin: no such file" in _conversion_error(folder)


class _Evil:
    """Pickles as a REDUCE of `fn(*args)`: what a malicious checkpoint does."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("payload", ["system", "eval"])
def test_malicious_pickle_is_refused(tmp_path, payload):
    import builtins

    marker = str(tmp_path / "pwned")
    evil = {
        "system": _Evil(os.system, f"touch {marker}"),
        "eval": _Evil(builtins.eval, f"open({marker!r}, 'w').close()"),
    }[payload]
    folder = _folder(tmp_path)
    # A torch-zip layout whose data.pkl hides the payload after a harmless entry.
    data = pickle.dumps({"embeddings.weight": 0, "generator.gen_z.bias": evil}, protocol=4)
    with zipfile.ZipFile(os.path.join(folder, "pytorch_model.bin"), "w") as zf:
        zf.writestr("archive/data.pkl", data)
        zf.writestr("archive/version", "3\n")
    msg = _conversion_error(folder)
    assert "refusing" in msg and payload in msg
    assert not os.path.exists(marker), "the pickle's payload ran"


# ----------------------------------------------------------------------------- tiny configs

KEY = jax.random.key(0)
TINY = dict(
    output_dim=16,
    z_dim=8,
    class_embed_dim=8,
    channel_width=4,
    num_classes=5,
    layers=((True, 16, 8), (False, 8, 4), (True, 4, 2), (False, 2, 1)),
    n_stats=11,
)


def _random_variables(cfg: BigGANConfig, seed: int = 0) -> dict:
    """Random variables with converged spectral-norm vectors, made in numpy.

    `init_variables` would do as well, but compiling (or eagerly running) Flax init costs
    10-30 s on CPU -- one threefry per parameter -- against ~2 s for the forward itself."""
    rng = np.random.RandomState(seed)
    abstract = flatten_dict(biggan_hf.abstract_variables(cfg))
    flat = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in abstract.items()}
    for key in abstract:
        if key[-1] == "running_vars":
            flat[key] = rng.uniform(0.5, 1.5, abstract[key].shape).astype(np.float32)
        elif key[-1] == "gamma":
            flat[key] = np.float32(0.5)
        elif key[-1] == "sn_u":
            w = flat[("params",) + key[1:-1] + ("weight",)]
            w_mat = w.T if w.ndim == 2 else w.transpose(3, 2, 0, 1).reshape(w.shape[3], -1)
            u, _, vt = np.linalg.svd(w_mat)
            flat[key], flat[key[:-1] + ("sn_v",)] = u[:, 0], vt[0]
    return unflatten_dict(flat)


def test_tiny_random_forward(generate):
    cfg = BigGANConfig(**TINY, attention_layer_position=1)
    variables = _random_variables(cfg)
    rng = np.random.RandomState(0)
    z = rng.standard_normal((2, cfg.z_dim)).astype(np.float32)
    classes = np.eye(cfg.num_classes, dtype=np.float32)[[1, 3]]
    img = np.asarray(generate(cfg)(variables, z, classes, 0.55))
    assert img.shape == (2, 16, 16, 3) and img.dtype == np.float32
    assert np.all(np.isfinite(img)) and np.abs(img).max() <= 1.0
    same_z = np.repeat(z[:1], 2, axis=0)
    img2 = np.asarray(generate(cfg)(variables, same_z, classes, 0.55))
    assert max_err(img2[0], img2[1]) > 1e-4, "the class vector has no effect"
    with pytest.raises(ValueError, match="class_vector"):
        Generator(cfg).apply(variables, z, classes[:, :4], 0.5)


def test_init_variables_structure_and_power_iteration():
    cfg = BigGANConfig(**TINY, attention_layer_position=1)
    flat = flatten_dict(biggan_hf.abstract_variables(cfg), sep="/")
    assert {k.split("/")[0] for k in flat} == {"params", "buffers"}
    ch = cfg.channel_width
    expect = {
        "params/embeddings/weight": (5, 8),
        "params/gen_z/weight": (16, 4 * 4 * 16 * ch),
        "buffers/layers_0/conv_1/sn_v": (16 * ch // 4 * 9,),  # torch's (in, kh, kw) flat
        "buffers/layers_0/bn_0/running_means": (cfg.n_stats, 16 * ch),
        "params/layers_1/gamma": (),
        "params/layers_1/o_conv/weight": (1, 1, 8 * ch // 2, 8 * ch),
        "params/conv_to_rgb/weight": (3, 3, ch, ch),
    }
    assert {k: flat[k].shape for k in expect} == expect
    w = np.random.RandomState(2).standard_normal((6, 10)).astype(np.float32)
    u, v = power_iteration(jnp.asarray(w), KEY)
    assert abs(float(u @ w @ v) - np.linalg.svd(w, compute_uv=False)[0]) < 1e-4


_INVERSE = {
    "id": lambda a: a,
    "dense": lambda a: a.T,
    "conv": lambda a: a.transpose(3, 2, 0, 1),
    "scalar": lambda a: a.reshape(1),
}


@pytest.mark.parametrize("attention", [0, 2, -1], ids=["attn-first", "attn-2", "no-attn"])
def test_name_table_round_trip(attention):
    """The name table on layouts the fixture does not cover, without compiling anything:
    random variables -> torch-layout state_dict (inverse table) -> apply_table -> same."""
    cfg = BigGANConfig(**TINY, attention_layer_position=attention)
    abstract = biggan_hf.abstract_variables(cfg)
    rng = np.random.RandomState(1)
    flat = {
        "/".join(k): rng.standard_normal(v.shape).astype(np.float32)
        for k, v in flatten_dict(abstract).items()
    }
    table = biggan_hf.biggan_table(cfg)
    sd = {r.src: _INVERSE[r.transform](flat[r.dst]) for r in table.rules}
    assert sum("snconv1x1_theta" in k for k in sd) == (0 if attention < 0 else 3)
    got = apply_table(sd, table, abstract, source="mem", net="G_ema")
    got_flat = {"/".join(k): v for k, v in flatten_dict(got).items()}
    assert sorted(got_flat) == sorted(flat)
    for key, value in flat.items():
        np.testing.assert_array_equal(got_flat[key], value, err_msg=key)
