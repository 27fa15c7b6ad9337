"""PGGAN (facebookresearch/pytorch_GAN_zoo): parity with the upstream fixture, the fade-in and
minibatch-stddev conventions, strict conversion errors and safe reading.

The parity fixture (`pggan_zoo_small.pt` + `_io.npz`, outputs of the unmodified upstream
forward pass) skips where it is missing, except under CI=true (tests/_ci.py). Every other test
builds its checkpoint in memory from a random init and needs neither the fixture nor torch.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ganinv_jax.models import pggan
from ganinv_jax.models.pggan import Discriminator, Generator, PGGANConfig
from weights_convert import safe_load
from weights_convert.pggan_zoo import convert_pggan_zoo, discriminator_table, generator_table
from weights_convert.safe_load import CheckpointError, UnsafeCheckpointError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _ci  # noqa: E402
from _parity import max_err, nchw, nhwc  # noqa: E402

TOL = 1e-4
CKPT = "pggan_zoo_small.pt"
IO = "pggan_zoo_small_io.npz"
# npz entries that are inputs or metadata, not outputs of a network.
IO_INPUTS = {"z", "d_input_rand", "alpha", "resolution"}


# ----------------------------------------------------------------------------- the fixture


@pytest.fixture(scope="module")
def zoo():
    """The fixture converted once: (cfg, trees, provenance, io arrays)."""
    src = _ci.fixture_file(CKPT)
    io_ = dict(np.load(_ci.fixture_file(IO), allow_pickle=False))
    _, obj = safe_load.load(src)
    cfg, trees, prov = convert_pggan_zoo(obj, src, raw_g=True, with_d=True)
    return cfg, trees, prov, io_


@pytest.fixture(scope="module")
def parity(zoo):
    """{npz output: max abs error} for every network output the npz holds."""
    cfg, trees, _, io_ = zoo
    g = jax.jit(Generator(cfg).apply)
    d = jax.jit(Discriminator(cfg).apply)
    img = g(trees["G_ema"], io_["z"])
    ours = {
        "img": nchw(img),
        "img_netG": nchw(g(trees["G"], io_["z"])),
        "d_logits": d(trees["D"], nhwc(io_["img"])),
        "d_logits_rand": d(trees["D"], nhwc(io_["d_input_rand"])),
    }
    missing = set(io_) - IO_INPUTS - set(ours)
    assert not missing, f"npz outputs without a check: {sorted(missing)}"
    errs = {k: max_err(v, io_[k]) for k, v in ours.items()}
    # D on our own image too (the npz's d_logits is D on upstream's image).
    errs["d_logits(our img)"] = max_err(d(trees["D"], img), io_["d_logits"])
    return errs


def test_parity_with_upstream(parity):
    print("\npggan-zoo: " + ", ".join(f"{k} {v:.1e}" for k, v in sorted(parity.items())))
    bad = {k: v for k, v in parity.items() if not v <= TOL}
    assert not bad, f"outputs off by more than {TOL}: {bad}"


def test_avg_generator_is_the_default_and_distinguishable(zoo):
    cfg, trees, prov, io_ = zoo
    assert prov["networks"] == {"G_ema": "avgG", "G": "netG", "D": "netD"}
    img_ema = nchw(jax.jit(Generator(cfg).apply)(trees["G_ema"], io_["z"]))
    # A converter that loaded netG in place of avgG (or the reverse) fails by far more than TOL.
    assert max_err(img_ema, io_["img_netG"]) > 100 * TOL


def test_config_and_provenance(zoo):
    cfg, _, prov, io_ = zoo
    assert cfg.channels == (32, 32, 16) and cfg.z_dim == 64 and cfg.img_channels == 3
    assert cfg.resolution == int(io_["resolution"]) == 16
    assert cfg.alpha == float(io_["alpha"]) == 0.0
    assert cfg.output_activation == "linear"  # lossCriterion WGANGP: no tanh
    assert cfg.mbstd and cfg.pixel_norm and cfg.equalized_lr and cfg.decision_dim == 1
    assert PGGANConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    manifest = json.load(open(_ci.fixture_file("manifest.json")))["fixtures"]["pggan_zoo_small"]
    assert json.loads(json.dumps(prov))["zoo_config"] == manifest["config"]


def test_safe_reader_matches_torch_load():
    """Our allow-list reader gives torch's tensors and the config fields, without the zoo."""
    torch = _ci.importorskip("torch")
    src = _ci.fixture_file(CKPT)

    class StubConfig:  # what the fixture README suggests for weights_only=True
        pass

    with torch.serialization.safe_globals([(StubConfig, "models.utils.config.BaseConfig")]):
        ref = torch.load(src, map_location="cpu", weights_only=True)
    _, ours = safe_load.load(src)
    assert isinstance(ours["config"], safe_load.Namespace)
    assert vars(ours["config"]) == vars(ref["config"])
    for net in ("netG", "netD", "avgG"):
        assert list(ours[net]) == list(ref[net])
        for key, t in ref[net].items():
            np.testing.assert_array_equal(ours[net][key], t.numpy(), err_msg=f"{net} {key}")


