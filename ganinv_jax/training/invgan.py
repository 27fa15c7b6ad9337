"""InvGAN (paper 004): a GAN whose discriminator also inverts the generator.

G = synthesis o mapping M; D returns real/fake logits, its block features f(x), and an inferred
latent w~ = D_w(x) from a second head. One train step updates G (with M) and D once each:

  G batch  = [w = M(z) (prior half) ; sg(w_R)] with w_R = D_w(x_real) (real half),
             i.e. G sees latents of real images, but its adversarial loss does not train D_w.
  G loss   = softplus(-D(G(w_total)))                       non-saturating GAN loss
           + lat * |sg(w_total) - D_w(G(w_total))|^2        latent reconstruction (both halves)
           + fm  * |f(x_real) - f(G(w_R))|^2                feature matching; here w_R is NOT
                                                            stopped, so G's gradient trains D_w
           + mmd * MMD_rbf(M(z), w_R)                       prior vs inferred latents (M and D_w)
  D loss   = softplus(D(G(.))) + softplus(-D(x_real))       logistic loss on sg(fakes)
           + lat * |sg(w_total) - D_w(sg(G(w_total)))|^2    the w head learns to invert G
           + lazy R1 on reals (every `r1_interval` steps, gain = interval)
  D's gradient is the sum of its own loss and of the fm/mmd terms through w_R (the paper's
  "+": both optimizations run simultaneously, from the same parameters).

Feature matching is per pair (mean over images of the squared feature difference), the
reconstruction reading of Eq. 2 -- the paper motivates it as pairing x with G(D_w(x)); f uses
a stop-gradient copy of D so D cannot shrink its features to cheat. Latent distances are
means over w's elements (scale-free in w_dim).

Ablations (`config.variant`, paper Sec. 4.4):
  'naive'      all of G's batch from the prior; GAN + latent reconstruction only;
  'aug_naive'  + the real half (sg(w_R)) with latent reconstruction over both halves;
  'full'       + feature matching (gradient into D_w) + MMD.

Randomness: z of step s is drawn from fold_in(seed, s); batches are `batch_indices(seed, s)`;
with patch training the crop offsets are `patch_offsets(seed, s, ...)`; so a resumed run equals
the uninterrupted one, for any device count.

Tiling (paper Sec. 4.3): the paper trains on random 32x32 patches of ImageNet images and inverts
an (mn)x(mn) image as n^2 independent latents of the m x m model (`tiled_invert`; the invert job:
`ganinv_jax.jobs.tiling`). `config.data.patch = k` (k >= 2; 0 = off) trains that way: real
images are loaded at k*m px and each example of each step is a uniformly random m x m crop of
its image (any offset, not only the tile grid), so the model sees the statistics of tiles of
k*m images; evaluation then adds the tiled reconstruction MAE of k*m test images.

Run (task `train_invgan` of the one entry point, multi-host flags included):
    python -m ganinv_jax.main --config=configs/invgan_fashion_mnist.py --workdir=/work/runs/fm
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Callable, NamedTuple, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from ganinv_jax import atomic, checkpointing
from ganinv_jax import data as data_lib
from ganinv_jax import sharding as shd
from ganinv_jax.data import images as image_io
from ganinv_jax.data.images import from_tiles, to_tiles  # noqa: F401 -- this module's API too
from ganinv_jax.errors import UserError
from ganinv_jax.losses import common as losses_common
from ganinv_jax.losses import gan as losses_gan
from ganinv_jax.losses import mmd as losses_mmd
from ganinv_jax.models import stylegan2
from ganinv_jax.training import loop as loop_lib
from ganinv_jax.training import state as state_lib

sg = jax.lax.stop_gradient

VARIANTS = {  # variant -> (real half in G's batch, feature matching, MMD)
    "naive": (False, False, False),
    "aug_naive": (True, False, False),
    "full": (True, True, True),
}


# ----------------------------------------------------------------------------- losses
# The shared definitions (ganinv_jax.losses): unbiased multi-bandwidth RBF MMD^2, R1, and
# StyleGAN2's lazy-regularization helpers.
mmd_rbf = losses_mmd.mmd_rbf
r1_penalty = losses_gan.r1_penalty


# ----------------------------------------------------------------------------- backbones


class Nets(NamedTuple):
    """Pure functions over param trees; the trainer never sees module objects."""

    g_init: Callable  # key -> {'params', 'buffers'}
    d_init: Callable  # key -> {'params'}
    mapping: Callable  # (g_vars, z) -> w [N, w_dim]
    synthesis: Callable  # (g_vars, w [N, w_dim]) -> images [N, H, W, C] in [-1, 1]
    discriminate: Callable  # (d_params, images) -> (logits [N], feats list, w~ [N, w_dim])
    logits: Callable  # (d_params, images) -> logits [N]
    infer_w: Callable  # (d_params, images) -> w~ [N, w_dim]
    z_dim: int
    w_dim: int
    resolution: int
    channels: int
    model_config: Any


def model_config_from(config) -> Any:
    if config.backbone == "stylegan2":
        m = dict(config.model)
        m["channels"] = tuple(m["channels"])
        m["d_w_head"] = True
        return stylegan2.StyleGAN2Config(**m)
    if config.backbone == "dcgan":
        from ganinv_jax.models import dcgan

        m = dict(config.dcgan)
        m["channels"] = tuple(m["channels"])
        return dcgan.DCGANConfig(**m)
    raise UserError(f"unknown backbone {config.backbone!r} (stylegan2 | dcgan)")


def make_nets(config) -> Nets:
    mcfg = model_config_from(config)
    if config.backbone == "stylegan2":
        G, D = stylegan2.Generator(mcfg), stylegan2.Discriminator(mcfg)
        num_ws = mcfg.num_ws
        noise_mode = config.get("noise_mode", "const")
    else:
        from ganinv_jax.models import dcgan

        G, D = dcgan.Generator(mcfg), dcgan.Discriminator(mcfg)
        num_ws, noise_mode = 1, None
    res, ch = mcfg.resolution, mcfg.img_channels

    def g_init(key):
        v = G.init({"params": key}, jnp.zeros((2, mcfg.z_dim)))
        return {"params": v["params"], "buffers": v.get("buffers", {})}

    def d_init(key):
        return {
            "params": D.init({"params": key}, jnp.zeros((2, res, res, ch)), return_w=True)["params"]
        }

    def mapping(g_vars, z):
        return G.apply(g_vars, z, method="mapping")[:, 0]

    def synthesis(g_vars, w):
        ws = jnp.broadcast_to(w[:, None, :], (w.shape[0], num_ws, w.shape[-1]))
        if noise_mode is None:
            return G.apply(g_vars, ws, method="synthesis")
        return G.apply(g_vars, ws, noise_mode=noise_mode, method="synthesis")

    def discriminate(d_params, img):
        logits, feats, w = D.apply({"params": d_params}, img, return_features=True, return_w=True)
        return logits[:, 0], feats, w

    def logits(d_params, img):
        return D.apply({"params": d_params}, img)[:, 0]

    def infer_w(d_params, img):
        return D.apply({"params": d_params}, img, method="infer_w")

    return Nets(
        g_init,
        d_init,
        mapping,
        synthesis,
        discriminate,
        logits,
        infer_w,
        mcfg.z_dim,
        mcfg.w_dim,
        res,
        ch,
        mcfg,
    )


# ----------------------------------------------------------------------------- state


@flax.struct.dataclass
class InvGANState:
    step: jax.Array  # int32 scalar: steps done
    g: Any  # {'params', 'buffers'} (buffers: constant noise, w_avg)
    d: Any  # D params (incl. the w head)
    g_ema: Any  # EMA of g['params']
    opt_g: Any
    opt_d: Any


def make_optimizers(config):
    b1, b2 = config.adam_betas
    tx_g = optax.adam(config.lr_g, b1=b1, b2=b2, eps=1e-8)
    # Lazy R1 (StyleGAN2 Sec. 4.1): D's Adam uses lr * c, betas ** c with c = k / (k + 1).
    lr_d, (b1_d, b2_d) = losses_gan.lazy_adam_hparams(config.lr_d, (b1, b2), config.r1_interval)
    tx_d = optax.adam(lr_d, b1=b1_d, b2=b2_d, eps=1e-8)
    return tx_g, tx_d


def init_state(config, nets: Nets, key) -> InvGANState:
    kg, kd = jax.random.split(key)
    g = nets.g_init(kg)
    d = nets.d_init(kd)["params"]
    tx_g, tx_d = make_optimizers(config)
    return InvGANState(
        step=jnp.zeros((), jnp.int32),
        g=g,
        d=d,
        g_ema=jax.tree_util.tree_map(jnp.copy, g["params"]),
        opt_g=tx_g.init(g["params"]),
        opt_d=tx_d.init(d),
    )


# ----------------------------------------------------------------------------- step


def _mse(a, b):
    return jnp.mean(jnp.square(a - b))


def mmd_sigmas(config, w_dim):
    # w's elements are O(1), so |w - w'|^2 ~ w_dim; scale the bandwidths with sqrt(w_dim).
    return tuple(float(s) * math.sqrt(w_dim) for s in config.mmd_sigmas)


def g_phase_loss(g_params, d_params, g_buffers, reals, z, config, nets: Nets):
    """Loss of G and M, plus D's fm/MMD terms through w_R = D_w(x_real). -> (loss, aux)."""
    real_half, use_fm, use_mmd = VARIANTS[config.variant]
    g_vars = {"params": g_params, "buffers": g_buffers}
    d_sg = sg(d_params)
    B = reals.shape[0]
    h = B // 2 if real_half else 0
    w_prior = nets.mapping(g_vars, z[: B - h])
    w_in, w_target = [w_prior], [sg(w_prior)]
    if h:
        x_r = reals[:h]
        w_r = nets.infer_w(d_params, x_r)  # live D: fm/MMD train D_w
        w_in.append(sg(w_r))
        w_target.append(sg(w_r))
        if use_fm:
            w_in.append(w_r)
    imgs = nets.synthesis(g_vars, jnp.concatenate(w_in))
    fakes, w_target = imgs[:B], jnp.concatenate(w_target)
    logits, _, w_rec = nets.discriminate(d_sg, fakes)
    adv = jnp.mean(losses_gan.g_nonsaturating_loss(logits))
    lat = _mse(w_rec, w_target)
    loss = adv + config.w_lat * lat
    aux = {"g_adv": adv, "g_lat": lat}
    if h and use_fm:
        _, f_real, _ = nets.discriminate(d_sg, x_r)
        _, f_rec, _ = nets.discriminate(d_sg, imgs[B:])
        fm = sum(_mse(a, sg(b)) for a, b in zip(f_rec, f_real)) / len(f_real)
        loss = loss + config.w_fm * fm
        aux["fm"] = fm
        aux["rec_mae_train"] = jnp.mean(jnp.abs(sg(imgs[B:]) - x_r))
    if h and use_mmd:
        mmd = mmd_rbf(w_prior, w_r, mmd_sigmas(config, nets.w_dim))
        loss = loss + config.w_mmd * mmd
        aux["mmd"] = mmd
    aux["g_loss"] = loss
    return loss, (sg(fakes), w_target, sg(w_prior), aux)


