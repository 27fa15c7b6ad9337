"""Paper 000's adaptive encoder for PGGAN (z) and BigGAN (z and class vector).

Both keep the StyleGAN2 encoder's trunk (`encoders.adaptive`: one block per generator resolution,
full resolution down to 4x4, equalized-LR convs and FCs, the 0.111 / 0.889 residual mix, a 1x1
from-RGB conv) and drop what only StyleGAN has (paper Sec. 3.1, Fig. 4 caption): no style FCs
(no w') and no learnable noise (no z_n'). A block is

    h  = LReLU(norm(x)  -> conv3x3 (C -> C)  + bias)
    h2 = LReLU(norm(h)  -> conv3x3 (C -> C') + bias) -> avg-pool 2x2
    x' = 0.111 h2 + 0.889 avg_pool(x) [-> 1x1 conv when C != C']

and the 4x4 block has one conv (to G's 4x4 width); its activation is z_c, the 4x4 feature the
fine-tuning cycle loss compares. The last block then ends in FC heads instead of a conv:

PGGAN (`PGGANEncoder`): norm = instance norm (no affine), as the StyleGAN2 encoder;
    z = FC(C*4*4 -> z_dim)(flatten(z_c))   (paper: FC(512*4*4, 512); its appendix writes
    1024*4*4, but the 4x4 feature has 512 channels and the public code's FC is 512*16 -> 512).

BigGAN (`BigGANEncoder`): norm = conditional BN, heads (paper Table 10, public code `E_BIG.py`)
    c' = FC(C*4*4 -> 2 z_dim)(flatten(z_c))     BigGAN's condition vector concat(z, embed(class))
    z  = FC(2 z_dim -> z_dim)(c')                 (256 and 128 for BigGAN-deep)
and, ours, logits = FC(2 z_dim -> num_classes)(c'); class = softmax(logits). The public code
renders G(z', true label) and uses c' in a latent loss only; to be a BigGAN latent by itself the
encoder must predict the class, so it reads it off c' (whose embed half is a function of the
class). The output is concat(z, class) [z_dim + num_classes], `inversion.arch.BigGANArch`'s
latent, whose class part is a probability vector (one-hot for G's samples). The public code
keeps the learnable noise in its BigGAN blocks; the paper removes it, and so do we.

What the conditional BN is conditioned on: the paper's CBN "requires the label vector as input"
(Table 10), and the public code passes every CBN of E the condition vector built from the true
label, concat(z, embed(label)), so its encodings start from the answer. Here the encoder
conditions on its own estimate of that same vector, from a first pass:

    pass 1:  c'_0 = heads(trunk(x; cond = 0))     cond = 0 makes every CBN its plain norm
    pass 2:  (c', z, class) = heads(trunk(x; cond = c'_0))

The two passes share every weight; the gradient flows through c'_0 (end to end, so pass 1 is
trained to give a useful condition). Why this over an unconditional BN: it keeps what the paper
credits for its BigGAN results ("layer-wise label vectors c" in every block, Sec. 4.2) -- each
block's normalization modulated by the image's class and z -- while E's forward takes images
only. The price is two trunk passes per encoding.

CBN here is BigGAN's `(x - mean) / std * (1 + W_s c) + W_o c` (bias-free scale and offset maps
of the condition, equalized-LR instead of spectral norm, as every layer of this encoder) with
per-image statistics (instance norm, eps 1e-8) instead of batch statistics: an encoding must not
depend on which other images share its batch, the params tree stays parameters only (no running
statistics to thread through training and checkpoints), and the public code's CBN never used
batch statistics either (it normalizes by frozen buffers, mean 0 and variance 1).
"""

from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ganinv_jax.encoders.adaptive import RESIDUAL_MIX, instance_norm, lrelu
from ganinv_jax.models import layers as L


class ConditionalNorm(nn.Module):
    """BigGAN's conditional BN on per-image statistics: IN(x) * (1 + W_s c) + W_o c."""

    @nn.compact
    def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = L.DenseLayer(c, use_bias=False, name="scale")(cond)
        offset = L.DenseLayer(c, use_bias=False, name="offset")(cond)
        return instance_norm(x) * (1.0 + scale[:, None, None, :]) + offset[:, None, None, :]


