"""Paper 000's adaptive encoder for StyleGAN2: W+ codes from each block's feature statistics.

One block per generator block, run from full resolution down to 4x4 (paper Fig. 4, Table 9):

    style1 = FC([mean_hw(x), std_hw(x)])                   one w of W+ (equalized-LR 2C -> w_dim)
    h  = LReLU(IN(x) -> conv3x3 (C -> C) + noise + bias)   learnable per-channel noise, zero-init
    style2 = FC([mean_hw(h), std_hw(h)])                   the second w
    h2 = LReLU(IN(h) -> conv3x3 (C -> C') + noise + bias) -> avg-pool 2x2
    x' = 0.111 h2 + 0.889 avg_pool(x) [-> 1x1 conv when C != C']   residual bypass (public code)

The 4x4 block has the first conv only (Table 9's last row is FC(2C, w_dim) after one CONV, as in
the public code's `has_last_conv=False`); its activation is z_c', the 4x4 feature the fine-tuning
cycle loss compares. Every conv and FC is equalized-LR (`models.layers.ConvLayer`/`DenseLayer`).
IN is instance norm without affine (eps 1e-8); LReLU slope 0.2 without StyleGAN's sqrt(2) gain
(the public code's F.leaky_relu; IN follows every activation anyway). A 1x1 equalized conv with
LReLU maps the image to the first block's width (Table 9's footnote CONV(3, C_in, 1)).

The blocks emit (style1, style2) from full resolution down, so the codes are reversed to G's
order (ws[0] drives G's 4x4 layer). Noise is random in training (rng stream 'noise') and off in
evaluation, so an encoding is deterministic (the zero-mean noise dropped, as dropout is at test
time).

Widths (`channels`): the output width of each block, full resolution first. Table 9 is G's own
channel list read backwards (256x256 StyleGAN2: block 1 is CONV(64, 64), CONV(64, 128), block 2
CONV(128, 128), CONV(128, 256), ... capped at 512); the first block's input is half its output.
`ganinv_jax.encoders.config_for_generator` derives them from the generator being inverted.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ganinv_jax.models import layers as L

# The public code's residual mix: x = 0.111 * block(x) + 0.889 * bypass(x).
RESIDUAL_MIX = (0.111, 0.889)


def feature_stats(x: jax.Array) -> jax.Array:
    """[N, H, W, C] -> [N, 2C]: per-channel spatial mean and (population) std."""
    mean = jnp.mean(x, axis=(1, 2))
    std = jnp.sqrt(jnp.mean(jnp.square(x - mean[:, None, None, :]), axis=(1, 2)) + 1e-8)
    return jnp.concatenate([mean, std], axis=-1)


def instance_norm(x: jax.Array, eps: float = 1e-8) -> jax.Array:
    """InstanceNorm2d(affine=False): per image and channel over H, W."""
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


def lrelu(x: jax.Array) -> jax.Array:
    return jnp.where(x >= 0, x, 0.2 * x)


class NoisyConv(nn.Module):
    """IN -> equalized conv3x3 (no bias) -> + weight_c * noise -> + bias -> LReLU(0.2)."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        h = L.ConvLayer(self.features, 3, use_bias=False, name="conv")(instance_norm(x))
        noise_weight = self.param("noise_weight", nn.initializers.zeros, (self.features,))
        if train:
            noise = jax.random.normal(self.make_rng("noise"), h.shape[:3] + (1,), h.dtype)
            h = h + noise * noise_weight
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return lrelu(h + bias)


class AdaptiveBlock(nn.Module):
    """One encoder block: two styles from feature statistics; see the module docstring."""

    out_features: int
    w_dim: int
    last: bool = False  # the 4x4 block: one conv, no downsampling, no bypass

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x [N, H, W, C] -> (next x, style1 [N, w_dim], style2 [N, w_dim])."""
        c = x.shape[-1]
        style1 = L.DenseLayer(self.w_dim, name="style1")(feature_stats(x))
        h = NoisyConv(c, name="conv1")(x, train)
        style2 = L.DenseLayer(self.w_dim, name="style2")(feature_stats(h))
        if self.last:
            return h, style1, style2
        h = NoisyConv(self.out_features, name="conv2")(h, train)
        h = nn.avg_pool(h, (2, 2), strides=(2, 2))
        bypass = nn.avg_pool(x, (2, 2), strides=(2, 2))
        if c != self.out_features:
            bypass = L.ConvLayer(self.out_features, 1, name="bypass")(bypass)
        return RESIDUAL_MIX[0] * h + RESIDUAL_MIX[1] * bypass, style1, style2


class AdaptiveEncoder(nn.Module):
    """images [N, R, R, C] in [-1, 1] -> (ws [N, num_ws, w_dim] in G's order, z_c [N, 4, 4, C]).

    channels: output width of each block, full resolution first (len = log2(R) - 1, so
    num_ws = 2 len(channels), StyleGAN2's count); the first block's input width is
    `in_channels` (default channels[0] // 2, as in Table 9).
    """

    channels: Sequence[int]
    w_dim: int
    in_channels: int = 0

    @nn.compact
    def __call__(self, img: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        n_blocks = len(self.channels)
        if img.shape[1] != 4 * 2 ** (n_blocks - 1) or img.shape[1] != img.shape[2]:
            raise ValueError(
                f"adaptive encoder with {n_blocks} blocks wants "
                f"{4 * 2 ** (n_blocks - 1)}x{4 * 2 ** (n_blocks - 1)} images, got {img.shape}"
            )
        cin = self.in_channels or max(1, self.channels[0] // 2)
        x = L.ConvLayer(cin, 1, activation="lrelu", name="from_rgb")(img)
        styles = []
        for i, cout in enumerate(self.channels):
            last = i == n_blocks - 1
            x, s1, s2 = AdaptiveBlock(cout, self.w_dim, last=last, name=f"b{i}")(x, train)
            styles += [s1, s2]
        ws = jnp.stack(styles[::-1], axis=1)  # encoder order (full res first) -> G's order
        return ws, x
