"""facebookresearch/pytorch_GAN_zoo PGGAN checkpoints -> `PGGANConfig` + Flax variables trees.

A zoo checkpoint is what `BaseGAN.save()` writes (and what its hubconf downloads):
`{'config': BaseConfig, 'netG': state_dict, 'netD': state_dict, 'avgG': state_dict}`.
`avgG` is the moving-average generator that `model.test(z, getAvG=True)` uses and the
hubconf advises: it becomes 'G_ema'; `netG` is the raw generator ('G', with `raw_g`) and
`netD` the discriminator ('D', with `with_d`).

The architecture comes from the pickled `BaseConfig` (read as an inert attribute holder by
`safe_load`, never by running zoo code); every tensor shape is then checked against it by
`convert.apply_table`. Things only the config knows: `alpha`, the output activation (from
`lossCriterion`), the leak and whether pixel norm / equalized LR are on.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from ganinv_jax.models.pggan import PGGANConfig, abstract_variables
from weights_convert import tables
from weights_convert.safe_load import CheckpointError, Namespace

FORMAT = "pggan-zoo"

# `models/loss_criterions/base_loss_criterions.py`: which losses end G in a tanh.
_GENERATION_ACTIVATION = {"DCGAN": "tanh", "MSE": "tanh", "WGANGP": "linear", "Logistic": "linear"}
# Each loss's `sizeDecisionLayer` (AC-GAN adds `categoryVectorDim` outputs to it).
_DECISION_SIZE = 1


# ----------------------------------------------------------------------------- config


def _config_fields(config: Any, src: str) -> dict[str, Any]:
    if isinstance(config, Namespace):
        return dict(vars(config))
    if isinstance(config, Mapping) and all(isinstance(k, str) for k in config):
        return dict(config)
    raise CheckpointError(f"{src}: 'config' is not a pytorch_GAN_zoo BaseConfig")


def _field(fields: Mapping[str, Any], name: str, kind, src: str):
    """One config field, type-checked (bool is not accepted as a number)."""
    if name not in fields:
        raise CheckpointError(f"{src}: config has no field '{name}'")
    value = fields[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    numeric_bool = isinstance(value, bool) and bool not in kinds
    if numeric_bool or not isinstance(value, kinds):
        raise CheckpointError(f"{src}: config field '{name}' has an unexpected value {value!r}")
    return value


def config_from_zoo(fields: Mapping[str, Any], src: str) -> PGGANConfig:
    """`PGGANConfig` from the zoo's `BaseConfig` fields (`ProgressiveGAN.getNetG/getNetD`)."""
    depth0 = _field(fields, "depthScale0", int, src)
    others = _field(fields, "depthOtherScales", (list, tuple), src)
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in others):
        raise CheckpointError(f"{src}: config field 'depthOtherScales' is not a list of ints")
    loss = _field(fields, "lossCriterion", str, src)
    if loss not in _GENERATION_ACTIVATION:
        raise CheckpointError(f"{src}: config field 'lossCriterion' is unknown: {loss!r}")
    category_dim = fields.get("categoryVectorDim", 0)
    if not isinstance(category_dim, int) or isinstance(category_dim, bool):
        raise CheckpointError(f"{src}: config field 'categoryVectorDim' is not an int")
    alpha = float(_field(fields, "alpha", (int, float), src))
    # Upstream only calls `setNewAlpha(config.alpha)` when there are scales above 4x4, so
    # a 4x4 model always runs with alpha = 0.
    if not others:
        alpha = 0.0
    try:
        return PGGANConfig(
            channels=(depth0, *others),
            z_dim=_field(fields, "latentVectorDim", int, src),
            img_channels=_field(fields, "dimOutput", int, src),
            alpha=alpha,
            leaky_relu=float(_field(fields, "leakyReluLeak", (int, float), src)),
            pixel_norm=_field(fields, "perChannelNormalization", bool, src),
            output_activation=_GENERATION_ACTIVATION[loss],
            equalized_lr=_field(fields, "equalizedlR", bool, src),
            mbstd=_field(fields, "miniBatchStdDev", bool, src),
            decision_dim=_DECISION_SIZE + category_dim,
        )
    except ValueError as e:
        raise CheckpointError(f"{src}: unusable config ({e})") from None


# ----------------------------------------------------------------------------- name tables


def _layer(src: str, dst: str, kind: str) -> list[tables.Rule]:
    """A `ConstrainedLayer`: torch keeps the wrapped layer as `.module` (the He constant is a
    Python float, not stored)."""
    return [
        tables.Rule(f"{src}.module.weight", f"params/{dst}/weight", kind),
        tables.Rule(f"{src}.module.bias", f"params/{dst}/bias"),
    ]