# ----------------------------------------------------------------------------- tiny models

TINY = PGGANConfig(channels=(8, 8, 4), z_dim=16, img_channels=3, alpha=0.5)


def _zoo_fields(cfg: PGGANConfig, **over) -> dict:
    """The `BaseConfig` fields upstream would pickle for `cfg`."""
    fields = {
        "depthScale0": cfg.channels[0],
        "depthOtherScales": list(cfg.channels[1:]),
        "alpha": cfg.alpha,
        "latentVectorDim": cfg.z_dim,
        "noiseVectorDim": cfg.z_dim,
        "categoryVectorDim": 0,
        "dimOutput": cfg.img_channels,
        "leakyReluLeak": cfg.leaky_relu,
        "perChannelNormalization": cfg.pixel_norm,
        "miniBatchStdDev": cfg.mbstd,
        "equalizedlR": cfg.equalized_lr,
        "lossCriterion": "DCGAN" if cfg.output_activation == "tanh" else "WGANGP",
    }
    return dict(fields, **over)


_TO_TORCH = {"id": lambda a: a, "dense": lambda a: a.T, "conv": lambda a: a.transpose(3, 2, 0, 1)}


def _torch_state_dict(variables, table) -> dict[str, np.ndarray]:
    """Our variables back in the zoo's state_dict layout (inverse of the name table)."""
    flat = {"/".join(k): np.asarray(v) for k, v in _flatten(variables).items()}
    return {r.src: np.ascontiguousarray(_TO_TORCH[r.transform](flat[r.dst])) for r in table.rules}


def _flatten(tree, prefix=()):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


@pytest.fixture(scope="module")
def tiny():
    """A random TINY G/D pair and the zoo checkpoint object it would be saved as."""
    init_g = jax.jit(functools.partial(pggan.init_variables, TINY, "G"))
    init_d = jax.jit(functools.partial(pggan.init_variables, TINY, "D"))
    rng = np.random.RandomState(0)

    def perturbed(tree):  # biases start at zero: perturb so that a dropped or swapped one shows
        return jax.tree.map(
            lambda x: np.asarray(x) + rng.normal(0, 0.3, x.shape).astype("f4"), tree
        )

    g_ema, g = perturbed(init_g(jax.random.key(0))), perturbed(init_g(jax.random.key(1)))
    d = perturbed(init_d(jax.random.key(2)))
    config = safe_load.Namespace()
    config.__dict__.update(_zoo_fields(TINY))
    obj = {
        "config": config,
        "netG": _torch_state_dict(g, generator_table(TINY)),
        "netD": _torch_state_dict(d, discriminator_table(TINY)),
        "avgG": _torch_state_dict(g_ema, generator_table(TINY)),
    }
    fns = {"G": jax.jit(Generator(TINY).apply), "D": jax.jit(Discriminator(TINY).apply)}
    return {"G_ema": g_ema, "G": g, "D": d}, obj, fns


def test_tiny_forward_shapes(tiny):
    variables, _, fns = tiny
    z = jax.random.normal(jax.random.key(1), (3, TINY.z_dim))
    img = fns["G"](variables["G_ema"], z)
    assert img.shape == (3, 16, 16, 3) and img.dtype == jnp.float32
    logits = fns["D"](variables["D"], img)
    assert logits.shape == (3, 1) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(img))) and bool(jnp.all(jnp.isfinite(logits)))
    abstract = pggan.abstract_variables(TINY, ["G", "D"])
    for net in ("G", "D"):
        assert jax.tree.map(lambda a: a.shape, abstract[net]) == jax.tree.map(
            np.shape, variables[net]
        )

    tanh_cfg = PGGANConfig(channels=(8,), z_dim=16, output_activation="tanh")

    @jax.jit
    def tanh_forward(key, z):
        return Generator(tanh_cfg).apply(pggan.init_variables(tanh_cfg, "G", key), z)

    out = tanh_forward(jax.random.key(2), z * 9)
    assert out.shape == (3, 4, 4, 3) and float(jnp.max(jnp.abs(out))) <= 1.0


