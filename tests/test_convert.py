"""weights_convert: safe reading, parity against genuine upstream fixtures, strict errors.

The fixtures (real on-disk formats, outputs of the unmodified upstream forward passes) live
in `../shared/fixtures` (override with GANINV_FIXTURES); see its README. A test that needs a
missing fixture (or torch) skips, except under CI=true, where it fails (tests/_ci.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import zipfile

import jax.numpy as jnp
import numpy as np
import pytest

from ganinv_jax import pretrained
from ganinv_jax.models.stylegan2 import style_mix
from weights_convert import safe_load
from weights_convert.cli import main

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _ci  # noqa: E402
from _parity import max_err, nchw, nhwc  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4

ROS = "rosinality_stylegan2_32.pt"
NV_PKL = "nvlabs_ada_32.pkl"
NV_SD = "nvlabs_ada_32_state_dict.pt"


def fx(name: str) -> str:
    """A parity fixture's path: a test that needs a missing one skips, or FAILS under CI=true
    (tests that need no fixture -- the safety ones -- always run)."""
    return _ci.fixture_file(name)


def run_cli(argv, capsys) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.err.strip()


# ----------------------------------------------------------------------------- converted dirs


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Each fixture converted once, in-process: {name: DIR}."""
    root = tmp_path_factory.mktemp("converted")
    jobs = {
        "rosinality": (ROS, "rosinality", ["--raw-g"]),
        "nvlabs-pkl": (NV_PKL, "nvlabs-pkl", ["--raw-g"]),
        "nvlabs-state-dict": (NV_SD, "nvlabs-state-dict", []),
    }
    out = {}
    for name, (src, fmt, extra) in jobs.items():
        dst = root / name
        assert main(["--format", fmt, "--src", fx(src), "--out", str(dst), *extra]) == 0
        out[name] = str(dst)
    return out


@pytest.fixture(scope="module")
def gans(converted):
    cache = {}

    def get(name, which="G_ema"):
        if (name, which) not in cache:
            cache[name, which] = pretrained.load(converted[name], which=which)
        return cache[name, which]

    return get


# ----------------------------------------------------------------------------- safe reader


def test_safe_reader_matches_torch_load():
    torch = _ci.importorskip("torch")
    for name in (ROS, NV_SD):
        ref = torch.load(fx(name), map_location="cpu", weights_only=False)
        _, ours = safe_load.load(fx(name))
        ref_sds = {k: ref[k] for k in ("g", "g_ema", "d")} if "g_ema" in ref else {"": ref}
        for net, sd in ref_sds.items():
            got = ours[net] if net else ours
            assert list(got) == list(sd)
            for key, t in sd.items():
                np.testing.assert_array_equal(got[key], t.numpy(), err_msg=f"{name} {net} {key}")
    _, ros = safe_load.load(fx(ROS))
    assert isinstance(ros["args"], safe_load.Namespace) and ros["args"].latent == 64


def test_nvlabs_pickle_tensors_equal_state_dict():
    """The .pkl (legacy-format storages inside a plain pickle) and the zip state_dict agree."""
    from weights_convert.convert import module_state_dict

    kind, snap = safe_load.load(fx(NV_PKL))
    assert kind == "pickle"
    sd_pkl = module_state_dict(snap["G_ema"], "pkl")
    _, sd = safe_load.load(fx(NV_SD))
    assert sorted(sd_pkl) == sorted(sd)
    for k in sd:
        np.testing.assert_array_equal(sd_pkl[k], sd[k], err_msg=k)
    assert snap["G_ema"]["state"]["_init_kwargs"]["img_resolution"] == 32
    assert snap["G"]["class_name"] == "Generator"


# ----------------------------------------------------------------------------- parity


def _ros_outputs(gan, io_):
    ws = gan.mapping(io_["z"])
    mix = style_mix(ws, gan.mapping(io_["z_mix2"]), int(io_["inject_index"]))
    trunc = gan.mapping(io_["z"], truncation_psi=float(io_["truncation"]))
    return {
        "w": ws[:, 0],
        "img": nchw(gan.synthesis(ws)),
        "img_wplus": nchw(gan.synthesis(jnp.asarray(io_["wplus"]))),
        "img_trunc": nchw(gan.synthesis(trunc)),
        "latent_mix": mix,
        "img_mix": nchw(gan.synthesis(mix)),
        "latent_avg": gan.G["buffers"]["mapping"]["w_avg"],
        "d_logits": gan.discriminate(nhwc(io_["img"])),
        "d_logits_wplus": gan.discriminate(nhwc(io_["img_wplus"])),
        "d_logits_rand": gan.discriminate(nhwc(io_["d_input_rand"])),
    }