def generator_table(cfg: PGGANConfig) -> tables.Table:
    rules = _layer("formatLayer", "format", "dense") + _layer("groupScale0.0", "b4_conv", "conv")
    for i, r in enumerate(cfg.resolutions[1:]):
        rules += _layer(f"scaleLayers.{i}.0", f"b{r}_conv0", "conv")
        rules += _layer(f"scaleLayers.{i}.1", f"b{r}_conv1", "conv")
    for i, r in enumerate(cfg.resolutions):
        rules += _layer(f"toRGBLayers.{i}", f"b{r}_torgb", "conv")
    return tables.Table(rules=rules, fir={})


def discriminator_table(cfg: PGGANConfig) -> tables.Table:
    rules = _layer("groupScaleZero.0", "b4_conv", "conv")
    rules += _layer("groupScaleZero.1", "b4_fc", "dense")
    rules += _layer("decisionLayer", "decision", "dense")
    for i, r in enumerate(cfg.resolutions[1:]):
        rules += _layer(f"scaleLayers.{i}.0", f"b{r}_conv0", "conv")
        rules += _layer(f"scaleLayers.{i}.1", f"b{r}_conv1", "conv")
    for i, r in enumerate(cfg.resolutions):
        rules += _layer(f"fromRGBLayers.{i}", f"b{r}_fromrgb", "conv")
    return tables.Table(rules=rules, fir={})


# ----------------------------------------------------------------------------- state dicts

_LEGACY_KEY = re.compile(r"^(.*)\.(weight|bias)$")


def _state_dict(obj: Any, where: str) -> dict[str, np.ndarray]:
    """A state_dict of arrays. Old zoo keys without `.module.` (`X.weight`) are renamed to
    `X.module.weight`, as upstream's `loadStateDictCompatible` does when it loads them."""
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise CheckpointError(f"{where}: not a state_dict")
    out: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        if not isinstance(value, np.ndarray):
            raise CheckpointError(f"{where}: entry '{key}' is not a tensor")
        m = _LEGACY_KEY.match(key)
        if m and not m.group(1).endswith(".module"):
            key = f"{m.group(1)}.module.{m.group(2)}"
        if key in out:
            raise CheckpointError(f"{where}: tensor '{key}' appears twice (old and new names)")
        out[key] = value
    return out


def _pick_networks(obj: Mapping, src: str, raw_g: bool, with_d: bool) -> tuple[dict, dict]:
    """{net: source object} and {net: source key}; avgG -> G_ema, netG -> G, netD -> D."""
    if obj.get("avgG") is not None:
        keys = {"G_ema": "avgG"}
    else:
        # Upstream `load_state_dict` then builds avgG as a copy of netG (`buildAvG`).
        keys = {"G_ema": "netG"}
    if raw_g:
        keys["G"] = "netG"
    if with_d:
        if obj.get("netD") is None:
            raise CheckpointError(
                f"{src}: no 'netD' network in this {FORMAT} checkpoint (pass --no-d; "
                "--no-d controls it)"
            )
        keys["D"] = "netD"
    return {net: obj[key] for net, key in keys.items()}, keys


# ----------------------------------------------------------------------------- entry point


def convert_pggan_zoo(
    obj: Any, src: str, raw_g: bool, with_d: bool
) -> tuple[PGGANConfig, dict, dict]:
    """(config, {'G_ema'[, 'G'][, 'D']: variables}, provenance) from `safe_load.load(src)[1]`."""
    # Imported here: `convert` may import this module at its top (format dispatch).
    from weights_convert.convert import apply_table, jsonable, sniff

    if not (isinstance(obj, Mapping) and "config" in obj and obj.get("netG") is not None):
        guess = sniff(obj)
        hint = f"; it looks like --format {guess}" if guess else ""
        raise CheckpointError(f"{src}: not a {FORMAT} checkpoint{hint}")
    fields = _config_fields(obj["config"], src)
    cfg = config_from_zoo(fields, src)
    nets, keys = _pick_networks(obj, src, raw_g, with_d)
    abstract = abstract_variables(cfg, list(nets))
    trees = {}
    for net, sd_obj in nets.items():
        sd = _state_dict(sd_obj, f"{src} [{keys[net]}]")
        table = discriminator_table(cfg) if net == "D" else generator_table(cfg)
        trees[net] = apply_table(sd, table, abstract[net], source=src, net=keys[net])
    prov = {
        "zoo_config": jsonable(fields),
        "networks": dict(keys),
        "alpha": cfg.alpha,
        "output_activation": f"{cfg.output_activation} (lossCriterion={fields['lossCriterion']})",
        "z": f"[N, {cfg.z_dim}] ~ N(0, I), pixel-normalized inside G",
    }
    return cfg, trees, prov