def d_phase_loss(d_params, reals, fakes, w_target, do_r1, config, nets: Nets):
    logits_f, _, w_rec = nets.discriminate(d_params, fakes)
    logits_r = nets.logits(d_params, reals)
    adv = jnp.mean(losses_gan.d_logistic_loss(logits_r, logits_f))  # equal batch sizes
    lat = _mse(w_rec, w_target)
    gain = losses_gan.lazy_reg_gain(config.r1_interval)
    r1 = jax.lax.cond(
        do_r1,
        lambda x: jnp.mean(r1_penalty(lambda y: nets.logits(d_params, y), x)),
        lambda x: jnp.zeros((), jnp.float32),
        reals,
    )
    loss = adv + config.w_lat * lat + gain * 0.5 * config.r1_gamma * r1
    return loss, {
        "d_adv": adv,
        "d_lat": lat,
        "r1": r1,
        "d_loss": loss,
        "d_real": jnp.mean(logits_r),
        "d_fake": jnp.mean(logits_f),
    }


def train_step(state: InvGANState, reals, config, nets: Nets):
    """One InvGAN step on a (global, possibly sharded) batch of reals in [-1, 1]."""
    B = reals.shape[0]
    key = jax.random.fold_in(jax.random.key(config.seed), state.step)
    z = jax.random.normal(key, (B, nets.z_dim), jnp.float32)
    (_, (fakes, w_target, w_prior, aux_g)), (gg, gd_aux) = jax.value_and_grad(
        g_phase_loss, argnums=(0, 1), has_aux=True
    )(state.g["params"], state.d, state.g["buffers"], reals, z, config, nets)
    do_r1 = losses_gan.lazy_reg_active(state.step, config.r1_interval)
    (_, aux_d), gd = jax.value_and_grad(d_phase_loss, has_aux=True)(
        state.d, reals, fakes, w_target, do_r1, config, nets
    )
    gd = jax.tree_util.tree_map(jnp.add, gd, gd_aux)
    tx_g, tx_d = make_optimizers(config)
    upd_g, opt_g = tx_g.update(gg, state.opt_g, state.g["params"])
    upd_d, opt_d = tx_d.update(gd, state.opt_d, state.d)
    g_params = optax.apply_updates(state.g["params"], upd_g)
    d_params = optax.apply_updates(state.d, upd_d)
    # G EMA with StyleGAN2-ADA's half-life (ema_kimg) and ramp-up.
    nimg = (state.step + 1).astype(jnp.float32) * B
    ema_nimg = config.ema_kimg * 1000.0
    if config.ema_rampup:
        ema_nimg = jnp.minimum(ema_nimg, nimg * config.ema_rampup)
    beta = 0.5 ** (B / jnp.maximum(ema_nimg, 1e-8))
    g_ema = jax.tree_util.tree_map(lambda e, p: p + beta * (e - p), state.g_ema, g_params)
    buffers = state.g["buffers"]
    if "mapping" in buffers and "w_avg" in buffers["mapping"]:
        w_avg = buffers["mapping"]["w_avg"]
        w_avg = jnp.mean(w_prior, 0) + config.w_avg_beta * (w_avg - jnp.mean(w_prior, 0))
        buffers = (
            flax.core.copy(buffers, {"mapping": {**buffers["mapping"], "w_avg": w_avg}})
            if isinstance(buffers, flax.core.FrozenDict)
            else {**buffers, "mapping": {**buffers["mapping"], "w_avg": w_avg}}
        )
    finite = losses_common.tree_all_finite((gg, gd, aux_g, aux_d))
    new = InvGANState(
        step=state.step + 1,
        g={"params": g_params, "buffers": buffers},
        d=d_params,
        g_ema=g_ema,
        opt_g=opt_g,
        opt_d=opt_d,
    )
    metrics = {**aux_g, **aux_d, "finite": finite.astype(jnp.float32)}
    return new, metrics


