"""Training GAN encoders for a frozen generator: paper 000 (adaptive) and paper 003 (CRG).

Objectives (`objective(config)`; every loss is attached to the graph, none is detached):
  'pretrain'  paper 000 on G's samples: z -> ws = M(z) -> x = G(ws) -> ws' = E(x) -> x' = G(ws')
              L = L_img(x, x') + mu1 L_img(AT1) + mu2 L_img(AT2) + 0.01 L_lat(ws, ws')
              L_img = 5 MSE + 3 (1 - cos) + 2 LPIPS + 1 (1 - SSIM)   (losses.seed000.pretrain_loss)
  'finetune'  paper 000 on real images y: ws = E(y), y' = G(ws), ws_c = E(y') (cycle)
              L = L_img(y, y') + eps (L_lat(ws, ws_c) + L_lat(z_c, z_c'))  (seed000.finetune_loss)
              The public code detaches the image loss in its default script; here it is not.
  'crg'       paper 003: z -> x = G(M(z)) -> E(x) and MSE against z (or against w = M(z)).
G runs with constant noise (deterministic G(w), as the InvGAN trainer), E with random noise
(adaptive) or dropout (CRG); both streams are fold_in(seed, step), and the synthetic batch of
step s is a pure function of (seed, s) drawn on the host, so a resumed run equals the
uninterrupted one for any device count (loop.py's contract).

Validation (`config.val.every` steps, 0 = off; on for CRG): the objective in evaluation mode
(no noise / dropout) on a fixed validation set -- `val.num` latents from a seed of their own
(synthetic objectives) or the last `val.num` training images, held out (finetune). It runs
inside the jitted step (lax.cond), so its effects are part of the checkpointed state:
  * reduce-LR-on-plateau (optax.contrib.reduce_on_plateau, fed the validation loss; its scale
    multiplies every update): the paper's "halve the LR after 10 stalled epochs";
  * the best parameters so far (`best_params`, what the export writes), and early stopping
    once `val.early_stop` validations in a row did not improve (the paper: 20 epochs).
An "epoch" is `val.every` steps: training draws fresh samples of G forever, there is no epoch.

Sharding: the same machinery as InvGAN -- `state.restore_or_init` over `sharding.make_mesh`,
parameter rules from `config.param_sharding`, a data-parallel batch, the frozen G, LPIPS and the
validation set as a replicated argument.

Run (task `train_encoder` of the one entry point):
    python -m ganinv_jax.main --config=configs/encoder.py --workdir=W           # adaptive
    python -m ganinv_jax.main --config=configs/encoder.py:crg --workdir=W       # CRG
    python -m ganinv_jax.main --config=configs/encoder.py:finetune --workdir=W2 \
        --config.encoder.init_from=W/encoder
The trained encoder is exported to `config.export_dir` (default WORKDIR/encoder) as a DIR that
`ganinv_jax.encoders.read_dir` reads.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from ganinv_jax import atomic, checkpointing, encoders
from ganinv_jax import data as data_lib
from ganinv_jax import sharding as shd
from ganinv_jax.errors import UserError
from ganinv_jax.losses import common as losses_common
from ganinv_jax.losses import perceptual as lpips_lib
from ganinv_jax.losses import seed000, structural
from ganinv_jax.training import invgan
from ganinv_jax.training import loop as loop_lib
from ganinv_jax.training import state as state_lib

sg = jax.lax.stop_gradient


# ----------------------------------------------------------------------------- config -> parts


def objective(config) -> str:
    """'pretrain' | 'finetune' (adaptive encoder) | 'crg' (CRG encoder, its one stage)."""
    kind, stage = config.encoder.kind, config.encoder.stage
    if kind not in ("adaptive", "crg"):
        raise UserError(f"config.encoder.kind {kind!r}: expected 'adaptive' or 'crg'")
    if stage not in ("pretrain", "finetune"):
        raise UserError(f"config.encoder.stage {stage!r}: expected 'pretrain' or 'finetune'")
    if kind == "crg" and stage != "pretrain":
        raise UserError("stage 'finetune' is paper 000's, for the adaptive encoder (kind 'crg')")
    return "crg" if kind == "crg" else stage


def image_loss_config(config) -> seed000.ImageLossConfig:
    return seed000.image_loss_config_from(config.loss)


def attention_config(config) -> seed000.AttentionConfig:
    lc = config.loss
    if lc.mu not in seed000.MU_PRESETS:
        raise UserError(f"config.loss.mu {lc.mu!r}: expected one of {sorted(seed000.MU_PRESETS)}")
    if lc.attention not in ("aligned", "gradcam", "none"):
        raise UserError(
            f"config.loss.attention {lc.attention!r}: expected 'aligned', 'gradcam' or 'none'"
        )
    return seed000.AttentionConfig(mode=lc.attention, mu=seed000.MU_PRESETS[lc.mu])


def needs_lpips(config) -> bool:
    obj = objective(config)
    return obj != "crg" and (
        config.loss.w_lpips != 0 or (obj == "pretrain" and config.loss.attention == "gradcam")
    )


def encoder_config(config, gan_config) -> encoders.EncoderConfig:
    e = config.encoder
    try:
        return encoders.config_for_generator(
            e.kind, gan_config, e.width, e.max_channels, e.get("target", ""), e.get("dropout", 0.5)
        )
    except ValueError as err:
        raise UserError(f"config.encoder: {err}") from None


def make_optimizer(config):
    o = config.optim
    return optax.adam(o.lr, b1=o.b1, b2=o.b2, eps=o.eps)


def make_plateau(config):
    v = config.val
    return optax.contrib.reduce_on_plateau(
        factor=v.plateau_factor, patience=v.plateau_patience, rtol=v.rtol, accumulation_size=1
    )


# ----------------------------------------------------------------------------- state


@flax.struct.dataclass
class EncoderState:
    step: jax.Array  # int32 scalar: steps done
    params: Any
    opt: Any  # Adam
    plateau: Any  # reduce_on_plateau state; its `scale` multiplies every update
    best_params: Any  # params of the best validation so far (() when validation is off)
    best_val: jax.Array  # inf before the first validation
    best_step: jax.Array
    stalled: jax.Array  # validations in a row without a new best
    last_val: jax.Array


def init_state(config, enc: encoders.EncoderConfig, latent_mean, key) -> EncoderState:
    params = encoders.init_params(enc, key, latent_mean)
    return state_from_params(config, params)


def state_from_params(config, params, step: int = 0) -> EncoderState:
    """A fresh optimizer / validation state around `params`."""
    f32 = lambda v: jnp.asarray(v, jnp.float32)
    return EncoderState(
        step=jnp.asarray(step, jnp.int32),
        params=params,
        opt=make_optimizer(config).init(params),
        plateau=make_plateau(config).init(params),
        best_params=jax.tree_util.tree_map(jnp.copy, params) if config.val.every else (),
        best_val=f32(jnp.inf),
        best_step=jnp.asarray(-1, jnp.int32),
        stalled=jnp.asarray(0, jnp.int32),
        last_val=f32(jnp.inf),
    )


def early_stopped(config, state) -> bool:
    """True when `val.early_stop` validations in a row did not improve (host sync)."""
    n = config.val.early_stop if config.val.every else 0
    return bool(n) and int(jax.device_get(state.stalled)) >= n


def export_params(state: EncoderState):
    """The best validated params when validation ran, else the current ones."""
    if isinstance(state.best_params, tuple) or not np.isfinite(jax.device_get(state.best_val)):
        return state.params
    return state.best_params


# ----------------------------------------------------------------------------- losses


def _flat(x):
    return jnp.reshape(x, (x.shape[0], -1))


def _sample(gan, g_vars, z, psi):
    ws = gan.mapping_fn(g_vars, z, truncation_psi=psi)
    return ws, gan.synthesis_fn(g_vars, ws, noise_mode="const")


def pretrain_losses(params, z, aux, key, config, enc, gan):
    """Per-example paper-000 pre-training loss on G's samples. -> ([N], metrics)."""
    ws, x = _sample(gan, aux["g"], z, config.truncation_psi)
    ws_rec = encoders.encode(enc, params, x, train=key is not None, key=key)
    x_rec = gan.synthesis_fn(aux["g"], ws_rec, noise_mode="const")
    per = seed000.pretrain_loss(
        x,
        x_rec,
        _flat(ws),
        _flat(ws_rec),
        aux.get("lpips"),
        image_loss_config(config),
        attention_config(config),
        config.loss.latent_weight,
    )
    return per, {"rec_mse": losses_common.mse(sg(x), sg(x_rec)), "lat_mse": _lat_mse(ws, ws_rec)}


