"""Convert a GAN checkpoint into a Flax variables tree + config, with strict coverage.

Formats: StyleGAN2 (`rosinality`, `nvlabs-pkl`, `nvlabs-state-dict`), PGGAN (`pggan-zoo`,
`weights_convert/pggan_zoo.py`) and BigGAN (`biggan-hf`, a folder; `weights_convert/biggan_hf.py`),
all read with the allow-list reader of `safe_load` and filled through `apply_table`.

`convert(src, fmt, raw_g=..., with_d=...)` returns a `Converted` (config, trees, metadata with
`architecture` 'stylegan2' | 'pggan' | 'biggan');
`write_dir(out, converted)` writes it atomically. `apply_table` is the one place where the
coverage rules live:
  * every source tensor of a network is used exactly once (FIR kernel buffers are compared
    with the taps the config implies, then count as used);
  * every target leaf of `jax.eval_shape(init)` is filled exactly once, with the same shape.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Mapping, Optional

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from ganinv_jax import atomic, checkpointing, pretrained
from ganinv_jax.models import layers as L
from ganinv_jax.models.stylegan2 import StyleGAN2Config
from weights_convert import infer, safe_load, tables
from weights_convert.safe_load import CheckpointError

FORMATS = ("rosinality", "nvlabs-pkl", "nvlabs-state-dict", "pggan-zoo", "biggan-hf")
# format -> the architecture config.json records (and `pretrained.load` dispatches on)
ARCHITECTURES = {
    "rosinality": "stylegan2",
    "nvlabs-pkl": "stylegan2",
    "nvlabs-state-dict": "stylegan2",
    "pggan-zoo": "pggan",
    "biggan-hf": "biggan",
}
# formats whose --src is a directory
DIR_FORMATS = ("biggan-hf",)
CONFIG_NAME = pretrained.CONFIG_NAME
PARAMS_NAME = pretrained.PARAMS_NAME


@dataclasses.dataclass
class Converted:
    config: Any  # StyleGAN2Config | PGGANConfig | BigGANConfig (`meta['architecture']`)
    trees: dict[str, Any]  # 'G_ema' / 'G' / 'D' -> variables (nested dicts of numpy)
    meta: dict[str, Any]  # everything config.json says besides the config


# ----------------------------------------------------------------------------- coverage


def expected_fir(taps, gain: float) -> np.ndarray:
    t = L.fir_taps(taps).astype(np.float64)
    return np.outer(t, t) * gain


def apply_table(
    sd: Mapping[str, np.ndarray],
    table: tables.Table,
    abstract: Any,
    *,
    source: str,
    net: str,
    extras: Optional[Mapping[str, np.ndarray]] = None,
    taps=L.DEFAULT_FIR,
) -> dict:
    """Fill `abstract` (a variables tree of ShapeDtypeStructs) from `sd` per `table`."""
    where = f"{source} [{net}]"
    targets = {"/".join(k): v for k, v in flatten_dict(abstract).items()}
    filled: dict[str, np.ndarray] = {}
    used: set[str] = set()

    def put(dst: str, value: np.ndarray, label: str):
        if dst not in targets:
            raise CheckpointError(f"{where}: '{label}' maps to '{dst}', which the model lacks")
        if dst in filled:
            raise CheckpointError(f"{where}: '{dst}' filled twice (second by '{label}')")
        want = tuple(targets[dst].shape)
        if tuple(value.shape) != want:
            raise CheckpointError(
                f"{where}: tensor '{label}' gives shape {list(value.shape)} "
                f"for '{dst}', expected {list(want)}"
            )
        filled[dst] = np.asarray(value, dtype=targets[dst].dtype)

    for rule in table.rules:
        if rule.src in used:
            raise CheckpointError(f"{where}: name table uses '{rule.src}' twice")
        if rule.src not in sd:
            raise CheckpointError(f"{where}: missing tensor '{rule.src}'")
        try:
            value = tables.TRANSFORMS[rule.transform](np.asarray(sd[rule.src]))
        except ValueError as e:
            raise CheckpointError(f"{where}: tensor '{rule.src}': {e}") from None
        put(rule.dst, value, rule.src)
        used.add(rule.src)
    for key, gain in table.fir.items():
        if key not in sd:
            raise CheckpointError(f"{where}: missing FIR kernel buffer '{key}'")
        want = expected_fir(taps, gain)
        got = np.asarray(sd[key], np.float64)
        if got.shape != want.shape or not np.allclose(got, want, rtol=0, atol=1e-6):
            raise CheckpointError(
                f"{where}: FIR kernel '{key}' is not the expected "
                f"{list(taps)} filter with gain {gain}"
            )
        used.add(key)
    for dst, value in (extras or {}).items():
        put(dst, value, dst)
    extra = sorted(set(sd) - used)
    if extra:
        raise CheckpointError(
            f"{where}: unexpected tensor '{extra[0]}'"
            + (f" (+{len(extra) - 1} more)" if len(extra) > 1 else "")
        )
    unfilled = sorted(set(targets) - set(filled))
    if unfilled:
        raise CheckpointError(
            f"{where}: no source tensor for '{unfilled[0]}'"
            + (f" (+{len(unfilled) - 1} more)" if len(unfilled) > 1 else "")
        )
    return unflatten_dict({tuple(k.split("/")): v for k, v in filled.items()})


# ----------------------------------------------------------------------------- inputs


def _as_state_dict(obj: Any, where: str) -> dict[str, np.ndarray]:
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise CheckpointError(f"{where}: not a state_dict")
    bad = [k for k, v in obj.items() if not isinstance(v, np.ndarray)]
    if bad:
        raise CheckpointError(f"{where}: entry '{bad[0]}' is not a tensor")
    return dict(obj)


def module_state_dict(meta: Any, where: str, prefix: str = "") -> dict[str, np.ndarray]:
    """The torch `state_dict()` of an NVlabs persistent module, from its pickled `__dict__`."""
    if not (isinstance(meta, Mapping) and isinstance(meta.get("state"), Mapping)):
        raise CheckpointError(f"{where}: '{prefix or '<root>'}' is not an NVlabs persistent module")
    state = meta["state"]
    out: dict[str, np.ndarray] = {}
    skip = set(state.get("_non_persistent_buffers_set") or ())
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if value is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(value, np.ndarray):
                raise CheckpointError(f"{where}: '{prefix}{name}' is not a tensor")
            out[prefix + name] = value
    for name, sub in (state.get("_modules") or {}).items():
        if sub is not None:
            out.update(module_state_dict(sub, where, f"{prefix}{name}."))
    return out


def sniff(obj: Any) -> Optional[str]:
    """Which of our formats an unpickled object looks like (for wrong --format errors)."""
    if isinstance(obj, Mapping):
        if "g_ema" in obj:
            return "rosinality"
        if isinstance(obj.get("G_ema"), Mapping) and "state" in obj["G_ema"]:
            return "nvlabs-pkl"
        if "mapping.fc0.weight" in obj:
            return "nvlabs-state-dict"
        if "config" in obj and "netG" in obj:
            return "pggan-zoo"
        if "generator.gen_z.weight_orig" in obj:
            return "biggan-hf"
    return None


def _wrong_format(src: str, fmt: str, obj: Any) -> CheckpointError:
    guess = sniff(obj)
    hint = f"; it looks like --format {guess}" if guess and guess != fmt else ""
    if guess == "biggan-hf":
        hint += " (whose --src is the folder holding it)"
    return CheckpointError(f"{src}: not a {fmt} checkpoint{hint}")


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- formats


def _networks(obj, src, fmt, raw_g: bool, with_d: bool, keys: dict[str, str]) -> dict:
    """Pick the source objects for G_ema (+ G, D) by their top-level keys, or fail clearly."""
    picked = {"G_ema": obj[keys["G_ema"]]}
    for net, flag in (("G", raw_g), ("D", with_d)):
        if not flag:
            continue
        if obj.get(keys[net]) is None:
            opt = "--raw-g" if net == "G" else "--no-d"
            hint = "drop --raw-g" if net == "G" else "pass --no-d"
            raise CheckpointError(
                f"{src}: no '{keys[net]}' network in this {fmt} checkpoint "
                f"({hint}; {opt} controls it)"
            )
        picked[net] = obj[keys[net]]
    return picked


def _mean_w(cfg: StyleGAN2Config, variables: Any, n: int = 4096, seed: int = 0) -> np.ndarray:
    """rosinality's `mean_latent(n)`: the mean of the mapped w of n standard-normal z."""
    import jax

    gan = pretrained.PretrainedGAN.from_trees(cfg, {"G_ema": variables})
    z = jax.random.normal(jax.random.key(seed), (n, cfg.z_dim))
    return np.asarray(gan.mapping(z)[:, 0].mean(axis=0))