def test_round_trip_through_zoo_layout(tiny):
    """Any depth: the name tables cover every leaf; the conversion is exact."""
    variables, obj, _ = tiny
    cfg, trees, prov = convert_pggan_zoo(obj, "tiny.pt", raw_g=True, with_d=True)
    assert cfg == TINY and prov["alpha"] == 0.5
    for net in ("G_ema", "G", "D"):
        got, want = _flatten(trees[net]), _flatten(variables[net])
        assert set(got) == set(want)
        for k in want:
            assert got[k].dtype == np.float32
            np.testing.assert_array_equal(got[k], np.asarray(want[k]), err_msg=f"{net} {k}")


def test_generator_fade_in(tiny):
    """alpha blends the previous scale's nearest-upsampled RGB linearly (linear output)."""
    variables, _, _ = tiny

    @jax.jit
    def at_alphas(g, z):  # alpha 0, 1, and TINY's own 0.5
        return [Generator(TINY).apply(g, z, alpha=a) for a in (0.0, 1.0, None)]

    z = jax.random.normal(jax.random.key(3), (2, TINY.z_dim))
    full, low, half = at_alphas(variables["G_ema"], z)
    blocks = np.asarray(low).reshape(2, 8, 2, 8, 2, 3)
    assert np.array_equal(blocks, np.broadcast_to(blocks[:, :, :1, :, :1], blocks.shape))
    np.testing.assert_allclose(half, 0.5 * low + 0.5 * full, atol=1e-5)


def test_discriminator_fade_in(tiny):
    """At alpha=1, D sees the image only through its 2x2 average (>= 2 scales above 4x4);
    at 8x8 upstream never applies D's blend, so alpha has no effect there."""
    variables, _, _ = tiny
    checker = jnp.tile(jnp.array([[1.0, -1.0], [-1.0, 1.0]]), (8, 8))[None, :, :, None]

    @jax.jit
    def with_and_without_checker(d, img):
        run = functools.partial(Discriminator(TINY).apply, d)
        return [(run(img, alpha=a), run(img + checker, alpha=a)) for a in (1.0, 0.0)]

    img = jax.random.normal(jax.random.key(4), (4, 16, 16, 3))
    (a1, a1_checker), (a0, a0_checker) = with_and_without_checker(variables["D"], img)
    np.testing.assert_allclose(a1, a1_checker, atol=1e-5)
    assert max_err(a0, a0_checker) > 1e-3

    cfg8 = PGGANConfig(channels=(8, 4), z_dim=16, alpha=0.5)

    @jax.jit
    def d8_at_alphas(key, img):
        d8 = pggan.init_variables(cfg8, "D", key)
        return [Discriminator(cfg8).apply(d8, img, alpha=a) for a in (0.5, 0.0)]

    half, zero = d8_at_alphas(jax.random.key(5), jax.random.normal(jax.random.key(6), (4, 8, 8, 3)))
    np.testing.assert_array_equal(half, zero)