def _nv_outputs(gan, io_, with_d=True):
    ws = gan.mapping(io_["z"])
    out = {
        "ws": ws,
        "img": nchw(gan.synthesis(ws)),
        "ws_trunc": gan.mapping(io_["z"], truncation_psi=float(io_["psi"])),
        "img_trunc": nchw(gan.synthesis(jnp.asarray(io_["ws_trunc"]))),
        "img_wplus": nchw(gan.synthesis(jnp.asarray(io_["wplus"]))),
        "img_noise_none": nchw(gan.synthesis(ws, noise_mode="none")),
        "w_avg": gan.G["buffers"]["mapping"]["w_avg"],
    }
    if with_d:
        out.update(
            d_logits=gan.discriminate(nhwc(io_["img"])),
            d_logits_wplus=gan.discriminate(nhwc(io_["img_wplus"])),
            d_logits_rand=gan.discriminate(nhwc(io_["d_input_rand"])),
        )
    return out


@pytest.fixture(scope="module")
def parity(gans):
    """{fixture: {output: max abs error}} against the upstream reference outputs."""
    results = {}
    io_r = np.load(fx("rosinality_stylegan2_32_io.npz"))
    io_n = np.load(fx("nvlabs_ada_32_io.npz"))
    for name, io_, outs in (
        ("rosinality", io_r, _ros_outputs(gans("rosinality"), io_r)),
        ("nvlabs-pkl", io_n, _nv_outputs(gans("nvlabs-pkl"), io_n)),
        ("nvlabs-state-dict", io_n, _nv_outputs(gans("nvlabs-state-dict"), io_n, False)),
    ):
        results[name] = {k: max_err(v, io_[k]) for k, v in outs.items()}
    return results


@pytest.mark.parametrize(
    "name,expected",
    [
        (
            "rosinality",
            {
                "w",
                "img",
                "img_wplus",
                "img_trunc",
                "latent_mix",
                "img_mix",
                "latent_avg",
                "d_logits",
                "d_logits_wplus",
                "d_logits_rand",
            },
        ),
        (
            "nvlabs-pkl",
            {
                "ws",
                "img",
                "ws_trunc",
                "img_trunc",
                "img_wplus",
                "img_noise_none",
                "w_avg",
                "d_logits",
                "d_logits_wplus",
                "d_logits_rand",
            },
        ),
        (
            "nvlabs-state-dict",
            {"ws", "img", "ws_trunc", "img_trunc", "img_wplus", "img_noise_none", "w_avg"},
        ),
    ],
)
def test_parity(parity, name, expected):
    errs = parity[name]
    assert set(errs) == expected
    print(f"\n{name}: " + ", ".join(f"{k} {v:.1e}" for k, v in sorted(errs.items())))
    bad = {k: v for k, v in errs.items() if not v <= TOL}
    assert not bad, f"{name}: outputs off by more than {TOL}: {bad}"


@pytest.mark.parametrize("name,key", [("rosinality", "img_from_g"), ("nvlabs-pkl", "img_from_G")])
def test_raw_generator_is_distinguishable(gans, name, key):
    io_ = np.load(
        fx("rosinality_stylegan2_32_io.npz" if name == "rosinality" else "nvlabs_ada_32_io.npz")
    )
    raw, ema = gans(name, "G"), gans(name, "G_ema")
    img_raw = nchw(raw.synthesis(raw.mapping(io_["z"])))
    img_ema = nchw(ema.synthesis(ema.mapping(io_["z"])))
    assert max_err(img_raw, io_[key]) <= TOL
    # A converter that loaded G_ema in place of G (or the reverse) fails by far more than TOL.
    assert max_err(img_ema, io_[key]) > 100 * TOL
    assert max_err(img_raw, io_["img"]) > 100 * TOL


# ----------------------------------------------------------------------------- config.json