def _convert_rosinality(obj, src, raw_g, with_d) -> tuple[StyleGAN2Config, dict, dict]:
    if not (isinstance(obj, Mapping) and "g_ema" in obj):
        raise _wrong_format(src, "rosinality", obj)
    nets = _networks(obj, src, "rosinality", raw_g, with_d, {"G_ema": "g_ema", "G": "g", "D": "d"})
    sds = {k: _as_state_dict(v, f"{src} [{k}]") for k, v in nets.items()}
    cfg = infer.rosinality_config(sds["G_ema"], sds.get("D"), src)
    abstract = pretrained.abstract_variables(cfg, list(sds))
    trees, w_avg = {}, {}
    for net, sd in sds.items():
        if net == "D":
            trees[net] = apply_table(
                sd, tables.rosinality_discriminator(cfg), abstract[net], source=src, net=net
            )
            continue
        # rosinality G has no w_avg buffer: use the top-level latent_avg for G_ema (as
        # e4e/pSp do), otherwise the mean of 4096 mapped samples (rosinality's mean_latent).
        extras = {"buffers/mapping/w_avg": np.zeros((cfg.w_dim,), np.float32)}
        tree = apply_table(
            sd, tables.rosinality_generator(cfg), abstract[net], source=src, net=net, extras=extras
        )
        la = obj.get("latent_avg")
        if net == "G_ema" and la is not None:
            la = np.asarray(la, np.float32).reshape(-1)
            if la.shape != (cfg.w_dim,):
                raise CheckpointError(
                    f"{src}: tensor 'latent_avg' has shape {list(la.shape)}, expected [{cfg.w_dim}]"
                )
            tree["buffers"]["mapping"]["w_avg"] = la
            w_avg[net] = "latent_avg"
        else:
            tree["buffers"]["mapping"]["w_avg"] = _mean_w(cfg, tree)
            w_avg[net] = "mean of mapping(z) over 4096 z ~ N(0, I), seed 0"
        trees[net] = tree
    prov = {"mapping_lr_multiplier": "rosinality default lr_mlp=0.01", "w_avg": w_avg}
    return cfg, trees, prov