_JIT_CACHE: dict = {}


# Config fields the step function never reads (the loop's and evaluation's business).
_NOT_IN_STEP = (
    "num_train_steps",
    "log_every",
    "checkpoint_every",
    "sample_every",
    "max_to_keep",
    "eval_at_end",
    "num_eval",
    "num_devices",
    "init_from",
    "task",
    "export",
    "ablation",
)


def _config_key(config) -> str:
    d = {k: v for k, v in config.to_dict().items() if k not in _NOT_IN_STEP}
    return json.dumps(d, sort_keys=True, default=str)


def jit_train_step(config, nets: Nets, state_shardings, mesh):
    """The jitted step, cached per (config, mesh) so repeated runs in one process (resume,
    tests) reuse one compilation."""
    key = (_config_key(config), mesh)
    if key not in _JIT_CACHE:
        step = functools.partial(train_step, config=config, nets=nets)
        _JIT_CACHE[key] = jax.jit(
            step,
            in_shardings=(state_shardings, shd.batch_sharding(mesh)),
            out_shardings=(state_shardings, shd.replicated(mesh)),
            donate_argnums=0,
        )
    return _JIT_CACHE[key]


# ----------------------------------------------------------------------------- inference


def ema_vars(state: InvGANState):
    return {"params": state.g_ema, "buffers": state.g["buffers"]}


