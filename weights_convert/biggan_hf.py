"""Convert a `pytorch-pretrained-biggan` (0.1.1) model folder into Flax variables, strictly.

The folder is what the package's `from_pretrained(folder)` reads and its TF converter writes:
  * `config.json`: `BigGANConfig.to_json_string()` (plain JSON, no pickle);
  * `pytorch_model.bin`: `torch.save(model.state_dict())`, read with the allow-list
    unpickler of `safe_load` (nothing in it is executed).

Unlike the package (which starts from defaults, overrides with whatever the JSON holds, and
loads with `strict=False`), every config field must be present and known, and
`convert.apply_table` requires every tensor to be used once and every variable to be filled
once. The format has a single generator; it is returned as 'G_ema' so that loaders treat it
like the EMA generator of the StyleGAN formats.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Mapping

import jax
import numpy as np

from ganinv_jax.models.biggan import BigGANConfig, init_variables
from weights_convert import safe_load
from weights_convert.convert import apply_table, sha256
from weights_convert.safe_load import CheckpointError
from weights_convert.tables import Rule, Table

FORMAT = "biggan-hf"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "pytorch_model.bin"
CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(BigGANConfig))


# ----------------------------------------------------------------------------- config.json


def read_config(path: str) -> BigGANConfig:
    """`config.json` -> BigGANConfig; any problem is a one-line CheckpointError."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    missing = [k for k in CONFIG_FIELDS if k not in doc]
    unknown = sorted(set(doc) - set(CONFIG_FIELDS))
    if missing:
        raise CheckpointError(f"{path}: missing config field(s) {', '.join(missing)}")
    if unknown:
        raise CheckpointError(f"{path}: unknown config field(s) {', '.join(unknown)}")
    try:
        return BigGANConfig.from_dict(doc)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid config: {e}") from None


# ----------------------------------------------------------------------------- name table


def _sn(src: str, dst: str, transform: str, bias: bool) -> list[Rule]:
    """A spectral-norm layer: raw weight, stored (u, v) and optionally a bias."""
    rules = [
        Rule(f"{src}.weight_orig", f"params/{dst}/weight", transform),
        Rule(f"{src}.weight_u", f"buffers/{dst}/sn_u"),
        Rule(f"{src}.weight_v", f"buffers/{dst}/sn_v"),  # torch (in, kh, kw) order, kept
    ]
    return rules + [Rule(f"{src}.bias", f"params/{dst}/bias")] if bias else rules


def _stats(src: str, dst: str) -> list[Rule]:
    return [
        Rule(f"{src}.running_means", f"buffers/{dst}/running_means"),
        Rule(f"{src}.running_vars", f"buffers/{dst}/running_vars"),
    ]


def biggan_table(cfg: BigGANConfig) -> Table:
    """torch state_dict key -> `biggan.Generator` variable path, for this config."""
    rules = [Rule("embeddings.weight", "params/embeddings/weight", "dense")]
    rules += _sn("generator.gen_z", "gen_z", "dense", bias=True)
    for i, (kind, _) in enumerate(cfg.modules()):
        src, dst = f"generator.layers.{i}", f"layers_{i}"
        if kind == "attn":
            for name in ("theta", "phi", "g", "o_conv"):
                rules += _sn(f"{src}.snconv1x1_{name}", f"{dst}/{name}", "conv", bias=False)
            rules.append(Rule(f"{src}.gamma", f"params/{dst}/gamma", "scalar"))
            continue
        for k in range(4):
            bn_src, bn_dst = f"{src}.bn_{k}", f"{dst}/bn_{k}"
            rules += _stats(bn_src, bn_dst)
            rules += _sn(f"{bn_src}.scale", f"{bn_dst}/scale", "dense", bias=False)
            rules += _sn(f"{bn_src}.offset", f"{bn_dst}/offset", "dense", bias=False)
            rules += _sn(f"{src}.conv_{k}", f"{dst}/conv_{k}", "conv", bias=True)
    rules += _stats("generator.bn", "bn")
    rules += [
        Rule("generator.bn.weight", "params/bn/weight"),
        Rule("generator.bn.bias", "params/bn/bias"),
    ]
    rules += _sn("generator.conv_to_rgb", "conv_to_rgb", "conv", bias=True)
    return Table(rules, fir={})


def abstract_variables(cfg: BigGANConfig) -> Any:
    """Shapes/dtypes of `Generator(cfg)`'s variables, without computing anything."""
    return jax.eval_shape(functools.partial(init_variables, cfg), jax.random.key(0))


# ----------------------------------------------------------------------------- conversion


def _state_dict(obj: Any, where: str) -> dict[str, np.ndarray]:
    if isinstance(obj, Mapping) and ("g_ema" in obj or "G_ema" in obj):
        raise CheckpointError(f"{where}: not a BigGAN state_dict (it looks like a StyleGAN one)")
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise CheckpointError(f"{where}: not a state_dict")
    bad = [k for k, v in obj.items() if not isinstance(v, np.ndarray)]
    if bad:
        raise CheckpointError(f"{where}: entry '{bad[0]}' is not a tensor")
    return dict(obj)


def _file_record(path: str) -> dict:
    return {"path": os.path.abspath(path), "sha256": sha256(path), "bytes": os.path.getsize(path)}


def convert_biggan_hf(src_dir: str) -> tuple[BigGANConfig, dict, dict]:
    """Read `src_dir/{config.json, pytorch_model.bin}` safely and convert them.

    Returns (config, {'G_ema': variables}, provenance), the provenance being JSON-able.
    Raises CheckpointError (one line naming the file) on anything unexpected.
    """
    if not os.path.isdir(src_dir):
        raise CheckpointError(
            f"{src_dir}: not a directory (expected {CONFIG_FILE} + {WEIGHTS_FILE})"
        )
    config_path = os.path.join(src_dir, CONFIG_FILE)
    weights_path = os.path.join(src_dir, WEIGHTS_FILE)
    cfg = read_config(config_path)
    if not os.path.isfile(weights_path):
        raise CheckpointError(f"{weights_path}: no such file")
    container, obj = safe_load.load(weights_path)
    sd = _state_dict(obj, weights_path)
    variables = apply_table(
        sd, biggan_table(cfg), abstract_variables(cfg), source=weights_path, net="G_ema"
    )
    provenance = {
        "format": FORMAT,
        "upstream": "pytorch-pretrained-biggan 0.1.1 (BigGAN, eval-mode forward)",
        "container": container,
        "files": {
            CONFIG_FILE: _file_record(config_path),
            WEIGHTS_FILE: _file_record(weights_path),
        },
        "spectral_norm": "stored weight_orig / (u . W v) with the stored u, v (torch eval mode)",
        "networks": {"G_ema": "the package's only generator (BigGAN has no raw/EMA split)"},
    }
    return cfg, {"G_ema": variables}, provenance
