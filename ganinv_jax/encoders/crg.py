"""Paper 003's CRG encoder: a VGG19-shaped backbone mapped to z (or w).

Backbone: VGG19's conv stack, 3x3 convs + ReLU in stages of (2, 2, 4, 4, 4) convs with widths
(64, 128, 256, 512, 512), a 2x2 max-pool after each stage (paper Fig. 2: "64 filters, doubled to
128 and then to 256 and 512 in the last layers"). `widths` may be scaled down for tests.

Our choices where the paper is silent (it shows a figure, not a layer list):
  * a stage's max-pool is skipped once the map is 4x4, so small generators (16x16, 32x32) keep a
    4x4 map for the head instead of pooling to 1x1;
  * the head is spatial dropout (whole channels, rate 0.5: the paper's "0.5 spatial dropouts")
    -> average pooling down to 4x4 (only for maps larger than that: 1024x1024 inputs end at
    32x32x512) -> flatten -> one dense layer to the latent; VGG19's 4096-wide classifier is not
    used (it classifies, and at 1024x1024 its first layer alone would be 268M weights);
  * He-normal initialization; the paper fine-tunes ImageNet VGG19 weights, which do not ship
    offline here, so the backbone starts random;
  * the head's bias starts at the latent's mean (0 for z, G's w_avg for w; set by
    `ganinv_jax.encoders.init_params`), so E starts at the mean latent.
Images are NHWC in [-1, 1] with 1 or 3 channels.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

VGG19_STAGES = (2, 2, 4, 4, 4)
VGG19_WIDTHS = (64, 128, 256, 512, 512)


class CRGEncoder(nn.Module):
    """images [N, R, R, C] -> latent [N, out_dim]; dropout rng stream 'dropout' when training."""

    out_dim: int
    widths: Sequence[int] = VGG19_WIDTHS
    stages: Sequence[int] = VGG19_STAGES
    dropout: float = 0.5

    @nn.compact
    def __call__(self, img: jax.Array, train: bool = False) -> jax.Array:
        x = img
        for s, (width, n_convs) in enumerate(zip(self.widths, self.stages)):
            for j in range(n_convs):
                x = nn.Conv(
                    width,
                    (3, 3),
                    padding=1,
                    kernel_init=nn.initializers.he_normal(),
                    name=f"conv{s + 1}_{j + 1}",
                )(x)
                x = nn.relu(x)
            if x.shape[1] > 4:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.Dropout(self.dropout, broadcast_dims=(1, 2), deterministic=not train)(x)
        if x.shape[1] > 4:
            f = x.shape[1] // 4
            x = nn.avg_pool(x, (f, f), strides=(f, f))
        x = jnp.reshape(x, (x.shape[0], -1))
        return nn.Dense(self.out_dim, name="head")(x)
