"""Task `invert`: batch GAN inversion of a dataset, from one CPU to a TPU pod.

  python -m ganinv_jax.main --config=configs/stylegan2.py --workdir=/tmp/ganinv

inverts the bundled sample (16 Fashion-MNIST test images) with the embedded default generator.
See the README section "Batch inversion" for inputs, outputs and launch scripts.

How the work is split. The listing of the input (every host lists; only ids and paths) is cut
into chunks of `batch_size x (number of devices)` ids. Within a chunk, process p takes the
contiguous slots [p*L, (p+1)*L), L = batch_size x (its local devices), decodes only those
files, and inverts them with `inversion.engine.invert_batch` on a mesh of its own devices
(the image axis sharded over them). Inversion has no cross-image communication, so hosts never
wait on each other inside a chunk and each stops as soon as its own images have converged; they
meet once per chunk (a barrier plus an all-gather of small per-image records) and process 0
commits the chunk to the manifest. Tuned generators / GMM params are saved with one collective
orbax save of a global array sharded over all devices of all hosts.

Why results do not depend on the device or host count: per-image keys are
fold_in(seed, image id) and per-image convergence masks, so an image's result is a function of
the image, its id and the settings only. A resumed run re-forms the unfinished chunks exactly
(see `manifest.plan_chunks`), so even the float reassociation matches the uninterrupted run.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import os
import shutil
import time
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from ganinv_jax import atomic, errors, preemption
from ganinv_jax.data import images as image_io
from ganinv_jax.errors import UserError
from ganinv_jax.inversion.base import check_gemm_dtypes
from ganinv_jax.jobs import manifest as manifest_lib
from ganinv_jax.jobs import methods as methods_lib
from ganinv_jax.jobs import records, reporting, sources, tiling

INITS = ("auto", "mean_w", "encoder", "latent_opt")
ENCODER_METHODS = ("encoder", "encoder_ft")  # methods that encode the image themselves


class JobError(UserError):
    """A problem the user must fix; reported as one line, before any work where possible."""


# ----------------------------------------------------------------------------- set-up


def load_generator(spec: str):
    """`config.generator` ('default' or a converted DIR) -> the `pretrained` GAN object."""
    if spec != "default" and not os.path.isdir(spec):
        raise JobError(
            f"config.generator={spec!r}: no such directory (convert a checkpoint "
            "with `python -m weights_convert ... --out DIR`, or use 'default')"
        )
    try:
        from ganinv_jax import pretrained

        return pretrained.load(spec)
    except Exception as e:  # noqa: BLE001 -- any loading problem is one clear line
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise JobError(f"config.generator={spec!r}: cannot load ({first})") from None


def load_reals(config, pre: sources.Preprocess) -> Optional[np.ndarray]:
    """Clone's global GAN loss: `config.reals.num` real images from `config.reals.path` or
    `.tfds_name`; with neither, for the default model, its training data (the Fashion-MNIST
    TRAIN split, padded like the training images, a seeded random subset). None (another G with
    no reals given): Clone falls back to samples of the frozen G, see inversion/clone.py."""
    rc = config.reals
    if not int(rc.num):
        return None
    if not (rc.path or rc.tfds_name):
        if config.generator != "default":
            return None
        from ganinv_jax import data as data_lib

        try:
            train = data_lib.load_fashion_mnist(
                "train", resolution=pre.resolution, channels=pre.channels
            )
        except (OSError, ValueError, data_lib.DatasetError) as e:
            raise JobError(
                f"config.reals: the default model's reals are the Fashion-MNIST train "
                f"split ({e}); install dataset-fashion-mnist or set "
                "config.reals.path"
            ) from None
        pick = np.random.default_rng(int(config.seed)).choice(
            len(train), size=min(int(rc.num), len(train)), replace=False
        )
        return data_lib.from_uint8(train[np.sort(pick)])
    src = sources.open_source(rc)  # same keys as config.data
    got = [
        img for img, _ in src.load_many(range(min(int(rc.num), len(src))), pre) if img is not None
    ]
    if not got:
        raise JobError(f"config.reals: no readable images in {src.describe()}")
    return np.stack(got)


def make_arch(config, gan):
    """The inversion architecture (`inversion.arch`) of the loaded generator, with the job's
    options: None for StyleGAN2 (its defaults); PGGAN: the GAN loss the checkpoint recorded
    (Clone's global term); BigGAN: `config.biggan` (truncation, class_mode, class_index)."""
    arch = getattr(gan, "architecture", "stylegan2")
    if arch == "stylegan2":
        return None
    from ganinv_jax.inversion import arch as arch_lib

    if arch == "pggan":
        zoo = gan.meta.get("provenance", {}).get("zoo_config")
        return arch_lib.arch_for(gan.config, **arch_lib.pggan_loss_options(zoo, gan.config))
    bc = config.biggan
    if bc.class_mode == "given" and int(bc.class_index) < 0:
        raise JobError(
            "config.biggan.class_mode='given' needs config.biggan.class_index (the class of "
            "the images, 0..num_classes-1)"
        )
    try:
        return arch_lib.arch_for(
            gan.config,
            truncation=float(bc.truncation),
            class_mode=str(bc.class_mode),
            class_index=int(bc.class_index),
        )
    except (TypeError, ValueError) as e:
        raise JobError(f"config.biggan: {e}") from None


def arch_settings(arch) -> Optional[dict]:
    """The architecture options a resumed run must share (None for StyleGAN2)."""
    if arch is None:
        return None
    opts = {
        f.name: getattr(arch, f.name)
        for f in dataclasses.fields(arch)
        if f.name not in ("cfg", "d_apply")
    }
    return {"name": arch.name, **opts}


def resolve_init(config, has_encoder: bool) -> str:
    """config.init='auto' -> each method's paper start: latent_opt starts at the encoder (mean w
    without one); the tuning methods (PTI, Clone, GMM) tune around a projected pivot
    ('latent_opt': `init_steps` of latent optimization, itself started at the encoder); the
    encoder methods (`encoder`, `encoder_ft`) start from their own encoding ('encoder')."""
    if config.method in ENCODER_METHODS:
        if config.init not in ("auto", "encoder"):
            raise JobError(
                f"config.method={config.method!r} starts from its encoder's own encoding; "
                f"config.init={config.init!r} would be ignored (use 'auto' or 'encoder')"
            )
        return "encoder"
    if config.init != "auto":
        return config.init
    if config.method in ("pti", "clone", "gmm"):
        return "latent_opt"
    return "encoder" if has_encoder else "mean_w"


@dataclasses.dataclass(frozen=True)
class EncoderChoice:
    """The encoder `config.encoder` resolved to: kind 'trained' (a `TrainedEncoder` DIR),
    'invgan' (G's InvGAN w-head) or 'none'."""

    kind: str
    trained: Any = None  # encoders.TrainedEncoder (kind 'trained')
    spec: str = "none"  # what the run settings record: 'invgan', 'none' or the DIR's path

    def encode_fn(self, gan) -> Optional[Any]:
        """images [N,H,W,C] in [-1, 1] -> G's ws (or w), or None without an encoder."""
        if self.kind == "trained":
            return lambda x: self.trained.encode_ws(x, gan)
        return gan.encode if self.kind == "invgan" else None


def resolve_encoder(config, gan) -> EncoderChoice:
    """config.encoder: 'auto' (the shipped paper-000 encoder for the default generator when the
    install has one, else G's InvGAN w-head when G has one, else none) | 'default' | 'invgan' |
    'none' | a trained encoder DIR (`configs/encoder.py`). A trained encoder must fit G."""
    from ganinv_jax import pretrained

    spec = str(config.encoder)
    architecture = getattr(gan, "architecture", "stylegan2")
    has_head = architecture == "stylegan2" and bool(gan.config.d_w_head and "D" in gan.params)
    if spec == "auto":
        if config.generator == "default" and os.path.isdir(pretrained.DEFAULT_ENCODER_DIR):
            spec = "default"
        else:
            spec = "invgan" if has_head else "none"
    if spec == "none":
        return EncoderChoice("none")
    if spec == "invgan":
        if not has_head:
            raise JobError(
                f"config.encoder='invgan': generator {config.generator!r} has no InvGAN w-head "
                "(its D was not trained with one); give a trained encoder DIR"
            )
        return EncoderChoice("invgan", spec="invgan")
    if architecture != "stylegan2":
        raise JobError(
            f"config.encoder={spec!r}: trained encoders exist for StyleGAN2 generators only, "
            f"{config.generator!r} is a {architecture}"
        )
    if spec == "default" and config.generator != "default":
        raise JobError(
            "config.encoder='default' is the encoder of the default generator; for "
            f"{config.generator!r} give an encoder DIR trained for it"
        )
    try:
        trained = pretrained.load_encoder(spec)
        trained.check_generator(gan.config, f"config.encoder={spec!r}")
    except UserError as e:
        raise JobError(str(e)) from None
    return EncoderChoice("trained", trained, "default" if spec == "default" else trained.path)


def validate(config) -> None:
    """Value checks the locked config cannot do (unknown keys already fail at parse time)."""
    if int(config.steps) <= 0:
        raise JobError(f"config.steps must be > 0, got {config.steps}")
    if int(config.batch_size) <= 0:
        raise JobError(f"config.batch_size must be > 0, got {config.batch_size}")
    if int(config.steps_per_call) <= 0:
        raise JobError(f"config.steps_per_call must be > 0, got {config.steps_per_call}")
    if config.init not in INITS:
        raise JobError(f"config.init={config.init!r}: choose one of {', '.join(INITS)}")
    if config.init_space not in ("w", "w+"):
        raise JobError(f"config.init_space={config.init_space!r}: 'w' or 'w+'")
    if config.data.resize_mode not in ("crop", "pad"):
        raise JobError(f"config.data.resize_mode={config.data.resize_mode!r}: 'crop' or 'pad'")
    if float(config.max_drift) < 0 or (float(config.max_drift) > 0 and not config.keep_best):
        raise JobError(
            f"config.max_drift={config.max_drift}: a drift budget >= 0, and > 0 needs "
            "config.keep_best=True (it selects among the kept states)"
        )
    tiling.check_tile(config.tile, save_png=bool(config.output.save_png))


@dataclasses.dataclass
class Context:
    """Everything a chunk needs, built (and checked) before any work starts."""

    config: Any
    workdir: str
    source: sources.Source
    pre: sources.Preprocess
    method: Any
    mcfg: Any
    frozen: Any
    gan: Any
    lpips: Any  # LPIPS params of the metrics (the same tree as frozen.lpips)
    devices: list  # this process's devices (the mesh of its inversions)
    global_devices: list  # all devices (the mesh of collective saves)
    pid: int
    nproc: int
    slots: int  # L: images per process per chunk
    manifest: manifest_lib.Manifest
    init: str  # the resolved config.init
    encoder: EncoderChoice = EncoderChoice("none")  # config.encoder (init 'encoder' / pivot start)
    init_cfg: Any = None  # latent_opt's config of the pivot projection (init='latent_opt')

    @property
    def chunk_size(self) -> int:
        return self.slots * self.nproc

    def out(self, *parts: str) -> str:
        return os.path.join(self.workdir, *parts)


def pivot_config(config, has_encoder: bool):
    """latent_opt's config for the pivot projection: `config.latent_opt` (its loss), in
    `config.init_space`, `config.init_steps` steps (0: `config.steps`, so the pivot is what
    latent_opt alone would end at), no noise ramp from an encoder start."""
    cfg = methods_lib.method_config(config, methods_lib.get("latent_opt"))
    cfg.space = config.init_space
    cfg.num_steps = int(config.init_steps) if config.init_steps > 0 else int(config.steps)
    if has_encoder:
        cfg.initial_noise_factor = 0.0  # the projector's noise ramp is for a mean-w start
    return cfg


def method_run_config(config, method, init: str):
    """The method's config for this run (`config.<method>`, num_steps = `config.steps`);
    latent_opt started at an encoder drops the projector's noise ramp, as the pivot does: the
    ramp is for a mean-w start, and from the default encoder it costs the head start (100
    steps: 26.94 dB without it, 25.86 with it; 200 from the mean w: 25.64; README "Measured:
    encoders")."""
    cfg = methods_lib.method_config(config, method)
    if config.method == "latent_opt" and init == "encoder":
        cfg.initial_noise_factor = 0.0
    return cfg


def run_settings(
    config,
    source,
    pre,
    mcfg,
    gan_cfg,
    init: str,
    init_cfg=None,
    arch: Optional[dict] = None,
    encoder: str = "invgan",
) -> dict:
    """What a resumed run must share with the original (batching settings may change)."""
    out = {
        "method": config.method,
        "method_config": json.loads(mcfg.to_json_best_effort()),
        "steps": int(config.steps),
        "seed": int(config.seed),
        "init": init,
        "init_config": (
            json.loads(init_cfg.to_json_best_effort()) if init_cfg is not None else None
        ),
        "generator": os.path.abspath(config.generator)
        if config.generator != "default"
        else "default",
        "generator_config": json.loads(json.dumps(gan_cfg, default=str)),
        "source": source.describe(),
        "listing": source.fingerprint(),
        "num_items": len(source),
        "preprocess": {
            "resolution": pre.resolution,
            "channels": pre.channels,
            "resize_mode": pre.resize_mode,
            "background": pre.background,
            "max_pixels": pre.max_pixels,
            "align": str(pre.align),
        },
    }
    if arch is not None:  # non-StyleGAN2 generators (StyleGAN2 runs keep their old settings)
        out["arch"] = arch
    if encoder != "invgan":  # runs from before trained encoders used the InvGAN head or none
        out["encoder"] = encoder
    dtypes = {k: config.get(k, "float32") for k in ("g_dtype", "lpips_dtype")}
    if set(dtypes.values()) != {"float32"}:  # float32 runs keep their old settings
        out["gemm_dtypes"] = dtypes
    return out


def prepare(config, workdir: str, devices: Optional[Sequence] = None) -> Context:
    """Checks config, generator, input and workdir; fails with JobError before any work."""
    validate(config)
    method = methods_lib.get(config.method)
    # cheap checks first: input, then G; config.tile: each image as N x N tiles of G's size
    source = tiling.maybe_tiled(sources.open_source(config.data), config.tile)
    gan = load_generator(config.generator)
    g_cfg = gan.config
    architecture = getattr(gan, "architecture", "stylegan2")
    encoder = resolve_encoder(config, gan)
    has_encoder = encoder.kind != "none"
    init = resolve_init(config, has_encoder)
    if method.encodes and encoder.kind != "trained":
        raise JobError(
            f"config.method={config.method!r} needs a trained encoder: "
            "--config.encoder=DIR (python -m ganinv_jax.main --config=configs/encoder.py) or "
            f"'default'; config.encoder={config.encoder!r} gives {encoder.kind}"
        )
    if init == "encoder" and not has_encoder:
        raise JobError(
            f"config.init='encoder': generator {config.generator!r} has no encoder "
            "(no InvGAN w-head, no config.encoder DIR); use config.init=mean_w or latent_opt"
        )
    if config.method == "clone" and architecture == "biggan":
        raise JobError(
            f"config.method='clone' needs a discriminator; {config.generator!r} is a BigGAN "
            "(pytorch-pretrained-biggan ships none): Clone runs with a D of your own through "
            "the Python API (inversion.arch_for(cfg, d_apply=...), make_frozen(d_vars=...))"
        )
    if config.method == "clone" and "D" not in gan.params:
        raise JobError(
            f"config.method='clone' needs a discriminator; {config.generator!r} has "
            "none (convert it without --no-d)"
        )
    arch = make_arch(config, gan)
    pre = sources.preprocess_for(config.data, gan)
    if devices is not None and jax.process_count() > 1:
        raise JobError("explicit devices are for single-process runs only")
    local = list(devices) if devices is not None else jax.local_devices()
    global_devices = list(devices) if devices is not None else jax.devices()
    nproc = jax.process_count() if devices is None else 1
    if len(global_devices) != len(local) * nproc:
        raise JobError(
            f"uneven hosts: {len(global_devices)} devices over {nproc} processes "
            f"with {len(local)} here"
        )
    gemm_dtypes = {k: config.get(k, "float32") for k in ("g_dtype", "lpips_dtype")}
    try:  # before the manifest: a typo costs nothing
        check_gemm_dtypes(**gemm_dtypes)
    except ValueError as e:
        raise JobError(f"config.{e}") from None
    mcfg = method_run_config(config, method, init)
    init_cfg = pivot_config(config, has_encoder) if init == "latent_opt" else None
    settings = run_settings(
        config,
        source,
        pre,
        mcfg,
        g_cfg.to_dict(),
        init,
        init_cfg,
        arch_settings(arch),
        encoder.spec if encoder.kind != "none" else "invgan",
    )
    m = manifest_lib.Manifest.open(workdir, settings)  # ResumeMismatch -> one line
    from ganinv_jax import losses
    from ganinv_jax.inversion import base, clone

    try:
        lpips_params = losses.load_lpips_params(config.lpips_net)
    except (ValueError, FileNotFoundError) as e:
        raise JobError(f"config.lpips_net={config.lpips_net!r}: {e}") from None
    frozen = base.make_frozen(
        g_cfg,
        gan.G,
        lpips=lpips_params,
        **gemm_dtypes,
        lpips_net=losses.perceptual.canonical_net(config.lpips_net),
        d_vars=gan.params.get("D") if method.name == "clone" else None,
        # Clone's reals feed its GAN terms only (off in the job by default: none loaded)
        reals=load_reals(config, pre)
        if method.name == "clone" and clone.plays_the_gan(config.clone)
        else None,
        arch=arch,
        encoder=encoder.trained if method.encodes else None,
    )
    return Context(
        config=config,
        workdir=workdir,
        source=source,
        pre=pre,
        method=method,
        mcfg=mcfg,
        frozen=frozen,
        gan=gan,
        lpips=lpips_params,
        devices=local,
        global_devices=global_devices,
        pid=jax.process_index() if devices is None else 0,
        nproc=nproc,
        slots=int(config.batch_size) * len(local),
        manifest=m,
        init=init,
        encoder=encoder,
        init_cfg=init_cfg,
    )


# ----------------------------------------------------------------------------- one chunk


@functools.partial(jax.jit, static_argnames=("win", "net"))
def image_metrics(lpips_params, images, recon, win: int = 11, net: str = "vgg") -> dict:
    """Per-image MSE (on [0, 1] images, so PSNR = -10 log10 MSE), PSNR, SSIM, MS-SSIM (scales and
    window for the image size: `losses.ms_ssim_settings`) and LPIPS of the
    clipped reconstruction (what the PNG holds). Gray images are repeated to RGB for LPIPS and
    images below the backbone's minimum size are upsampled (nearest) to it."""
    from ganinv_jax import losses

    recon = jnp.clip(recon, -1.0, 1.0)
    mse01 = jnp.mean(jnp.square(images - recon).reshape(images.shape[0], -1), axis=1) / 4.0
    x, y = images, recon
    if x.shape[-1] == 1:
        x, y = jnp.repeat(x, 3, axis=-1), jnp.repeat(y, 3, axis=-1)
    min_size = 16 if net in ("vgg", "vgg16") else 31
    if x.shape[1] < min_size:
        f = -(-min_size // x.shape[1])
        x, y = (jnp.repeat(jnp.repeat(a, f, 1), f, 2) for a in (x, y))
    return {
        "mse": mse01,
        "psnr": -10.0 * jnp.log10(mse01),
        "ssim": losses.ssim(images, recon, win_size=win),
        "ms_ssim": losses.ms_ssim_any_size(images, recon),
        "lpips": losses.lpips_apply(lpips_params, x, y, net=net),
    }


def my_slots(ctx: Context, chunk: Sequence[int]) -> list[int]:
    """This process's ids of a chunk (slots [pid*L, (pid+1)*L); fewer in a short last chunk)."""
    return list(chunk[ctx.pid * ctx.slots : (ctx.pid + 1) * ctx.slots])


def initial_latents(ctx: Context, images: np.ndarray, ids: np.ndarray):
    """config.init: the mean w (None: the engine's default), the encoder (`config.encoder`), or
    a projected pivot: latent optimization (`config.latent_opt`'s loss, in `config.init_space`,
    `config.init_steps` steps; PTI's pivot recipe), started at the encoder when there is one.
    The encoder methods encode the images themselves (None)."""
    from ganinv_jax.inversion import init_latents

    if ctx.init == "mean_w" or ctx.method.encodes:
        return None
    encode = ctx.encoder.encode_fn(ctx.gan)
    encoded = init_latents.from_encoder(encode, images, ctx.frozen) if encode else None
    if ctx.init == "encoder":
        return encoded
    return init_latents.from_latent_opt(
        ctx.frozen,
        images,
        ids,
        cfg=ctx.init_cfg,
        seed=int(ctx.config.seed),
        start=encoded,
        strategy=ctx.config.strategy,
        steps_per_call=int(ctx.config.steps_per_call),
        devices=ctx.devices,
    )


def load_slots(ctx: Context, chunk: Sequence[int]) -> list:
    """Decode this process's items of a chunk: [(image or None, reason)]."""
    return ctx.source.load_many(my_slots(ctx, chunk), ctx.pre)


def invert_local(ctx: Context, ids: Sequence[int], loaded: Optional[list] = None) -> dict:
    """Decode and invert this process's ids; returns per-slot numpy records (L slots).

    Slots without a usable image (bad input, or past the end of a short last chunk) are filled
    with a copy of a good image of this batch (zeros if there is none), so every call has the
    same shapes (one compile) and the filler converges like its original; its results are
    dropped."""
    from ganinv_jax.inversion import engine

    t0 = time.perf_counter()
    L, res, ch = ctx.slots, ctx.pre.resolution, ctx.pre.channels
    if loaded is None:
        loaded = ctx.source.load_many(ids, ctx.pre)
    good = [j for j, (img, _) in enumerate(loaded) if img is not None]
    images = np.zeros((L, res, res, ch), np.float32)
    fill = loaded[good[0]][0] if good else images[0]
    images[:] = fill
    for j in good:
        images[j] = loaded[j][0]
    slot_ids = np.full((L,), -1, np.int64)
    slot_ids[: len(ids)] = ids
    engine_ids = np.where(slot_ids >= 0, slot_ids, slot_ids[good[0]] if good else 0)
    out = engine.invert_batch(
        ctx.method,
        ctx.frozen,
        images,
        engine_ids,
        initial_latents(ctx, images, engine_ids),
        ctx.mcfg,
        seed=int(ctx.config.seed),
        strategy=ctx.config.strategy,
        steps=int(ctx.config.steps) if "num_steps" in ctx.mcfg else 0,  # 'encoder': none
        steps_per_call=int(ctx.config.steps_per_call),
        devices=ctx.devices,
        keep_best=bool(ctx.config.keep_best),
        max_drift=float(ctx.config.max_drift),
    )
    recon = np.asarray(out["recon"], np.float32)
    win = min(11, res - (1 - res % 2))
    mets = jax.device_get(
        image_metrics(
            ctx.lpips, jnp.asarray(images), jnp.asarray(recon), win=win, net=ctx.config.lpips_net
        )
    )
    status = np.full((L,), records.EMPTY, np.int32)
    reasons = [""] * L
    finite = np.isfinite(recon).reshape(L, -1).all(1) & np.isfinite(
        np.asarray(out["latent"])
    ).reshape(L, -1).all(1)
    for j in range(len(ids)):
        if loaded[j][0] is None:
            status[j], reasons[j] = records.BAD_INPUT, loaded[j][1]
        elif bool(out["failed"][j]) or not finite[j]:
            status[j] = records.FAILED
            kept = "kept the last finite state" if finite[j] else "its result is non-finite"
            reasons[j] = (
                f"non-finite value during {ctx.method.name} after "
                f"{int(out['iterations'][j])} steps ({kept})"
            )
        else:
            status[j] = records.CONVERGED if bool(out["converged"][j]) else records.MAX_STEPS
    bad = ~np.isin(status, records.OK_STATUSES)
    seconds = (time.perf_counter() - t0) / max(len(ids), 1)
    rec = {
        "ids": slot_ids,
        "status": status,
        "reasons": records.encode_reasons(reasons),
        "iterations": np.where(
            np.isin(status, (records.BAD_INPUT, records.EMPTY)), 0, np.asarray(out["iterations"])
        ).astype(np.int32),
        "seconds": np.where(status == records.EMPTY, 0.0, seconds).astype(np.float32),
        "latent": np.asarray(out["latent"], np.float32),
    }
    for k in records.METRIC_KEYS:
        rec[k] = np.where(bad, np.nan, np.asarray(mets[k], np.float64)).astype(np.float32)
    extras = {
        k: v
        for k, v in out.items()
        if k
        not in (
            "latent",
            "recon",
            "tuned",
            "iterations",
            "converged",
            "failed",
            "metrics",
            "history",
            "history_steps",
        )
    }
    for k, v in _flatten({"extra": extras}).items():
        rec[k] = np.asarray(v)
    return {"records": rec, "images": images, "recon": recon, "tuned": out.get("tuned")}


def _flatten(tree, prefix="") -> dict:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{'/' if prefix else ''}{k}"))
        return out
    return {} if tree is None else {prefix: tree}


def gather(ctx: Context, rec: dict) -> dict:
    """Per-slot records of all processes, concatenated in process (= slot) order."""
    if ctx.nproc == 1:
        return rec
    from jax.experimental import multihost_utils

    return {k: np.asarray(multihost_utils.process_allgather(v, tiled=True)) for k, v in rec.items()}


def barrier(ctx: Context, name: str) -> None:
    if ctx.nproc > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def save_tuned(ctx: Context, name: str, tuned, slot_ids: np.ndarray) -> Optional[str]:
    """One collective orbax save per chunk: {'ids': [chunk slots], 'tuned': tree [slots, ...]}."""
    if tuned is None or not jax.tree_util.tree_leaves(tuned):
        return None
    from ganinv_jax import checkpointing, sharding

    mesh = sharding.make_mesh(devices=ctx.global_devices)
    to_global = lambda x: sharding.host_to_global(x, mesh)
    tree = {
        "ids": to_global(slot_ids.astype(np.int32)),
        "tuned": jax.tree_util.tree_map(to_global, tuned),
    }
    rel = os.path.join("tuned", name)
    checkpointing.save_sharded_pytree(ctx.out(rel), tree)
    return rel


def write_local_outputs(ctx: Context, local: dict, at=lambda p: p) -> None:
    """Reconstruction PNGs of this process's good images (each file atomic)."""
    if not ctx.config.output.save_png:
        return
    rec = local["records"]
    for j, i in enumerate(rec["ids"]):
        if i >= 0 and rec["status"][j] in records.OK_STATUSES:
            image_io.save_png(at(ctx.out("recon", f"{int(i):08d}.png")), local["recon"][j])


def comparison_grid(local: dict, max_pairs: int) -> Optional[np.ndarray]:
    """Target | reconstruction side by side, 4 pairs per row, for this process's images."""
    rec = local["records"]
    keep = [
        j
        for j in range(len(rec["ids"]))
        if rec["ids"][j] >= 0 and rec["status"][j] in records.OK_STATUSES
    ][:max_pairs]
    if not keep:
        return None
    pairs = np.stack(
        [x for j in keep for x in (local["images"][j], np.clip(local["recon"][j], -1, 1))]
    )
    ncols = min(8, 2 * len(keep))
    return image_io.make_grid(pairs, ncols=ncols, col_labels=["target", "recon"] * (ncols // 2))


def process_chunk(
    ctx: Context, chunk: Sequence[int], loaded: Optional[list] = None
) -> tuple[dict, Optional[np.ndarray]]:
    """Invert one chunk, write its outputs, and (process 0) commit it to the manifest."""
    name = manifest_lib.chunk_name(chunk)
    t0 = time.perf_counter()
    local = invert_local(ctx, my_slots(ctx, chunk), loaded)
    full = gather(ctx, local["records"])
    chunk_file = os.path.join("chunks", f"{name}.npz")
    grid = comparison_grid(local, int(ctx.config.output.grid_pairs)) if ctx.pid == 0 else None
    writing = {"path": ""}  # for the error message: the file being written

    def at(path: str) -> str:
        writing["path"] = path
        return path

    try:
        write_local_outputs(ctx, local, at)
        if ctx.pid == 0:
            if grid is not None:
                image_io.save_png(at(ctx.out("grids", f"{name}.png")), grid)
            atomic.write_npz(at(ctx.out(chunk_file)), **full)
        at(ctx.out("tuned", name))
        tuned_rel = save_tuned(ctx, name, local["tuned"], local["records"]["ids"])
        barrier(ctx, f"ganinv-invert-{name}")
        if ctx.pid == 0:
            at(ctx.manifest.path)
            ctx.manifest.commit_chunk(
                {
                    "name": name,
                    "ids": manifest_lib.ranges(chunk),
                    "file": chunk_file,
                    "tuned": tuned_rel,
                    "seconds": round(time.perf_counter() - t0, 3),
                }
            )
            records.append_csv(
                at(ctx.out("metrics.csv")),
                records.metric_rows(full, ctx.source.paths, ctx.method.name),
            )
            records.append_csv(
                at(ctx.out("failures.csv")), records.failure_rows(full, ctx.source.paths)
            )
    except OSError as e:
        raise JobError(
            f"cannot write {e.filename or writing['path']} ({e.strerror or e}); "
            f"manifest.json lists the {len(ctx.manifest.chunks)} finished chunks and "
            "nothing half-written: free space / fix the workdir and rerun the same "
            "command to resume"
        ) from None
    return full, grid


# ----------------------------------------------------------------------------- reporting


def committed_chunks(ctx: Context, keys=records.RECORD_KEYS) -> list[dict]:
    """The committed chunk records (by default without latents: a resumed million-image run
    must not read every latent to rebuild its CSVs)."""
    return [records.load_chunk(ctx.out(c["file"]), keys) for c in ctx.manifest.chunks]


def rebuild_views(ctx: Context, chunks: list[dict]) -> None:
    """metrics.csv / failures.csv from the committed chunk files (drops torn appends)."""
    paths, name = ctx.source.paths, ctx.config.method
    records.write_csv_atomic(
        ctx.out("metrics.csv"),
        records.METRIC_COLUMNS,
        [r for c in chunks for r in records.metric_rows(c, paths, name)],
    )
    records.write_csv_atomic(
        ctx.out("failures.csv"),
        records.FAILURE_COLUMNS,
        [r for c in chunks for r in records.failure_rows(c, paths)],
    )


def write_latents(ctx: Context, chunks: list[dict]) -> None:
    """All committed latents in id order: latents.npz {ids, latents, status}."""
    if not chunks:
        return
    ids = np.concatenate([c["ids"] for c in chunks])
    keep = ids >= 0
    order = np.argsort(ids[keep], kind="stable")
    cat = lambda k: np.concatenate([c[k] for c in chunks])[keep][order]
    atomic.write_npz(
        ctx.out("latents.npz"), ids=ids[keep][order], latents=cat("latent"), status=cat("status")
    )


def write_summary(
    ctx: Context,
    chunks: list[dict],
    wall: float,
    session_images: int,
    stitched: Optional[dict] = None,
) -> dict:
    cfg = json.loads(ctx.config.to_json_best_effort())
    summary = {
        "aggregates": records.aggregate(chunks),
        "total_items": len(ctx.source),
        "complete": len(ctx.manifest.done_ids()) == len(ctx.source),
        "chunks": len(ctx.manifest.chunks),
        "method": ctx.method.name,
        "generator": ctx.config.generator,
        "source": ctx.source.describe(),
        "config": cfg,
        "method_config": json.loads(ctx.mcfg.to_json_best_effort()),
        "versions": reporting.versions(),
        "platform": jax.default_backend(),
        "device_count": len(ctx.global_devices),
        "process_count": ctx.nproc,
        "local_device_count": len(ctx.devices),
        "chunk_size": ctx.chunk_size,
        "this_session": {
            "wall_seconds": round(wall, 3),
            "images": session_images,
            "images_per_second": session_images / wall if wall > 0 else None,
        },
    }
    if stitched is not None:
        summary["stitched"] = stitched
    atomic.write_json(ctx.out("summary.json"), summary)
    return summary


# ----------------------------------------------------------------------------- driver


def cleanup_partial(workdir: str) -> None:
    """Remove temporary files of writes a kill interrupted (never a finished output)."""
    for root, dirs, files in os.walk(workdir):
        for d in list(dirs):
            if ".tmp-" in d or ".orbax-checkpoint-tmp" in d:
                shutil.rmtree(os.path.join(root, d), ignore_errors=True)
                dirs.remove(d)
        for f in files:
            if ".tmp-" in f:
                try:
                    os.remove(os.path.join(root, f))
                except OSError:
                    pass


def plan(ctx: Context) -> list[list[int]]:
    """Unfinished chunks, identical on every process (process 0's manifest is broadcast)."""
    done = np.zeros((len(ctx.source),), np.bool_)
    done[list(ctx.manifest.done_ids())] = True
    if ctx.nproc > 1:
        from jax.experimental import multihost_utils

        done = np.asarray(multihost_utils.broadcast_one_to_all(done))
    return manifest_lib.plan_chunks(
        len(ctx.source), set(np.flatnonzero(done).tolist()), ctx.chunk_size
    )


def execute(ctx: Context, preempt: preemption.Preemption) -> dict:
    t_start = time.perf_counter()
    views = []
    if ctx.pid == 0:
        try:
            for d in ("recon", "grids", "chunks", "tuned"):
                os.makedirs(ctx.out(d), exist_ok=True)
            cleanup_partial(ctx.workdir)
            views = committed_chunks(ctx)
            rebuild_views(ctx, views)
        except OSError as e:
            raise JobError(
                f"cannot prepare the workdir: {e.filename or ctx.workdir} ({e.strerror or e})"
            ) from None
    barrier(ctx, "ganinv-invert-setup")
    chunks = plan(ctx)
    total = len(ctx.source)
    progress = reporting.Progress(total, total - sum(len(c) for c in chunks))
    logging.info(
        "invert: %d items, %d already done, %d chunks of %d to go (method %s, %d "
        "devices, %d processes)",
        total,
        progress.done,
        len(chunks),
        ctx.chunk_size,
        ctx.method.name,
        len(ctx.global_devices),
        ctx.nproc,
    )
    failed = (
        sum(int(np.isin(c["status"], (records.FAILED, records.BAD_INPUT)).sum()) for c in views)
        if ctx.pid == 0
        else 0
    )
    writer = reporting.make_writer(ctx.out("tensorboard"), ctx.pid == 0)
    try:
        run_chunks(ctx, chunks, writer, progress, failed, preempt)
    finally:
        writer.close()  # also on errors: the event file must not stay open
    summary = {}
    if ctx.pid == 0:
        try:
            summary = finish(
                ctx, time.perf_counter() - t_start, progress.done - progress.start_done
            )
        except OSError as e:
            raise JobError(
                f"cannot write {e.filename or 'the final reports'} ({e.strerror or e})"
                "; every chunk is committed: free space and rerun to write the "
                "reports"
            ) from None
    barrier(ctx, "ganinv-invert-end")
    return summary


def run_chunks(
    ctx: Context,
    chunks,
    writer,
    progress: reporting.Progress,
    failed: int,
    preempt: preemption.Preemption,
) -> None:
    total = len(ctx.source)
    # Decoding of chunk k+1 (files, arrays, TFDS) overlaps the inversion of chunk k.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="decode") as prefetch:
        pending = prefetch.submit(load_slots, ctx, chunks[0]) if chunks else None
        for k, chunk in enumerate(chunks):
            loaded = pending.result()
            if k + 1 < len(chunks):
                pending = prefetch.submit(load_slots, ctx, chunks[k + 1])
            full, grid = process_chunk(ctx, chunk, loaded)
            failed += int(np.isin(full["status"], (records.FAILED, records.BAD_INPUT)).sum())
            line = progress.update(len(chunk), failed)
            if ctx.pid == 0:
                reporting.report_chunk(writer, progress.done, full, grid)
                logging.info("%s", line)
            if k + 1 < len(chunks) and preempt.should_stop():  # same answer on every process
                raise SystemExit(
                    f"invert: stopped by SIGTERM after "
                    f"{manifest_lib.chunk_name(chunk)} ({progress.done}/{total} "
                    "images done); rerun the same command to resume"
                )


def finish(ctx: Context, wall: float, session_images: int) -> dict:
    """Process 0, after the last chunk: final CSVs (sorted, exactly the manifest), the merged
    latents and summary.json."""
    done_chunks = committed_chunks(ctx)
    rebuild_views(ctx, done_chunks)
    if ctx.config.output.merge_latents:
        write_latents(ctx, committed_chunks(ctx, keys=("ids", "latent", "status")))
    stitched = None
    if isinstance(ctx.source, tiling.TiledSource):  # config.tile: N x N tiles -> stitched/
        stitched = tiling.stitch(
            ctx.workdir,
            ctx.source,
            ctx.pre,
            ctx.lpips,
            ctx.config.lpips_net,
            grid_pairs=int(ctx.config.output.grid_pairs),
        )
    summary = write_summary(ctx, done_chunks, wall, session_images, stitched)
    logging.info("%s", reporting.done_line(summary, ctx.workdir))
    return summary


def run(config, workdir: str, devices: Optional[Sequence] = None) -> dict:
    """Entry point of task 'invert'. Problems the user must fix exit with one line."""
    with errors.exit_on_user_error("invert"):
        ctx = prepare(config, workdir, devices)
        # SIGTERM (preemption, scancel, a TPU VM shutting down) finishes and commits the chunk
        # in flight, then every process stops after that same chunk: no work is lost.
        with preemption.Preemption(
            message="invert: stopping after the chunk in flight is committed"
        ) as preempt:
            return execute(ctx, preempt)


def load_tuned(workdir: str, image_id: int):
    """The tuned generator delta (PTI/Clone) or GMM params of one image, from the workdir."""
    from ganinv_jax import checkpointing

    with open(os.path.join(workdir, manifest_lib.MANIFEST)) as f:
        chunks = json.load(f)["chunks"]
    for c in chunks:
        if image_id in manifest_lib.expand(c["ids"]):
            if not c.get("tuned"):
                raise KeyError(f"image {image_id}: this method saved no tuned parameters")
            tree = checkpointing.restore_sharded_pytree(os.path.join(workdir, c["tuned"]))
            j = int(np.flatnonzero(np.asarray(tree["ids"]) == image_id)[0])
            return jax.tree_util.tree_map(lambda x: np.asarray(x)[j], tree["tuned"])
    raise KeyError(f"image {image_id}: not in a finished chunk of {workdir}")
