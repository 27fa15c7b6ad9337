"""Architecture inference: a `StyleGAN2Config` from tensor shapes (and NVlabs `_init_kwargs`).

Shapes decide everything they can (widths, resolution, z/w dims, mapping depth, c_dim,
img_channels, architectures); the few hyper-parameters that leave no trace in the tensors
(mapping lr multiplier, conv_clamp, mbstd group size) come from the NVlabs constructor
kwargs when the file has them, else from the upstream defaults, and `config.json` records
which. D shares G's `channels` tuple; a D whose widths differ is rejected.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional

import numpy as np

from ganinv_jax.models.stylegan2 import StyleGAN2Config
from weights_convert.safe_load import CheckpointError


def _count(sd: Mapping[str, np.ndarray], pattern: str) -> int:
    """Number of consecutive i = 0, 1, ... for which `pattern.format(i)` is a key."""
    i = 0
    while pattern.format(i) in sd:
        i += 1
    return i


def _need(sd: Mapping[str, Any], key: str, source: str, what: str) -> np.ndarray:
    if key not in sd:
        raise CheckpointError(f"{source}: missing tensor '{key}' ({what})")
    return sd[key]


def _resolutions_from_blocks(keys, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


# ----------------------------------------------------------------------------- rosinality


def rosinality_config(
    g: Mapping[str, np.ndarray],
    d: Optional[Mapping[str, np.ndarray]],
    source: str,
    lr_mlp: float = 0.01,
) -> StyleGAN2Config:
    n_mlp = 0  # style.0 is PixelNorm; the EqualLinears are style.1 .. style.{n_mlp}
    while f"style.{n_mlp + 1}.weight" in g:
        n_mlp += 1
    if n_mlp == 0:
        raise CheckpointError(
            f"{source}: missing tensor 'style.1.weight' (not a rosinality generator state_dict)"
        )
    w_dim, z_dim = g["style.1.weight"].shape
    const = _need(g, "input.input", source, "constant input")
    n_convs = _count(g, "convs.{}.conv.weight")
    if n_convs % 2:
        raise CheckpointError(f"{source}: missing tensor 'convs.{n_convs}.conv.weight'")
    channels = [int(const.shape[1])]
    channels += [int(g[f"convs.{2 * k}.conv.weight"].shape[1]) for k in range(n_convs // 2)]
    rgb = _need(g, "to_rgb1.conv.weight", source, "first ToRGB")
    mbstd_channels = 1
    if d is not None and "final_conv.0.weight" in d:
        mbstd_channels = int(d["final_conv.0.weight"].shape[1]) - channels[0]
    return StyleGAN2Config(
        resolution=4 * 2 ** (n_convs // 2),
        channels=tuple(channels),
        z_dim=int(z_dim),
        w_dim=int(w_dim),
        c_dim=0,
        img_channels=int(rgb.shape[1]),
        mapping_layers=n_mlp,
        mapping_lr_multiplier=lr_mlp,
        architecture="skip",
        conv_clamp=None,
        fan_in_scale_modconv=True,
        d_architecture="resnet",
        mbstd_group_size=4,
        mbstd_num_channels=max(mbstd_channels, 1),
    )


# ----------------------------------------------------------------------------- NVlabs


def _nv_mapping_dims(sd, prefix: str, source: str) -> dict:
    n = _count(sd, prefix + "fc{}.weight")
    if n == 0:
        raise CheckpointError(f"{source}: missing tensor '{prefix}fc0.weight'")
    fc0_out, fc0_in = sd[f"{prefix}fc0.weight"].shape
    out = dict(
        layers=n,
        w_dim=int(sd[f"{prefix}fc{n - 1}.weight"].shape[0]),
        hidden=int(fc0_out),
        c_dim=0,
        embed=0,
    )
    if f"{prefix}embed.weight" in sd:
        out["embed"], out["c_dim"] = (int(s) for s in sd[f"{prefix}embed.weight"].shape)
    out["z_dim"] = int(fc0_in) - out["embed"]
    return out


def nvlabs_config(
    g: Mapping[str, np.ndarray],
    d: Optional[Mapping[str, np.ndarray]],
    source: str,
    g_kwargs: Optional[Mapping] = None,
    d_kwargs: Optional[Mapping] = None,
    conv_clamp_default: Optional[float] = 256.0,
) -> tuple[StyleGAN2Config, dict]:
    """Returns the config and a dict saying where the shape-less hyper-parameters came from."""
    g_kwargs, d_kwargs = dict(g_kwargs or {}), dict(d_kwargs or {})
    mk = dict(g_kwargs.get("mapping_kwargs") or {})
    sk = dict(g_kwargs.get("synthesis_kwargs") or {})
    if "mapping.fc0.weight" not in g:
        raise CheckpointError(
            f"{source}: missing tensor 'mapping.fc0.weight' (not an NVlabs generator state_dict)"
        )
    m = _nv_mapping_dims(g, "mapping.", source)
    res = _resolutions_from_blocks(g, r"synthesis\.b(\d+)\.")
    if not res or res[0] != 4 or res != [4 * 2**i for i in range(len(res))]:
        raise CheckpointError(f"{source}: synthesis blocks {res} are not 4, 8, ..., 2**k")
    const = _need(g, "synthesis.b4.const", source, "constant input")
    channels = [int(const.shape[0])]
    for r in res[1:]:
        channels.append(int(_need(g, f"synthesis.b{r}.conv1.weight", source, "conv").shape[0]))
    top = res[-1]
    if any(k.startswith(f"synthesis.b{top}.skip.") for k in g):
        arch = "resnet"
    elif top > 4 and "synthesis.b4.torgb.weight" in g:
        arch = "skip"
    else:
        arch = "orig"
    rgb = _need(g, f"synthesis.b{top}.torgb.weight", source, "last ToRGB")
    if "conv_clamp" in sk:
        clamp, clamp_src = sk["conv_clamp"], "G._init_kwargs"
    else:
        clamp, clamp_src = conv_clamp_default, "assumed (train.py always uses 256)"
    cfg = dict(
        resolution=top,
        channels=tuple(channels),
        z_dim=m["z_dim"],
        w_dim=m["w_dim"],
        c_dim=m["c_dim"],
        img_channels=int(rgb.shape[0]),
        mapping_layers=m["layers"],
        mapping_lr_multiplier=float(mk.get("lr_multiplier", 0.01)),
        mapping_layer_features=None
        if m["hidden"] == m["w_dim"] or m["layers"] == 1
        else m["hidden"],
        architecture=arch,
        conv_clamp=None if clamp is None else float(clamp),
        fan_in_scale_modconv=False,
    )
    if "resample_filter" in sk:
        cfg["fir"] = tuple(sk["resample_filter"])
    provenance = {
        "conv_clamp": clamp_src,
        "mapping_lr_multiplier": "G._init_kwargs" if "lr_multiplier" in mk else "default 0.01",
    }
    if d is not None:
        cfg.update(_nvlabs_d_fields(d, d_kwargs, source, channels, top))
        check_d_conditioning(cfg, source)
        d_clamp = d_kwargs.get("conv_clamp", cfg["conv_clamp"])
        if (None if d_clamp is None else float(d_clamp)) != cfg["conv_clamp"]:
            raise CheckpointError(
                f"{source}: D conv_clamp {d_clamp} differs from G's "
                f"{cfg['conv_clamp']} (unsupported)"
            )
    return StyleGAN2Config(**cfg), provenance


def _nvlabs_d_fields(d, d_kwargs, source, g_channels, top) -> dict:
    res = _resolutions_from_blocks(d, r"b(\d+)\.")
    if res != [4 * 2**i for i in range(len(res))] or res[-1] != top:
        raise CheckpointError(f"{source}: D blocks {res} do not match G resolution {top}")
    c4 = int(_need(d, "b4.conv.weight", source, "D epilogue conv").shape[0])
    d_channels = [c4] + [
        int(_need(d, f"b{r}.conv0.weight", source, "D conv").shape[0]) for r in res[1:]
    ]
    if d_channels != list(g_channels):
        raise CheckpointError(
            f"{source}: D widths {d_channels} differ from G widths "
            f"{list(g_channels)} (one shared channels table is supported)"
        )
    if f"b{top}.skip.weight" in d:
        arch = "resnet"
    elif top > 4 and "b4.fromrgb.weight" in d:
        arch = "skip"
    else:
        arch = "orig"
    ek = dict(d_kwargs.get("epilogue_kwargs") or {})
    out = dict(
        d_architecture=arch,
        mbstd_group_size=int(ek.get("mbstd_group_size", 4)),
        mbstd_num_channels=int(d["b4.conv.weight"].shape[1]) - c4,
    )
    if "mapping.embed.weight" in d:
        m = _nv_mapping_dims(d, "mapping.", source)
        cmap = int(d["b4.out.weight"].shape[0])
        out.update(
            d_mapping_layers=m["layers"],
            d_cmap_dim=None if cmap == c4 else cmap,
            _d_c_dim=m["c_dim"],
        )
    else:
        out["_d_c_dim"] = 0
    return out


def check_d_conditioning(cfg_fields: dict, source: str) -> dict:
    """Pop the D's own c_dim (internal key) and require it to equal G's."""
    d_c = cfg_fields.pop("_d_c_dim", None)
    if d_c is not None and d_c != cfg_fields.get("c_dim", 0):
        raise CheckpointError(f"{source}: D c_dim {d_c} differs from G c_dim {cfg_fields['c_dim']}")
    return cfg_fields