def test_config_json_records_source_and_inferred_architecture(converted):
    manifest = json.load(open(fx("manifest.json")))["fixtures"]
    ros_io = np.load(fx("rosinality_stylegan2_32_io.npz"))
    nv_kw = manifest["nvlabs_ada_32"]["G_init_kwargs"]
    for name, src in (("rosinality", ROS), ("nvlabs-pkl", NV_PKL), ("nvlabs-state-dict", NV_SD)):
        doc = json.load(open(os.path.join(converted[name], "config.json")))
        assert doc["architecture"] == "stylegan2"
        assert doc["source"]["format"] == name
        assert doc["source"]["path"] == os.path.abspath(fx(src))
        assert doc["source"]["sha256"] == hashlib.sha256(open(fx(src), "rb").read()).hexdigest()
        cfg = doc["config"]
        if name == "rosinality":
            assert doc["networks"] == ["D", "G", "G_ema"]
            assert cfg["resolution"] == int(ros_io["size"])
            assert cfg["w_dim"] == int(ros_io["style_dim"])
            assert cfg["mapping_layers"] == int(ros_io["n_mlp"])
            assert 2 * len(cfg["channels"]) == int(ros_io["n_latent"])
            assert cfg["channels"] == [
                manifest["rosinality_stylegan2_32"]["channels"][str(r)] for r in (4, 8, 16, 32)
            ]
            assert cfg["fan_in_scale_modconv"] and cfg["conv_clamp"] is None
            assert doc["provenance"]["w_avg"]["G_ema"] == "latent_avg"
        else:
            assert cfg["resolution"] == nv_kw["img_resolution"]
            assert (cfg["z_dim"], cfg["w_dim"]) == (nv_kw["z_dim"], nv_kw["w_dim"])
            assert cfg["mapping_layers"] == nv_kw["mapping_kwargs"]["num_layers"]
            sk = nv_kw["synthesis_kwargs"]
            assert cfg["channels"] == [
                min(sk["channel_base"] // r, sk["channel_max"]) for r in (4, 8, 16, 32)
            ]
            assert cfg["conv_clamp"] == sk["conv_clamp"]
            assert doc["networks"] == (["D", "G", "G_ema"] if name == "nvlabs-pkl" else ["G_ema"])


# ----------------------------------------------------------------------------- errors


def _assert_failed(rc, err, out_dir, *needles):
    assert rc != 0
    assert err.startswith("error:") and "\n" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not os.path.exists(out_dir)
    leftovers = [n for n in os.listdir(os.path.dirname(out_dir)) if ".tmp-" in n]
    assert not leftovers, leftovers


@pytest.fixture(scope="module")
def ros_ckpt():
    torch = _ci.importorskip("torch")
    return torch, torch.load(fx(ROS), map_location="cpu", weights_only=False)


def _save_torch(torch, obj, path):
    torch.save(obj, path)
    return str(path)


def test_missing_tensor(ros_ckpt, tmp_path, capsys):
    torch, ckpt = ros_ckpt
    bad = dict(ckpt, g_ema=dict(ckpt["g_ema"]))
    del bad["g_ema"]["convs.3.noise.weight"]
    src = _save_torch(torch, bad, tmp_path / "missing.pt")
    out = tmp_path / "out"
    rc, err = run_cli(["--format", "rosinality", "--src", src, "--out", out], capsys)
    _assert_failed(rc, err, str(out), src, "convs.3.noise.weight", "missing")


def test_extra_tensor(ros_ckpt, tmp_path, capsys):
    torch, ckpt = ros_ckpt
    bad = dict(ckpt, d=dict(ckpt["d"]))
    bad["d"]["final_linear.2.weight"] = torch.zeros(1, 1)
    src = _save_torch(torch, bad, tmp_path / "extra.pt")
    out = tmp_path / "out"
    rc, err = run_cli(["--format", "rosinality", "--src", src, "--out", out], capsys)
    _assert_failed(rc, err, str(out), src, "final_linear.2.weight", "unexpected")


def test_wrong_fir_kernel(ros_ckpt, tmp_path, capsys):
    torch, ckpt = ros_ckpt
    bad = dict(ckpt, g_ema=dict(ckpt["g_ema"]))
    bad["g_ema"]["convs.2.conv.blur.kernel"] = bad["g_ema"]["convs.2.conv.blur.kernel"] / 4
    src = _save_torch(torch, bad, tmp_path / "fir.pt")
    out = tmp_path / "out"
    rc, err = run_cli(["--format", "rosinality", "--src", src, "--out", out], capsys)
    _assert_failed(rc, err, str(out), "convs.2.conv.blur.kernel")


def test_wrong_shape(ros_ckpt, tmp_path, capsys):
    torch, ckpt = ros_ckpt
    bad = dict(ckpt, g_ema=dict(ckpt["g_ema"]))
    bad["g_ema"]["convs.1.activate.bias"] = torch.zeros(31)
    src = _save_torch(torch, bad, tmp_path / "shape.pt")
    out = tmp_path / "out"
    rc, err = run_cli(["--format", "rosinality", "--src", src, "--out", out], capsys)
    _assert_failed(rc, err, str(out), "convs.1.activate.bias", "[31]")


@pytest.mark.parametrize("name,cut", [(ROS, 0.5), (NV_PKL, 0.5), (NV_SD, 0.9)])
def test_truncated_file(tmp_path, capsys, name, cut):
    data = open(fx(name), "rb").read()
    src = tmp_path / ("trunc_" + name)
    src.write_bytes(data[: int(len(data) * cut)])
    fmt = {ROS: "rosinality", NV_PKL: "nvlabs-pkl", NV_SD: "nvlabs-state-dict"}[name]
    out = tmp_path / "out"
    rc, err = run_cli(["--format", fmt, "--src", src, "--out", out], capsys)
    _assert_failed(rc, err, str(out), str(src))


def test_corrupt_storage_bytes(tmp_path, capsys):
    """Flip bytes inside a stored tensor of the zip: the CRC check must catch it."""
    data = bytearray(open(fx(NV_SD), "rb").read())
    with zipfile.ZipFile(fx(NV_SD)) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith("/data/0"))
    # The local header's name/extra lengths (torch pads the extra field to align the data).
    name_len, extra_len = (
        int.from_bytes(data[info.header_offset + o : info.header_offset + o + 2], "little")
        for o in (26, 28)
    )
    start = info.header_offset + 30 + name_len + extra_len
    data[start + 8 : start + 16] = bytes(255 - b for b in data[start + 8 : start + 16])
    src = tmp_path / "corrupt.pt"
    src.write_bytes(bytes(data))
    out = tmp_path / "out"
    rc, err = run_cli(["--format", "nvlabs-state-dict", "--src", src, "--out", out], capsys)
    _assert_failed(rc, err, str(out), str(src), "corrupt")