def finetune_losses(params, y, aux, key, config, enc, gan):
    """Per-example paper-000 fine-tuning loss on real images y. -> ([N], metrics)."""
    train = key is not None
    k1, k2 = jax.random.split(key) if train else (None, None)
    ws, zc = encoders.encode_with_features(enc, params, y, train, k1)
    y_rec = gan.synthesis_fn(aux["g"], ws, noise_mode="const")
    ws_c, zc_c = encoders.encode_with_features(enc, params, y_rec, train, k2)
    per = seed000.finetune_loss(
        y,
        y_rec,
        _flat(ws),
        _flat(ws_c),
        _flat(zc),
        _flat(zc_c),
        aux.get("lpips"),
        image_loss_config(config),
        config.loss.eps,
    )
    return per, {"rec_mse": losses_common.mse(y, sg(y_rec)), "lat_mse": _lat_mse(ws, ws_c)}


def crg_losses(params, z, aux, key, config, enc, gan):
    """Per-example paper-003 latent MSE: E(G(z)) vs z (or vs w = M(z)). -> ([N], metrics)."""
    ws, x = _sample(gan, aux["g"], z, config.truncation_psi)
    target = z if enc.target == "z" else ws[:, 0]
    pred = encoders.encode(enc, params, x, train=key is not None, key=key)
    per = jnp.mean(jnp.square(pred - target), axis=-1)
    return per, {"lat_mse": sg(per)}