def _convert_nvlabs(obj, src, fmt, raw_g, with_d, conv_clamp) -> tuple[StyleGAN2Config, dict, dict]:
    if fmt == "nvlabs-pkl":
        if sniff(obj) != "nvlabs-pkl":
            raise _wrong_format(src, fmt, obj)
        nets = _networks(obj, src, fmt, raw_g, with_d, {"G_ema": "G_ema", "G": "G", "D": "D"})
        sds = {k: module_state_dict(v, f"{src} [{k}]") for k, v in nets.items()}
        kwargs = {k: dict(v["state"].get("_init_kwargs") or {}) for k, v in nets.items()}
    else:
        if sniff(obj) != "nvlabs-state-dict":
            raise _wrong_format(src, fmt, obj)
        if raw_g:
            raise CheckpointError(f"{src}: a state_dict holds one generator; --raw-g needs a .pkl")
        sds = {"G_ema": _as_state_dict(obj, src)}
        kwargs = {}
    g_kwargs = kwargs.get("G_ema", {})
    if conv_clamp is not None:  # state_dicts only (checked in convert): no kwargs to honour
        g_kwargs = {"synthesis_kwargs": {"conv_clamp": None if conv_clamp < 0 else conv_clamp}}
    cfg, prov = infer.nvlabs_config(sds["G_ema"], sds.get("D"), src, g_kwargs, kwargs.get("D"))
    if conv_clamp is not None:
        prov["conv_clamp"] = "--conv-clamp"
    abstract = pretrained.abstract_variables(cfg, list(sds))
    trees = {}
    for net, sd in sds.items():
        table = (tables.nvlabs_discriminator if net == "D" else tables.nvlabs_generator)(cfg)
        trees[net] = apply_table(sd, table, abstract[net], source=src, net=net, taps=cfg.fir)
    prov["w_avg"] = {k: "mapping.w_avg" for k in trees if k != "D"}
    if kwargs:
        prov["init_kwargs"] = {k: jsonable(v) for k, v in kwargs.items()}
    return cfg, trees, prov