def test_garbage_file(tmp_path, capsys):
    src = tmp_path / "garbage.pt"
    src.write_bytes(b"definitely not a checkpoint")
    out = tmp_path / "out"
    rc, err = run_cli(["--format", "rosinality", "--src", src, "--out", out], capsys)
    _assert_failed(rc, err, str(out), str(src))


@pytest.mark.parametrize(
    "name,fmt,hint",
    [
        (ROS, "nvlabs-state-dict", "rosinality"),
        (ROS, "nvlabs-pkl", "rosinality"),
        (NV_PKL, "rosinality", "nvlabs-pkl"),
        (NV_SD, "nvlabs-pkl", "nvlabs-state-dict"),
    ],
)
def test_wrong_format(tmp_path, capsys, name, fmt, hint):
    out = tmp_path / "out"
    rc, err = run_cli(["--format", fmt, "--src", fx(name), "--out", out], capsys)
    _assert_failed(rc, err, str(out), fx(name), f"--format {hint}")


def test_missing_src_and_existing_out(tmp_path, capsys):
    out = tmp_path / "out"
    rc, err = run_cli(
        ["--format", "rosinality", "--src", tmp_path / "nope.pt", "--out", out], capsys
    )
    _assert_failed(rc, err, str(out), "nope.pt", "no such file")
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    rc, err = run_cli(["--format", "nvlabs-state-dict", "--src", fx(NV_SD), "--out", out], capsys)
    assert rc != 0 and "already exists" in err and str(out) in err
    assert os.listdir(out) == ["keep.txt"]