def _lat_mse(a, b):
    return jnp.mean(jnp.square(sg(a) - sg(b)), axis=tuple(range(1, a.ndim)))


LOSSES = {"pretrain": pretrain_losses, "finetune": finetune_losses, "crg": crg_losses}


def validation_loss(params, aux, config, enc, gan) -> jax.Array:
    """The objective in evaluation mode, averaged over the validation chunks aux['val']."""
    fn = LOSSES[objective(config)]
    per_chunk = jax.lax.map(
        lambda b: jnp.mean(fn(params, b, aux, None, config, enc, gan)[0]), aux["val"]
    )
    return jnp.mean(per_chunk)


def apply_validation(state: EncoderState, val_loss, config) -> EncoderState:
    """Pure: plateau LR scale, best params, stalled count, after one validation loss."""
    val_loss = jnp.asarray(val_loss, jnp.float32)
    _, plateau = make_plateau(config).update((), state.plateau, value=val_loss)
    better = val_loss < state.best_val
    pick = lambda new, old: jnp.where(better, new, old)
    return state.replace(
        plateau=plateau,
        best_params=jax.tree_util.tree_map(pick, state.params, state.best_params),
        best_val=pick(val_loss, state.best_val),
        best_step=pick(state.step, state.best_step),
        stalled=jnp.where(better, 0, state.stalled + 1),
        last_val=val_loss,
    )


# ----------------------------------------------------------------------------- step


def train_step(state: EncoderState, batch, aux, config, enc, gan):
    """One step on a (global, possibly sharded) batch: z [B, z_dim] or images [B, R, R, C]."""
    key = jax.random.fold_in(jax.random.key(config.seed), state.step)
    fn = LOSSES[objective(config)]

    def loss_fn(params):
        per, metrics = fn(params, batch, aux, key, config, enc, gan)
        return jnp.mean(per), metrics

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt = make_optimizer(config).update(grads, state.opt, state.params)
    updates = jax.tree_util.tree_map(lambda u: u * state.plateau.scale, updates)
    new = state.replace(
        step=state.step + 1, params=optax.apply_updates(state.params, updates), opt=opt
    )
    if config.val.every:
        new = jax.lax.cond(
            new.step % config.val.every == 0,
            lambda s: apply_validation(s, validation_loss(s.params, aux, config, enc, gan), config),
            lambda s: s,
            new,
        )
    metrics = {k: jnp.mean(v) for k, v in metrics.items()}
    finite = losses_common.tree_all_finite((loss, grads))
    return new, {**metrics, "loss": loss, "finite": finite.astype(jnp.float32)}


