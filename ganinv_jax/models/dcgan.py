"""A small DCGAN backbone for InvGAN (the paper's MNIST ablation backbone), Flax Linen.

G: z -> 2-layer mapping M -> w -> dense 4x4xC0 -> [nearest 2x up, 3x3 conv, lrelu] * k
   -> 3x3 conv -> tanh.  D: [3x3 conv stride 2, lrelu] * k -> 4x4 features -> logits, and
InvGAN's second head (fc -> w). No batch norm: the trainer is purely functional and D's
per-image outputs must not depend on the rest of the batch (the w head is an encoder).

Same calling convention as `stylegan2.Generator/Discriminator`: `G.mapping(z)` -> ws
[N, 1, w_dim], `G.synthesis(ws)` -> images, `D(img, return_features=, return_w=)`,
`D.infer_w(img)`. Only `params` variables (no buffers).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from ganinv_jax.models import layers as L


@dataclasses.dataclass(frozen=True)
class DCGANConfig:
    resolution: int = 32
    channels: tuple[int, ...] = (128, 64, 32)  # widths at 4, 8, ..., resolution / 2
    z_dim: int = 64
    w_dim: int = 64
    img_channels: int = 3
    mapping_layers: int = 2

    def __post_init__(self):
        n = int(math.log2(self.resolution)) - 2
        if self.resolution < 8 or 2 ** (n + 2) != self.resolution:
            raise ValueError(f"resolution must be a power of two >= 8, got {self.resolution}")
        if len(self.channels) != n:
            raise ValueError(
                f"channels needs {n} entries (4..{self.resolution // 2}), got {len(self.channels)}"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DCGANConfig":
        d = dict(d)
        d["channels"] = tuple(d["channels"])
        return cls(**d)


class Generator(nn.Module):
    cfg: DCGANConfig

    def setup(self):
        c = self.cfg
        self.fcs = [
            L.DenseLayer(c.w_dim, activation="lrelu", name=f"mapping_fc{i}")
            for i in range(c.mapping_layers)
        ]
        self.stem = nn.Dense(4 * 4 * c.channels[0], name="stem")
        outs = list(c.channels[1:]) + [c.channels[-1]]
        self.convs = [nn.Conv(o, (3, 3), padding=1, name=f"up{i}") for i, o in enumerate(outs)]
        self.to_img = nn.Conv(c.img_channels, (3, 3), padding=1, name="to_img")

    def mapping(self, z, c=None, truncation_psi=1.0):
        del c, truncation_psi
        x = L.normalize_2nd_moment(z.astype(jnp.float32))
        for fc in self.fcs:
            x = fc(x)
        return x[:, None, :]

    def synthesis(self, ws, noise_mode=None):
        del noise_mode
        w = ws[:, 0]
        x = nn.leaky_relu(self.stem(w), 0.2).reshape(w.shape[0], 4, 4, self.cfg.channels[0])
        for conv in self.convs:
            n, h, wd, ch = x.shape
            x = jax.image.resize(x, (n, 2 * h, 2 * wd, ch), "nearest")
            x = nn.leaky_relu(conv(x), 0.2)
        return jnp.tanh(self.to_img(x))

    def __call__(self, z, c=None, truncation_psi=1.0, noise_mode=None):
        return self.synthesis(self.mapping(z))


class Discriminator(nn.Module):
    cfg: DCGANConfig

    def setup(self):
        c = self.cfg
        ins = list(reversed(c.channels))  # widths at resolution/2, ..., 4
        self.convs = [
            nn.Conv(o, (4, 4), strides=2, padding=1, name=f"down{i}") for i, o in enumerate(ins)
        ]
        self.logit = nn.Dense(1, name="logit")
        self.w_fc = nn.Dense(4 * c.w_dim, name="w_fc")
        self.w_out = nn.Dense(c.w_dim, name="w_out")

    def features(self, img):
        feats, x = [], img.astype(jnp.float32)
        for conv in self.convs:
            x = nn.leaky_relu(conv(x), 0.2)
            feats.append(x)
        return x, feats

    def _w(self, x):
        h = nn.leaky_relu(self.w_fc(x.reshape(x.shape[0], -1)), 0.2)
        return self.w_out(h)

    def infer_w(self, img):
        return self._w(self.features(img)[0])

    def __call__(self, img, c=None, return_features=False, return_w=False):
        x, feats = self.features(img)
        out = (self.logit(x.reshape(x.shape[0], -1)),)
        if return_features:
            out += (feats,)
        if return_w:
            out += (self._w(x),)
        return out[0] if len(out) == 1 else out