def test_raw_g_absent_and_no_d(tmp_path, capsys):
    out = tmp_path / "out"
    rc, err = run_cli(
        ["--format", "nvlabs-state-dict", "--src", fx(NV_SD), "--out", out, "--raw-g"], capsys
    )
    _assert_failed(rc, err, str(out), "--raw-g")
    rc, _ = run_cli(["--format", "nvlabs-pkl", "--src", fx(NV_PKL), "--out", out, "--no-d"], capsys)
    assert rc == 0
    doc = json.load(open(out / "config.json"))
    assert doc["networks"] == ["G_ema"]
    with pytest.raises(ValueError, match="no discriminator"):
        pretrained.load(str(out)).discriminate(jnp.zeros((1, 32, 32, 3)))


def test_failure_while_writing_leaves_nothing(tmp_path, capsys, monkeypatch):
    from ganinv_jax import checkpointing

    def boom(path, tree):
        os.makedirs(path)
        open(os.path.join(path, "partial"), "w").close()
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(checkpointing, "save_pytree", boom)
    out = tmp_path / "out"
    rc, err = run_cli(["--format", "nvlabs-state-dict", "--src", fx(NV_SD), "--out", out], capsys)
    _assert_failed(rc, err, str(out), "disk full")


# ----------------------------------------------------------------------------- safety