def reconstruct(nets: Nets, g_vars, d_params, images, batch_size: int = 256):
    """x -> G(D_w(x)) in batches. Returns (ws [N, w_dim], recons [N, H, W, C])."""
    enc = jax.jit(nets.infer_w)
    dec = jax.jit(nets.synthesis)
    ws, recs = [], []
    for i in range(0, images.shape[0], batch_size):
        w = enc(d_params, jnp.asarray(images[i : i + batch_size]))
        ws.append(np.asarray(w))
        recs.append(np.asarray(dec(g_vars, w)))
    return np.concatenate(ws), np.concatenate(recs)


def tiled_invert(nets: Nets, g_vars, d_params, image):
    """Invert an (mn)^2 image as n^2 independent latents of the m^2 model (paper Sec. 3.3).

    Returns (ws [n*n, w_dim], reconstruction [mn, mn, C])."""
    tiles = to_tiles(jnp.asarray(image), nets.resolution)
    ws = nets.infer_w(d_params, tiles)
    return ws, from_tiles(nets.synthesis(g_vars, ws))


def test_reconstruction_mae(nets, g_vars, d_params, images, batch_size=256):
    """Per-pixel per-channel MAE of G(D_w(x)) on [-1, 1] images (paper Table 1)."""
    _, recs = reconstruct(nets, g_vars, d_params, images, batch_size)
    return float(np.mean(np.abs(recs - np.asarray(images))))