@pytest.mark.parametrize("n", [1, 3, 4, 8])
def test_minibatch_stddev_conventions(n):
    """Consecutive groups of min(N, 4) (N when 4 does not divide N), unbiased variance."""
    x = np.random.RandomState(n).randn(n, 2, 3, 5).astype(np.float32)
    got = np.asarray(pggan.minibatch_stddev(jnp.asarray(x), 4))
    assert got.shape == (n, 2, 3, 6)
    np.testing.assert_array_equal(got[..., :5], x)
    g = min(n, 4) if n % min(n, 4) == 0 else n
    for b in range(n):
        if g == 1:
            want = 0.0
        else:
            group = x[(b // g) * g : (b // g + 1) * g].astype(np.float64)
            want = np.mean(np.sqrt(np.var(group, axis=0, ddof=1) + 1e-8))
        np.testing.assert_allclose(got[b, ..., 5], want, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- broken inputs


def _fails(obj, *needles, src="bad_ckpt.pt", **kw):
    kw = {"raw_g": True, "with_d": True, **kw}
    with pytest.raises(CheckpointError) as info:
        convert_pggan_zoo(obj, src, **kw)
    msg = str(info.value)
    assert "\n" not in msg and src in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


def _copy(obj, **nets):
    out = dict(obj)
    for key, edit in nets.items():
        out[key] = edit(dict(obj[key]))
    return out


def _without(key):
    return lambda sd: {k: v for k, v in sd.items() if k != key}


def test_missing_tensor(tiny):
    _, obj, _ = tiny
    bad = _copy(obj, avgG=_without("toRGBLayers.1.module.bias"))
    _fails(bad, "avgG", "missing tensor 'toRGBLayers.1.module.bias'")


def test_unexpected_tensor(tiny):
    _, obj, _ = tiny
    bad = _copy(obj, netD=lambda sd: dict(sd, **{"extra.module.weight": np.zeros(1, "f4")}))
    _fails(bad, "netD", "unexpected tensor 'extra.module.weight'")


def test_wrong_shape(tiny):
    _, obj, _ = tiny
    bad = _copy(obj, netG=lambda sd: dict(sd, **{"formatLayer.module.bias": np.zeros(7, "f4")}))
    _fails(bad, "netG", "formatLayer.module.bias", "[7]")


def test_config_disagrees_with_tensors(tiny):
    _, obj, _ = tiny
    config = safe_load.Namespace()
    config.__dict__.update(_zoo_fields(TINY, depthOtherScales=[8]))
    _fails(dict(obj, config=config), "unexpected tensor 'scaleLayers.1.")


@pytest.mark.parametrize(
    "edit,needles",
    [
        (lambda o: [o], ["not a pggan-zoo checkpoint"]),
        (lambda o: {"g_ema": {}, "args": None}, ["--format rosinality"]),
        (lambda o: dict(o, config=[1, 2]), ["'config' is not a pytorch_GAN_zoo BaseConfig"]),
        (lambda o: dict(o, netD=[1, 2]), ["netD", "not a state_dict"]),
        (lambda o: dict(o, avgG={"formatLayer.module.bias": 3.0}), ["is not a tensor"]),
        (lambda o: {k: v for k, v in o.items() if k != "netD"}, ["no 'netD'"]),
    ],
)
def test_wrong_structure(tiny, edit, needles):
    _, obj, _ = tiny
    _fails(edit(obj), *needles)


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("depthScale0", None, "no field 'depthScale0'"),
        ("lossCriterion", "Hinge", "lossCriterion"),
        ("alpha", 2.0, "alpha must be in [0, 1]"),
        ("dimOutput", True, "dimOutput"),
    ],
)
def test_bad_config_fields(tiny, field, value, needle):
    _, obj, _ = tiny
    fields = _zoo_fields(TINY, **{field: value})
    if value is None:
        del fields[field]
    config = safe_load.Namespace()
    config.__dict__.update(fields)
    _fails(dict(obj, config=config), needle)


def test_old_keys_without_module_are_accepted(tiny):
    """Old zoo checkpoints name `X.weight` what newer ones name `X.module.weight`
    (upstream's `loadStateDictCompatible` maps them); both at once is an error."""
    variables, obj, _ = tiny
    old = {k.replace(".module.", "."): v for k, v in obj["avgG"].items()}
    _, trees, _ = convert_pggan_zoo(dict(obj, avgG=old), "old.pt", raw_g=False, with_d=False)
    assert sorted(trees) == ["G_ema"]
    np.testing.assert_array_equal(
        trees["G_ema"]["params"]["format"]["weight"],
        variables["G_ema"]["params"]["format"]["weight"],
    )
    both = dict(obj["avgG"], **{"formatLayer.bias": obj["avgG"]["formatLayer.module.bias"]})
    _fails(dict(obj, avgG=both), "appears twice", raw_g=False, with_d=False)


def test_truncated_file(tmp_path):
    data = open(_ci.fixture_file(CKPT), "rb").read()
    src = tmp_path / "trunc.pt"
    src.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="trunc.pt"):
        safe_load.load(str(src))


# ----------------------------------------------------------------------------- safety


class _Evil:
    """Pickles as a REDUCE of `fn(*args)`: what a malicious checkpoint does."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("container", ["zip", "pickle"])
def test_malicious_config_is_refused(tmp_path, container):
    """A payload where the BaseConfig would be: refused before anything is called."""
    marker = tmp_path / "pwned"
    data = pickle.dumps({"config": _Evil(os.system, f"touch {marker}"), "netG": {}}, protocol=2)
    src = tmp_path / f"evil.{container}"
    if container == "zip":  # the torch zip layout, as `torch.save` writes it
        with zipfile.ZipFile(src, "w") as zf:
            zf.writestr("archive/data.pkl", data)
            zf.writestr("archive/version", "3\n")
    else:
        src.write_bytes(data)
    with pytest.raises(UnsafeCheckpointError) as info:
        safe_load.load(str(src))
    msg = str(info.value)
    assert "\n" not in msg and str(src) in msg and "system" in msg
    assert not marker.exists(), "the pickle's payload ran"


def test_base_config_is_inert(tmp_path):
    """The allow-listed BaseConfig only holds attributes: calling it with arguments (as a
    crafted REDUCE would) is a corrupt file, not a call into anything."""
    blob = b"\x80\x02cmodels.utils.config\nBaseConfig\nX\x03\x00\x00\x00abc\x85R."
    src = tmp_path / "reduce.pkl"
    src.write_bytes(blob)
    with pytest.raises(CheckpointError, match="corrupt"):
        safe_load.load(str(src))