class NormConv(nn.Module):
    """norm -> equalized conv3x3 + bias -> LReLU(0.2); norm is IN, or CBN given `cond`."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array, cond: Optional[jax.Array]) -> jax.Array:
        h = instance_norm(x) if cond is None else ConditionalNorm(name="norm")(x, cond)
        return lrelu(L.ConvLayer(self.features, 3, name="conv")(h))


class ZBlock(nn.Module):
    """One adaptive block without styles or noise; see the module docstring."""

    out_features: int
    last: bool = False  # the 4x4 block: one conv, no downsampling, no bypass

    @nn.compact
    def __call__(self, x: jax.Array, cond: Optional[jax.Array] = None) -> jax.Array:
        c = x.shape[-1]
        h = NormConv(self.out_features if self.last else c, name="conv1")(x, cond)
        if self.last:
            return h
        h = NormConv(self.out_features, name="conv2")(h, cond)
        h = nn.avg_pool(h, (2, 2), strides=(2, 2))
        bypass = nn.avg_pool(x, (2, 2), strides=(2, 2))
        if c != self.out_features:
            bypass = L.ConvLayer(self.out_features, 1, name="bypass")(bypass)
        return RESIDUAL_MIX[0] * h + RESIDUAL_MIX[1] * bypass


class ZTrunk(nn.Module):
    """images [N, R, R, C] -> z_c [N, 4, 4, channels[-1]]: from-RGB and the blocks.

    channels: output width of each block, full resolution first (len = log2(R) - 1); the first
    block's input width is `in_channels` (default channels[0] // 2). The 4x4 block's one conv
    maps to channels[-1], G's 4x4 width, which the heads read (the StyleGAN2 encoder keeps its
    input width there; the two agree when G's 8x8 and 4x4 widths do, as in Tables 9 and 10).
    `cond` [N, D] switches every norm to the conditional one (BigGAN)."""

    channels: Sequence[int]
    in_channels: int = 0

    @nn.compact
    def __call__(self, img: jax.Array, cond: Optional[jax.Array] = None) -> jax.Array:
        n_blocks = len(self.channels)
        size = 4 * 2 ** (n_blocks - 1)
        if img.shape[1] != size or img.shape[2] != size:
            raise ValueError(
                f"adaptive encoder with {n_blocks} blocks wants {size}x{size} images, "
                f"got {img.shape}"
            )
        cin = self.in_channels or max(1, self.channels[0] // 2)
        x = L.ConvLayer(cin, 1, activation="lrelu", name="from_rgb")(img)
        for i, cout in enumerate(self.channels):
            x = ZBlock(cout, last=i == n_blocks - 1, name=f"b{i}")(x, cond)
        return x


def flatten(x: jax.Array) -> jax.Array:
    return jnp.reshape(x, (x.shape[0], -1))


class PGGANEncoder(nn.Module):
    """images [N, R, R, C] in [-1, 1] -> (z [N, z_dim], z_c [N, 4, 4, C])."""

    channels: Sequence[int]
    z_dim: int
    in_channels: int = 0

    @nn.compact
    def __call__(self, img: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        del train  # no noise, no dropout: training and evaluation are the same function
        zc = ZTrunk(self.channels, self.in_channels, name="trunk")(img)
        return L.DenseLayer(self.z_dim, name="z")(flatten(zc)), zc


class BigGANEncoder(nn.Module):
    """images [N, R, R, 3] in [-1, 1] -> (concat(z, class vector) [N, z_dim + num_classes],
    z_c [N, 4, 4, C]). Images only: the class is predicted, never given (module docstring)."""

    channels: Sequence[int]
    z_dim: int
    num_classes: int
    in_channels: int = 0

    @nn.compact
    def __call__(self, img: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        del train  # no noise, no dropout
        trunk = ZTrunk(self.channels, self.in_channels, name="trunk")
        cond_head = L.DenseLayer(2 * self.z_dim, name="cond")  # c', BigGAN's 256-d condition
        # pass 1: cond = 0 turns every CBN into its plain IN, giving the first estimate of c'
        cond0 = cond_head(flatten(trunk(img, jnp.zeros((img.shape[0], 2 * self.z_dim)))))
        zc = trunk(img, cond0)  # pass 2: the same weights, conditioned on E's own c'
        cond = cond_head(flatten(zc))
        z = L.DenseLayer(self.z_dim, name="z")(cond)
        logits = L.DenseLayer(self.num_classes, name="logits")(cond)
        return jnp.concatenate([z, jax.nn.softmax(logits, axis=-1)], axis=-1), zc