_JIT_CACHE: dict = {}


def jit_train_step(config, enc, gan, state_shardings, mesh):
    """`step(state, batch, aux)`, jitted with the state's shardings, a 'data'-sharded batch and
    a replicated aux (G, LPIPS, validation set); cached per (config, encoder, G, mesh) like
    `invgan.jit_train_step` (G's variables are arguments, so any G of that shape reuses it)."""
    key = (invgan._config_key(config), enc, gan.config, mesh)
    if key not in _JIT_CACHE:
        step = functools.partial(train_step, config=config, enc=enc, gan=gan)
        _JIT_CACHE[key] = jax.jit(
            step,
            in_shardings=(state_shardings, shd.batch_sharding(mesh), shd.replicated(mesh)),
            out_shardings=(state_shardings, shd.replicated(mesh)),
            donate_argnums=0,
        )
    return _JIT_CACHE[key]


# ----------------------------------------------------------------------------- data


def latent_batch(seed: int, step: int, batch_size: int, dim: int, pid: int = 0, nproc: int = 1):
    """This process's rows of step `step`'s global z batch (standard normal, from (seed, step))."""
    z = np.random.default_rng([int(seed), int(step)]).standard_normal((batch_size, dim))
    per = batch_size // nproc
    return z[pid * per : (pid + 1) * per].astype(np.float32)