class _Evil:
    """Pickles as a REDUCE of `fn(*args)`: what a malicious checkpoint does."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _evil_payloads(marker: str) -> dict[str, object]:
    import builtins

    return {
        "system": _Evil(os.system, f"touch {marker}"),
        "eval": _Evil(builtins.eval, f"open({marker!r}, 'w').close()"),
        "Popen": _Evil(subprocess.Popen, ["touch", marker]),
    }


@pytest.mark.parametrize("payload", ["system", "eval", "Popen"])
@pytest.mark.parametrize("container", ["pkl", "zip"])
def test_malicious_pickle_is_refused(tmp_path, capsys, payload, container):
    marker = str(tmp_path / "pwned")
    # The payload sits where a network would be, after harmless entries.
    obj = {"training_set_kwargs": {}, "G_ema": _evil_payloads(marker)[payload]}
    data = pickle.dumps(obj, protocol=4)
    src = tmp_path / f"evil.{container}"
    if container == "pkl":
        src.write_bytes(data)
        fmt = "nvlabs-pkl"
    else:  # a torch-zip layout whose data.pkl carries the payload
        with zipfile.ZipFile(src, "w") as zf:
            zf.writestr("archive/data.pkl", data)
            zf.writestr("archive/version", "3\n")
        fmt = "rosinality"
    out = tmp_path / "out"
    rc, err = run_cli(["--format", fmt, "--src", src, "--out", out], capsys)
    _assert_failed(rc, err, str(out), str(src), "refusing", payload)
    assert not os.path.exists(marker), "the pickle's payload ran"


def test_malicious_storage_bytes_are_refused(tmp_path, capsys):
    """NVlabs pickles embed serialized storages; a payload inside those bytes is refused too."""
    marker = str(tmp_path / "pwned")
    inner = io.BytesIO()
    for part in (safe_load._LEGACY_MAGIC, safe_load._LEGACY_PROTOCOL, {"little_endian": True}):
        pickle.dump(part, inner, protocol=2)
    pickle.dump(_Evil(os.system, f"touch {marker}"), inner, protocol=2)

    # `torch.storage._load_from_bytes(<inner>)`, opcode by opcode (no torch needed).
    def short_str(t: str) -> bytes:
        return b"\x8c" + bytes([len(t)]) + t.encode()

    blob = inner.getvalue()
    payload = (
        b"\x80\x04"
        + short_str("torch.storage")
        + short_str("_load_from_bytes")
        + b"\x93"
        + b"B"
        + len(blob).to_bytes(4, "little")
        + blob
        + b"\x85R."
    )
    src = tmp_path / "evil_storage.pkl"
    src.write_bytes(payload)
    out = tmp_path / "out"
    rc, err = run_cli(["--format", "nvlabs-pkl", "--src", src, "--out", out], capsys)
    _assert_failed(rc, err, str(out), "refusing", "system")
    assert not os.path.exists(marker)


def test_cli_subprocess_without_torch(tmp_path, converted):
    """`python -m weights_convert` in a fresh process where `import torch` fails."""
    blocker = tmp_path / "block"
    (blocker / "torch").mkdir(parents=True)
    (blocker / "torch" / "__init__.py").write_text("raise ImportError('torch is blocked')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocker), REPO]), JAX_PLATFORMS="cpu")
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "weights_convert",
            "--format",
            "nvlabs-pkl",
            "--src",
            fx(NV_PKL),
            "--out",
            str(out),
            "--raw-g",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout
    ours = pretrained.load(str(out), which="G")
    ref = pretrained.load(converted["nvlabs-pkl"], which="G")
    for a, b in zip(*(jax_leaves(g.params) for g in (ours, ref))):
        np.testing.assert_array_equal(a, b)


def jax_leaves(tree):
    import jax

    return jax.tree_util.tree_leaves(tree)


# ----------------------------------------------------------------------------- inference


_INVERSE = {
    "id": lambda a: a,
    "dense": lambda a: a.T,
    "scalar": lambda a: a,
    "conv": lambda a: a.transpose(3, 2, 0, 1),
    "const_chw": lambda a: a.transpose(2, 0, 1),
}


def _as_nvlabs_state_dict(cfg, net, variables):
    """Invert the NVlabs name table: our variables -> a torch-layout state_dict (+ filters)."""
    from flax.traverse_util import flatten_dict

    from weights_convert import tables
    from weights_convert.convert import expected_fir

    table = (tables.nvlabs_discriminator if net == "D" else tables.nvlabs_generator)(cfg)
    flat = {"/".join(k): np.asarray(v) for k, v in flatten_dict(variables).items()}
    sd = {r.src: _INVERSE[r.transform](flat[r.dst]) for r in table.rules}
    sd.update({k: expected_fir(cfg.fir, g).astype(np.float32) for k, g in table.fir.items()})
    return sd


@pytest.mark.parametrize(
    "kw",
    [
        dict(
            resolution=16,
            channels=(16, 8, 8),
            c_dim=3,
            img_channels=1,
            architecture="resnet",
            d_architecture="skip",
            d_mapping_layers=2,
            d_cmap_dim=12,
            mapping_layer_features=24,
        ),
        dict(
            resolution=8,
            channels=(8, 4),
            architecture="orig",
            d_architecture="orig",
            mbstd_num_channels=2,
            conv_clamp=None,
        ),
    ],
    ids=["cond-gray-resnet-skip", "orig-orig"],
)
def test_nvlabs_inference_round_trip(kw):
    """Architecture inference + name tables on layouts the fixtures do not cover, in-process:
    our random variables -> NVlabs-layout snapshot -> convert -> the same config and values."""
    import collections

    from ganinv_jax.models.stylegan2 import StyleGAN2Config
    from weights_convert.convert import _convert_nvlabs

    base = dict(z_dim=8, w_dim=16, mapping_layers=2, conv_clamp=256.0)
    cfg = StyleGAN2Config(**{**base, **kw})
    rng = np.random.RandomState(0)
    trees = {
        net: jax_tree_map(lambda x: rng.standard_normal(x.shape).astype(np.float32), tree)
        for net, tree in pretrained.abstract_variables(cfg, ["G_ema", "D"]).items()
    }
    g_kwargs = {"synthesis_kwargs": {"conv_clamp": cfg.conv_clamp}}
    d_kwargs = {"conv_clamp": cfg.conv_clamp, "epilogue_kwargs": {"mbstd_group_size": 4}}

    def module(sd, kwargs):
        return {
            "type": "class",
            "class_name": "X",
            "state": {
                "_parameters": collections.OrderedDict(sd),
                "_buffers": {},
                "_modules": {},
                "_init_kwargs": kwargs,
            },
        }

    snap = {
        "G_ema": module(_as_nvlabs_state_dict(cfg, "G_ema", trees["G_ema"]), g_kwargs),
        "D": module(_as_nvlabs_state_dict(cfg, "D", trees["D"]), d_kwargs),
    }
    got_cfg, got, _ = _convert_nvlabs(snap, "mem.pkl", "nvlabs-pkl", False, True, None)
    assert got_cfg == cfg
    for net in ("G_ema", "D"):
        for a, b in zip(jax_leaves(got[net]), jax_leaves(trees[net])):
            np.testing.assert_array_equal(a, b)


def jax_tree_map(fn, tree):
    import jax

    return jax.tree_util.tree_map(fn, tree)