def jsonable(x):
    """Any config value (numpy scalars, nested tuples, odd objects as repr) as JSON data."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x if isinstance(x, (str, int, float, bool, type(None))) else repr(x)


def convert(
    src: str,
    fmt: str,
    *,
    raw_g: bool = False,
    with_d: Optional[bool] = None,
    conv_clamp: Optional[float] = None,
) -> Converted:
    """Read `src` safely and convert it. `with_d` None: the discriminator where the format has
    one (all but biggan-hf, which has none: True is refused there, as is `raw_g`).
    `conv_clamp` (NVlabs only) overrides the clamp; a negative value means none."""
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if fmt in DIR_FORMATS:
        bad = [
            opt
            for opt, given in (
                ("--raw-g", raw_g),
                ("--no-d", with_d is False),
                ("with_d=True", with_d is True),
                ("--conv-clamp", conv_clamp is not None),
            )
            if given
        ]
        if bad:
            raise CheckpointError(
                f"{bad[0]} does not apply to --format {fmt} (one generator, no discriminator)"
            )
        if not os.path.isdir(src):
            raise CheckpointError(
                f"{src}: not a directory (--format {fmt} reads a folder with "
                "config.json + pytorch_model.bin)"
            )
    elif not os.path.isfile(src):
        what = "is a directory (only --format biggan-hf reads a folder)"
        raise CheckpointError(f"{src}: {what if os.path.isdir(src) else 'no such file'}")
    if conv_clamp is not None and fmt != "nvlabs-state-dict":
        raise CheckpointError(
            "--conv-clamp applies to --format nvlabs-state-dict only (other "
            "formats record their clamp)"
        )
    with_d = True if with_d is None else with_d
    if fmt == "biggan-hf":
        from weights_convert.biggan_hf import convert_biggan_hf

        cfg, trees, prov = convert_biggan_hf(src)
        source = {
            "format": fmt,
            "path": os.path.abspath(src),
            "files": prov["files"],
            "container": prov["container"],
        }
    else:
        container, obj = safe_load.load(src)
        if fmt == "rosinality":
            cfg, trees, prov = _convert_rosinality(obj, src, raw_g, with_d)
        elif fmt == "pggan-zoo":
            from weights_convert.pggan_zoo import convert_pggan_zoo

            cfg, trees, prov = convert_pggan_zoo(obj, src, raw_g, with_d)
        else:
            cfg, trees, prov = _convert_nvlabs(obj, src, fmt, raw_g, with_d, conv_clamp)
        source = {
            "format": fmt,
            "path": os.path.abspath(src),
            "sha256": sha256(src),
            "bytes": os.path.getsize(src),
            "container": container,
        }
    meta = {
        "format_version": 1,
        "architecture": ARCHITECTURES[fmt],
        "networks": sorted(trees),
        "source": source,
        "provenance": prov,
    }
    return Converted(cfg, trees, meta)


def summary_line(out: str, converted: Converted) -> str:
    """The CLI's one line about a written DIR, per architecture."""
    cfg, arch = converted.config, converted.meta["architecture"]
    nets = ", ".join(converted.meta["networks"])
    if arch == "pggan":
        return (
            f"wrote {out}: {nets}; PGGAN resolution {cfg.resolution}, channels "
            f"{list(cfg.channels)}, z {cfg.z_dim}, alpha {cfg.alpha}, "
            f"output {cfg.output_activation}"
        )
    if arch == "biggan":
        return (
            f"wrote {out}: {nets}; BigGAN resolution {cfg.resolution}, z {cfg.z_dim}, "
            f"{cfg.num_classes} classes, channel_width {cfg.channel_width}, "
            f"{cfg.n_stats} BN-statistics rows (truncation)"
        )
    return (
        f"wrote {out}: {nets}; resolution {cfg.resolution}, "
        f"channels {list(cfg.channels)}, z/w {cfg.z_dim}/{cfg.w_dim}, "
        f"G {cfg.architecture}" + (f", D {cfg.d_architecture}" if "D" in converted.trees else "")
    )


def write_dir(out: str, converted: Converted) -> str:
    """Write `out/{params,config.json}` atomically: a temp sibling, renamed at the end."""
    out = os.path.abspath(out)
    if os.path.exists(out):
        raise CheckpointError(f"{out}: output already exists")
    try:
        with atomic.atomic_dir(out) as tmp:
            checkpointing.save_pytree(os.path.join(tmp, PARAMS_NAME), converted.trees)
            doc = dict(converted.meta, config=converted.config.to_dict())
            with open(os.path.join(tmp, CONFIG_NAME), "w") as f:
                json.dump(doc, f, indent=2, sort_keys=True)
                f.write("\n")
    except FileExistsError as e:  # `out` appeared while we wrote
        raise CheckpointError(str(e)) from None
    return out