def validation_latents(seed: int, num: int, batch_size: int, dim: int) -> np.ndarray:
    """[num // batch_size, batch_size, dim] fixed z's, from a seed stream training never uses."""
    n = max(1, num // batch_size)
    z = np.random.default_rng([int(seed), 0x7A1, 0xDA7A]).standard_normal((n * batch_size, dim))
    return z.astype(np.float32).reshape(n, batch_size, dim)


def make_data(config, gan, pid: int = 0, nproc: int = 1):
    """(get_local_rows(step), validation array or None, number of training images or None)."""
    obj, bs = objective(config), config.batch_size
    val_every, n_val = config.val.every, config.val.num
    if obj != "finetune":
        zd = gan.config.z_dim
        val = validation_latents(config.seed, n_val, bs, zd) if val_every else None
        return (lambda step: latent_batch(config.seed, step, bs, zd, pid, nproc)), val, None
    d, g = config.data, gan.config
    if (d.resolution, d.channels) != (g.resolution, g.img_channels):
        raise UserError(
            f"config.data is {d.resolution}px x {d.channels} channels, the generator makes "
            f"{g.resolution}px x {g.img_channels}: set --config.data.resolution / .channels"
        )
    images = invgan.load_train_source(config).images
    val = None
    if val_every:  # the last n_val images are held out
        n = max(1, n_val // bs) * bs
        if n >= len(images):
            raise UserError(f"config.val.num={n_val} leaves no training images ({len(images)})")
        val = data_lib.from_uint8(images[-n:]).reshape((n // bs, bs) + images.shape[1:])
        images = images[:-n]
    source = data_lib.ArraySource(images)
    return (lambda step: source.local_batch(config.seed, step, bs, pid, nproc)), val, len(source)


# ----------------------------------------------------------------------------- driver


def load_generator(config):
    from ganinv_jax import pretrained

    return pretrained.load(config.generator, networks=["G_ema"])


def _latent_mean(enc, gan):
    # Output biases start at the mean latent: G's w_avg for w / W+ targets, 0 for z.
    return None if enc.target == "z" else gan.G["buffers"]["mapping"]["w_avg"]


def init_dir(config) -> str:
    """`config.encoder.init_from`: an exported encoder DIR, 'default' (the shipped one: e.g. to
    fine-tune it further), or '' (none)."""
    path = config.encoder.init_from
    if path == "default":
        from ganinv_jax import pretrained

        return pretrained.DEFAULT_ENCODER_DIR
    return path


def setup(config, gan, mesh=None):
    """(encoder config, mesh, init_fn(key) -> EncoderState)."""
    if objective(config) != "crg":  # validates kind / stage (and the loss switches)
        attention_config(config)
    if config.encoder.init_from:
        enc, _, _ = encoders.read_dir(init_dir(config))
        encoders.check_fits(enc, gan.config, init_dir(config))
    else:
        enc = encoder_config(config, gan.config)
    if enc.kind != config.encoder.kind:
        raise UserError(
            f"{config.encoder.init_from}: a {enc.kind} encoder, config.encoder.kind is "
            f"{config.encoder.kind!r}"
        )
    mesh = mesh or shd.make_mesh(config.get("num_devices") or None)
    if config.batch_size % mesh.size:
        raise UserError(f"batch_size {config.batch_size} not divisible by {mesh.size} devices")
    init_fn = functools.partial(init_state, config, enc, _latent_mean(enc, gan))
    return enc, mesh, init_fn


def warm_start(config, state: EncoderState, shardings) -> EncoderState:
    """Start from an exported encoder DIR (`config.encoder.init_from`): its params, a fresh
    optimizer and validation state, step 0."""
    _, params, doc = encoders.read_dir(init_dir(config))
    like = lambda n, o: jnp.asarray(n, o.dtype)
    params = jax.tree_util.tree_map(like, params, state.params)
    logging.info("encoder warm start from %s (%s)", init_dir(config), doc.get("source"))
    return jax.device_put(state_from_params(config, params), shardings)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    stop_after: Optional[int] = None,
    mesh=None,
    gan=None,
):
    """Train an encoder (resuming from `workdir`'s checkpoints), export it, evaluate it.

    `gan`: the generator to invert (default: `pretrained.load(config.generator)`); `stop_after`
    stops after that many steps (tests: a "kill"). Returns the final state.
    """

    os.makedirs(workdir, exist_ok=True)
    pid, nproc = jax.process_index(), jax.process_count()
    gan = gan if gan is not None else load_generator(config)
    enc, mesh, init_fn = setup(config, gan, mesh)
    get_rows, val, n_train = make_data(config, gan, pid, nproc)
    get_batch = lambda step: shd.host_to_global(get_rows(step), mesh)
    mgr = checkpointing.train_checkpoint_manager(
        os.path.join(workdir, "checkpoints"), config.get("max_to_keep", 3)
    )
    state, shardings, restored = state_lib.restore_or_init(
        mgr,
        init_fn,
        jax.random.key(config.seed),
        mesh,
        shd.rules_from_config(config.get("param_sharding")),
        log=lambda m: logging.info("%s", m),
    )
    if restored is None and config.encoder.init_from:
        state = warm_start(config, state, shardings)
    start = int(jax.device_get(state.step))
    writer = loop_lib.open_run(config, workdir, start)
    aux = {
        "g": gan.G,
        "lpips": lpips_lib.load_lpips_params("vgg") if needs_lpips(config) else None,
        "val": val,
    }
    aux = jax.device_put(aux, shd.replicated(mesh))
    step_fn = jit_train_step(config, enc, gan, shardings, mesh)
    every = config.val.every
    logging.info(
        "encoder %s/%s for %s: %s, batch %d on %d devices (%d processes), steps %d -> %d%s",
        enc.kind,
        objective(config),
        config.generator,
        f"{n_train} train images" if n_train else "G's samples",
        config.batch_size,
        mesh.size,
        nproc,
        start,
        config.num_train_steps,
        f", validation every {every} steps" if every else "",
    )
    # A run that stopped early stays stopped when restarted.
    num_steps = start if early_stopped(config, state) else config.num_train_steps
    with jax.set_mesh(mesh):
        state, step, reason = loop_lib.train_loop(
            state=state,
            train_step=lambda st, batch: step_fn(st, batch, aux),
            get_batch=get_batch,
            start_step=start,
            num_steps=num_steps,
            mgr=mgr,
            writer=writer,
            checkpoint_every=config.checkpoint_every,
            log_every=config.log_every,
            hooks=[_validation_hook(config, writer)] if every else [],
            stop_after=stop_after,
            stop_when=lambda s, st: bool(every) and s % every == 0 and early_stopped(config, st),
        )
    logging.info("stopped at step %d (%s)", step, reason)
    mgr.close()
    if reason in ("done", "early_stop"):
        if nproc == 1:  # orbax's one-tree save is a single-process write
            out = config.get("export_dir") or os.path.join(workdir, "encoder")
            export_encoder(state, enc, out, config=config, gan=gan)
            if config.get("eval_at_end", True):
                evaluate(config, enc, export_params(state), gan, workdir, writer, step=step)
        else:
            logging.warning("multi-process run: export the encoder from one process")
    writer.flush()
    return state


def _validation_hook(config, writer):
    def hook(step, state):
        if step % config.val.every or jax.process_index():
            return
        keys = ("last_val", "best_val", "best_step", "stalled")
        v = jax.device_get({k: getattr(state, k) for k in keys})
        v["lr_scale"] = jax.device_get(state.plateau.scale)
        scalars = {("val_loss" if k == "last_val" else k): float(x) for k, x in v.items()}
        writer.write_scalars(step, scalars)
        logging.info("validation at step %d: %s", step, scalars)

    return hook


# ----------------------------------------------------------------------------- export / eval


def export_encoder(
    state: EncoderState, enc: encoders.EncoderConfig, out_dir: str, config=None, gan=None
) -> str:
    """Write the encoder (best validated params if validation ran) as DIR/config.json +
    DIR/params (atomically, replacing an older export). Returns DIR."""
    host = jax.device_get(state)
    source = {
        "trainer": "ganinv_jax.training.encoder",
        "step": int(host.step),
        "best_step": int(host.best_step),
        "best_val": float(host.best_val),
    }
    generator = {}
    if config is not None:
        source.update(objective=objective(config), seed=config.seed)
        generator["path"] = config.generator
        if config.encoder.init_from:  # the lineage: what this run started from, and its source
            start = encoders.read_dir(init_dir(config))[2].get("source", {})
            source["init_from"] = {"dir": config.encoder.init_from, "source": start}
    if gan is not None:
        generator["config"] = gan.config.to_dict()
    out = encoders.write_dir(
        out_dir, enc, export_params(host), generator=generator, source=source, replace=True
    )
    logging.info("exported the encoder to %s", out)
    return out


def evaluate(
    config, enc, params, gan, workdir, writer=None, num_test: Optional[int] = None, step: int = 0
):
    """Held-out reconstruction G(E(x)) on the test split: MSE, PSNR, images/s -> eval.json."""
    if config.data.name != "fashion_mnist":
        return None
    test = invgan.load_test_images(config, num_test or config.get("num_eval") or None)
    fn = jax.jit(
        lambda p, g, x: gan.synthesis_fn(
            g, encoders.to_ws(enc, encoders.encode(enc, p, x), lambda z: gan.mapping_fn(g, z))
        )
    )
    bs = min(config.batch_size * 8, test.shape[0])
    fn(params, gan.G, jnp.asarray(test[:bs])).block_until_ready()  # compile outside the timing
    recs, t0 = [], time.perf_counter()
    for i in range(0, test.shape[0], bs):
        x = test[i : i + bs]
        pad = np.zeros((bs - x.shape[0],) + x.shape[1:], x.dtype)  # one compiled shape
        recs.append(np.asarray(fn(params, gan.G, jnp.asarray(np.concatenate([x, pad]))))[: len(x)])
    secs = time.perf_counter() - t0
    rec, ref = np.concatenate(recs), test
    res = {
        "num_test": int(ref.shape[0]),
        "test_mse": float(np.mean((rec - ref) ** 2)),
        "test_psnr": float(np.mean(structural.psnr(jnp.asarray(ref), jnp.asarray(rec)))),
        "images_per_sec": float(ref.shape[0] / max(secs, 1e-9)),
    }
    logging.info("eval: %s", res)
    if writer is not None:
        writer.write_scalars(step, {k: v for k, v in res.items() if k.startswith("test")})
    atomic.write_json(os.path.join(workdir, "eval.json"), res, indent=2)
    return res