def time_per_latent(nets, d_params, images, batch_size=256, repeats=3):
    """Seconds per inferred latent for D_w alone (compiled; best of `repeats`)."""
    enc = jax.jit(nets.infer_w)
    x = jnp.asarray(images[:batch_size])
    enc(d_params, x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        enc(d_params, x).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return best / x.shape[0]


# ----------------------------------------------------------------------------- data


MAX_PATCH = 64  # data.patch above this is a typo, not a plan (64 x 32 px = 2048 px images)
_PATCH_STREAM = 0x7A7C4  # keeps the crop offsets' random stream apart from batch_indices'


def patch_factor(config) -> int:
    """config.data.patch as k: 0 (or 1) = whole images; k >= 2 = random m x m crops of
    k*m-px images. Configs without the key (e.g. the encoder's) mean 0."""
    k = int(config.data.get("patch", 0) or 0)
    if not 0 <= k <= MAX_PATCH:
        raise UserError(
            f"config.data.patch={k}: want 0 (off) or a factor 2..{MAX_PATCH} (train on random "
            f"data.resolution-px crops of images loaded at patch x data.resolution px)"
        )
    return k if k >= 2 else 0


def patch_offsets(seed: int, step: int, batch_size: int, full: int, size: int) -> np.ndarray:
    """(top, left) [batch_size, 2] of the crops of global batch `step`: uniform in
    [0, full - size], a pure function of (seed, step, position in the global batch), so every
    process count and a resumed run cut the same patches."""
    rng = np.random.default_rng([int(seed), int(step), _PATCH_STREAM])
    return rng.integers(0, full - size + 1, size=(batch_size, 2))


@dataclasses.dataclass(frozen=True)
class PatchSource:
    """A `data.ArraySource` of k*m-px uint8 images whose batches are random m x m crops
    (`size` = m): the same rows as the base's batches, each cut at `patch_offsets`."""

    base: data_lib.ArraySource
    size: int

    def __len__(self):
        return len(self.base)

    def local_batch(
        self, seed: int, step: int, global_batch_size: int, process_index=0, process_count=1
    ) -> np.ndarray:
        big = self.base.local_batch(seed, step, global_batch_size, process_index, process_count)
        offsets = patch_offsets(seed, step, global_batch_size, big.shape[1], self.size)
        mine = offsets[data_lib.local_batch_slice(global_batch_size, process_index, process_count)]
        return image_io.crop_patches(big, mine, self.size)


def resize_uint8(images: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 [N, h, h, C] -> [N, resolution, resolution, C] through the one image I/O layer."""
    pre = image_io.Preprocess(resolution, images.shape[-1])
    return np.stack([image_io.to_uint8(image_io.prepare_array(x, pre)) for x in images])


def _fmnist(config, split: str, resolution: int, limit: Optional[int], grow: bool) -> np.ndarray:
    """The first `limit` images of a Fashion-MNIST split, uint8 at `resolution`. `grow` (patch
    training's k*m-px images): above 32 px the padded 32-px image is resized (LANCZOS), so a
    larger image is a larger garment rather than a wider black border; otherwise as always
    (padded, box-averaged below 32 px)."""
    d = config.data
    grow = grow and resolution > 32
    imgs = data_lib.load_fashion_mnist(
        split, d.get("dir", data_lib.DEFAULT_DIR), 32 if grow else resolution, d.channels
    )
    imgs = imgs[:limit] if limit else imgs
    return resize_uint8(imgs, resolution) if grow else imgs


def load_train_source(config):
    """The training images as a `data.ArraySource` at data.resolution (= G's m); with
    `data.patch = k` a `PatchSource` of random m x m crops of images loaded at k*m px."""
    d = config.data
    k = patch_factor(config)
    res = d.resolution * max(k, 1)
    if d.name == "fashion_mnist":
        imgs = _fmnist(config, "train", res, d.get("limit") or None, grow=bool(k))
    elif d.name == "image_folder":
        imgs, _, bad = data_lib.load_image_folder(d.folder, res, d.channels)
        if bad:
            logging.warning("%d unreadable images skipped, e.g. %s", len(bad), bad[0])
        if d.get("limit"):
            imgs = imgs[: d.limit]
    else:
        raise UserError(f"unknown dataset {d.name!r} (fashion_mnist | image_folder)")
    source = data_lib.ArraySource(imgs)
    return PatchSource(source, d.resolution) if k else source


def load_test_images(
    config, limit: Optional[int] = None, resolution: Optional[int] = None
) -> np.ndarray:
    """The first `limit` Fashion-MNIST TEST images in [-1, 1] at data.resolution, or at
    `resolution` = k*m, prepared like patch training's k*m-px train images."""
    d = config.data
    if d.name != "fashion_mnist":
        raise UserError("held-out test split is defined for fashion_mnist only")
    res = resolution or d.resolution
    return data_lib.from_uint8(_fmnist(config, "test", res, limit, grow=resolution is not None))


def tiled_test_mae(nets, g_vars, d_params, images, batch_size=256) -> float:
    """MAE of tiled reconstructions of (k*m)-px images: every m x m tile inverted on its own
    and put back (`tiled_invert`); equal to the mean MAE over all tiles."""
    tiles = np.concatenate([to_tiles(np.asarray(x), nets.resolution) for x in images])
    return test_reconstruction_mae(nets, g_vars, d_params, tiles, batch_size)


# ----------------------------------------------------------------------------- driver


def setup(config, mesh=None):
    """(nets, mesh, abstract-then-sharded init function, jitted step)."""
    nets = make_nets(config)
    mesh = mesh or shd.make_mesh(config.get("num_devices") or None)
    if config.batch_size % mesh.size:
        raise UserError(f"batch_size {config.batch_size} not divisible by {mesh.size} devices")
    init_fn = functools.partial(init_state, config, nets)
    return nets, mesh, init_fn


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, stop_after: Optional[int] = None, mesh=None
):
    """Train (resuming from `workdir` if it has checkpoints); write metrics and samples.

    Returns the final state. `stop_after` stops after that many steps (tests: a "kill").
    """

    if config.variant not in VARIANTS:
        raise UserError(f"unknown variant {config.variant!r}: {sorted(VARIANTS)}")
    os.makedirs(workdir, exist_ok=True)
    pid, nproc = jax.process_index(), jax.process_count()
    nets, mesh, init_fn = setup(config, mesh)
    source = load_train_source(config)
    mgr = checkpointing.train_checkpoint_manager(
        os.path.join(workdir, "checkpoints"), config.get("max_to_keep", 3)
    )
    key = jax.random.key(config.seed)
    state, shardings, restored = state_lib.restore_or_init(
        mgr,
        init_fn,
        key,
        mesh,
        shd.rules_from_config(config.get("param_sharding")),
        log=lambda m: logging.info("%s", m),
    )
    if restored is None and config.get("init_from"):
        state = warm_start(state, config.init_from, shardings)
    start = int(jax.device_get(state.step))
    writer = loop_lib.open_run(config, workdir, start)
    step_fn = jit_train_step(config, nets, shardings, mesh)

    def get_batch(step):
        local = source.local_batch(config.seed, step, config.batch_size, pid, nproc)
        return shd.host_to_global(local, mesh)

    hooks = []
    if config.get("sample_every"):
        hooks.append(_sample_hook(config, nets, workdir, writer))
    logging.info(
        "InvGAN %s/%s: %d train images%s, batch %d on %d devices (%d processes), steps %d -> %d",
        config.backbone,
        config.variant,
        len(source),
        f" (random {config.data.resolution}px patches)" if isinstance(source, PatchSource) else "",
        config.batch_size,
        mesh.size,
        nproc,
        start,
        config.num_train_steps,
    )
    with jax.set_mesh(mesh):
        state, step, reason = loop_lib.train_loop(
            state=state,
            train_step=step_fn,
            get_batch=get_batch,
            start_step=start,
            num_steps=config.num_train_steps,
            mgr=mgr,
            writer=writer,
            checkpoint_every=config.checkpoint_every,
            log_every=config.log_every,
            hooks=hooks,
            stop_after=stop_after,
        )
    logging.info("stopped at step %d (%s)", step, reason)
    if reason == "done" and config.get("eval_at_end", True) and pid == 0:
        evaluate(config, nets, state, workdir, writer)
    writer.flush()
    mgr.close()
    return state


def warm_start(state: InvGANState, export_dir: str, shardings) -> InvGANState:
    """Continue from an exported DIR (e.g. `ganinv_jax/assets/default`): G, G_ema, D and the
    step come from it; Adam moments restart from zero (the DIR does not carry them)."""
    from ganinv_jax import pretrained

    path = pretrained.resolve(export_dir)
    _, doc = pretrained.read_config(path)
    trees = checkpointing.restore_pytree(os.path.join(path, pretrained.PARAMS_NAME))
    like = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.asarray(n, o.dtype), new, old)
    step = int(doc.get("source", {}).get("step", 0))
    new = state.replace(
        step=jnp.asarray(step, jnp.int32),
        g=like(trees["G"], state.g),
        d=like(trees["D"]["params"], state.d),
        g_ema=like(trees["G_ema"]["params"], state.g_ema),
    )
    logging.info("warm start from %s at step %d (fresh optimizer state)", path, step)
    return jax.device_put(new, shardings)


def _sample_hook(config, nets, workdir, writer):
    z = jax.random.normal(jax.random.key(config.seed + 1), (64, nets.z_dim))
    gen = jax.jit(lambda v, z: nets.synthesis(v, nets.mapping(v, z)))

    def hook(step, state):
        if step % config.sample_every or jax.process_index():
            return
        imgs = np.asarray(gen(ema_vars(state), z))
        writer.write_images(step, {"samples": image_io.make_grid(imgs, 8)[None]})

    return hook


def evaluate(config, nets, state, workdir, writer=None, num_test: Optional[int] = None):
    """Test-split reconstruction MAE (G_ema and G), time per latent -> eval.json; with
    data.patch = k also the tiled MAE of k*m-px test images (`test_mae_tiled_g_ema`)."""
    test = load_test_images(config, num_test or config.get("num_eval", None))
    d_params = jax.device_get(state.d)
    res = {"step": int(jax.device_get(state.step)), "num_test": int(test.shape[0])}
    res["test_mae_g_ema"] = test_reconstruction_mae(
        nets, jax.device_get(ema_vars(state)), d_params, test
    )
    res["test_mae_g"] = test_reconstruction_mae(nets, jax.device_get(state.g), d_params, test)
    res["sec_per_latent"] = time_per_latent(nets, d_params, test)
    patch = patch_factor(config)
    if patch:  # a patch-trained model is meant for tiles: also the MAE of tiled k*m inversions
        big = load_test_images(
            config, num_test or config.get("num_eval", None), resolution=patch * nets.resolution
        )
        res["patch"] = patch
        res["test_mae_tiled_g_ema"] = tiled_test_mae(
            nets, jax.device_get(ema_vars(state)), d_params, big
        )
    logging.info("eval: %s", res)
    if writer is not None:
        writer.write_scalars(res["step"], {k: v for k, v in res.items() if k.startswith("test")})
    atomic.write_json(os.path.join(workdir, "eval.json"), res, indent=2)
    return res
