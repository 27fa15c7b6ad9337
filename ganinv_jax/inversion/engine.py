"""Batch engine: runs a per-image `Method` over many images, sharded over devices.

    out = invert_batch(method, frozen, images, image_ids, init_latents, cfg, seed=0)

What it guarantees:
  * Per-image randomness: image i uses `fold_in(key(seed), image_ids[i])`, so its result does not
    depend on its batch, its position, the device count or the batching strategy (up to float
    reassociation: allclose, not bitwise, across strategies).
  * K = `steps_per_call` method steps per compiled call (`lax.scan`); the host only checks, between
    calls, whether every image has stopped. One compile per (method, cfg, strategy, K, mesh,
    shapes).
  * Per-image masks: an image whose `method.converged(metrics)` became true, or whose step
    produced a non-finite value (NaN/Inf: `failed`; the bad step is discarded), stops changing
    exactly (its state is selected unchanged: a `lax.cond` per image under 'map', a select
    under vmap; a method with `commits_itself` (PTI) gates its own optimizer update instead,
    with no pass over the state) while the others go on. `iterations[i]` counts the steps
    image i actually took. One exception, for `commits_itself` methods: a step whose loss was
    finite but whose update was not (a non-finite gradient) is not discarded -- the image is
    marked failed with that state (the job records it as failed either way).
  * Batching strategy inside each device: 'vmap' | 'map' (`lax.map`, one image at a time) |
    'chunked' (`lax.map(batch_size=chunk_size)`: vmap inside chunks) | 'auto' (see `auto_strategy`).
    Why it matters: with XLA's native convs a per-image TUNED generator under vmap makes every
    conv a grouped conv with per-image kernels, which XLA:CPU runs 6-20x slower; the CPU default
    conv form (`ops.conv`, GEMMs) makes them batched GEMMs instead, so 'auto' is vmap unless
    native convs run on CPU. On GPU/TPU grouped convs are fast and vmap fills the device.
  * Sharding: the image axis is split over a 1-D mesh ('data',) of `devices` (default: all) with
    `shard_map`; the frozen inputs are replicated. The batch is padded to a multiple of the device
    count with inactive copies of image 0 (they never step under map; results are dropped).

Result keys (numpy arrays, leading axis B in input order):
  latent      [B, *latent_shape]  final latent (StyleGAN2: W+ [num_ws, w_dim], W methods the
                                  same w on every layer; PGGAN: z; BigGAN: concat(z, class))
  recon       [B, H, W, C]        reconstruction by the (tuned) generator, in [-1, 1] (unclamped)
  tuned       pytree [B, ...] | None  PTI/Clone: delta of tuned G params against the frozen base;
                                  GMM: the module params phi; latent_opt: None
  iterations  [B] int32           steps taken
  converged   [B] bool            the method's stop criterion was met
  failed      [B] bool            a step produced NaN/Inf (state kept from the last finite step,
                                  but see the exception above)
  metrics     dict of [B]         the metrics of each image's last step (a method's
                                  `state_metrics`, e.g. drift: of its state after the call)
  best_mse, best_step [B]         with keep_best=True: the kept state's recon MSE (clipped to
                                  [-1, 1]) and step
  best_drift [B]                  with a drift budget: the kept state's probe drift (below)
  history     dict of [C, B]      the same metrics after each of the C compiled calls (a
                                  convergence curve at K-step resolution; a stopped image repeats
                                  its last value), with history_steps [C] = steps done per call
  + method-specific extras (e.g. 'noise' for latent_opt with noise optimization).
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from ganinv_jax import sharding as shd
from ganinv_jax.inversion import base
from ganinv_jax.losses import common as losses_common
from ganinv_jax.ops import conv as conv_ops

STRATEGIES = ("vmap", "map", "chunked")
AXIS = shd.DATA_AXIS
# The drift budget's probe latents: fixed, and not the quality table's (seed 99), so the table's
# drift column measures the budget on latents the selection never saw.
DRIFT_PROBE_SEED = 7


def auto_strategy(method: base.Method, backend: Optional[str] = None) -> str:
    """The 'auto' rule: 'vmap', except 'map' on CPU when convolutions run in XLA's native form.

    Measured (benchmarks/bench_vs_torch.py, PTI at 64x64 / 128 ch, 8 images, LPIPS-VGG, 2-core
    CPU; README "Speed"): with the patches-GEMM convolutions of `ops.conv` (the CPU default) the
    per-image generator weights under vmap become batched GEMMs and the frozen LPIPS weights one
    large GEMM, and vmap beats map (10.5 vs 8.4 image-steps/s). With the native conv form, vmap
    turns per-image kernels into grouped convolutions that XLA:CPU runs 6-20x slower, so 'map'.
    On GPU/TPU grouped convs are fast and vmap fills the device. `method` is kept in the
    signature for per-method rules.
    """
    backend = backend or jax.default_backend()
    del method
    if backend == "cpu" and conv_ops.resolve_impl(backend=backend) == "native":
        return "map"
    return "vmap"


def _batched(fn, strategy: str, chunk_size: int):
    """fn(*per_image_args, frozen) -> g(frozen, *stacked_args) under the strategy.

    The frozen pytree is closed over inside the mapped function, so it is broadcast (never
    stacked or batched) under every strategy."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: expected one of {STRATEGIES} or 'auto'")

    def apply(frozen, *xs):
        f = lambda *a: fn(*a, frozen)
        if strategy == "vmap":
            return jax.vmap(f)(*xs)
        if strategy == "map":
            return lax.map(lambda a: f(*a), xs)
        return lax.map(lambda a: f(*a), xs, batch_size=chunk_size)

    return apply


def _metric_zeros(method, state, frozen, cfg):
    shapes = jax.eval_shape(
        lambda s, f: _with_state_metrics(method, cfg, method.step(s, f, cfg)[1], s, f),
        state,
        frozen,
    )
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, jnp.float32), shapes)


def _with_state_metrics(method, cfg, metrics, state, frozen):
    """`metrics` plus the method's `state_metrics` of `state` (float32)."""
    if method.state_metrics is None:
        return metrics
    extra = method.state_metrics(state, frozen, cfg)
    return dict(metrics, **{k: jnp.asarray(v, jnp.float32) for k, v in extra.items()})


def _recon_mse(method, state, frozen, cfg, target):
    """MSE of the reconstruction `method.result` makes from `state` against the target, the
    reconstruction clipped to the images' [-1, 1] as it is saved and scored (unclipped, an
    overshoot past a black background counts as error no output shows)."""
    recon = method.result(state, frozen, cfg)["recon"]
    return base.mse1(jnp.clip(recon, -1.0, 1.0), target)


def probe_drift(method, state, frozen, cfg, n_probes: int):
    """The papers' locality, cheaply: MSE (on [0, 1] images, as the quality table) between the
    frozen G and the G `state` stands for, on `n_probes` fixed random latents (seed
    DRIFT_PROBE_SEED). Zero for a method that tunes no weights. The probe latents and the base
    images do not depend on the image, so under vmap they are computed once per call."""
    if method.tuned_g is None:
        return jnp.zeros((), jnp.float32)
    ws = base.random_ws(frozen, jax.random.key(DRIFT_PROBE_SEED), n_probes)
    orig = base.synthesize(frozen, ws)
    tuned = base.synthesize(frozen, ws, method.tuned_g(state, frozen, cfg))
    return jnp.mean(jnp.square(tuned - orig)) / 4.0


def _per_image_init(method, cfg, keep_best: bool, n_probes: int):
    def init_one(key, image, latent, active, max_drift, frozen):
        state = method.init(key, image, frozen, latent, cfg)
        carry = dict(
            state=state,
            done=~active,
            failed=jnp.asarray(False),
            iters=jnp.asarray(0, jnp.int32),
            metrics=_metric_zeros(method, state, frozen, cfg),
        )
        if keep_best:  # the start (the pivot) is the first candidate, whatever its drift
            carry.update(
                target=image,
                best=state,
                best_mse=_recon_mse(method, state, frozen, cfg, image),
                best_step=jnp.asarray(0, jnp.int32),
            )
            if n_probes:
                carry["max_drift"] = max_drift
                carry["best_drift"] = probe_drift(method, state, frozen, cfg, n_probes)
        return carry

    return init_one


def _keep_best(method, cfg, c, frozen, n_probes: int):
    """After a compiled call: if the current state reconstructs the target better than the best
    kept so far, it becomes the best (an exact MSE of `result`'s recon, one forward pass per
    image per call: a method's own `mse` metric may be of another iterate, e.g. GMM's). With a
    drift budget (n_probes > 0) only a state whose probe drift is <= c["max_drift"] can."""
    mse = _recon_mse(method, c["state"], frozen, cfg, c["target"])
    better = jnp.isfinite(mse) & (mse < c["best_mse"])
    new = {}
    if n_probes:
        drift = probe_drift(method, c["state"], frozen, cfg, n_probes)
        better = better & (drift <= c["max_drift"])
        new["best_drift"] = jnp.where(better, drift, c["best_drift"])
    return dict(
        c,
        best=base.tree_where(better, c["state"], c["best"]),
        best_mse=jnp.where(better, mse, c["best_mse"]),
        best_step=jnp.where(better, c["iters"], c["best_step"]),
        **new,
    )


def _per_image_run(method, cfg, k: int, skip_inactive: bool, keep_best: bool, n_probes: int):
    """One image's K-step scan. skip_inactive: a `lax.cond` skips the step of a stopped image
    (the 'map' strategy: a real branch). Under `vmap` a cond with a per-image predicate becomes a
    select that also batches every operand its branches close over -- the frozen G and LPIPS
    weights would be broadcast to [B, ...] and every shared-weight GEMM would become a batched
    one (measured: 23 ms per image-step of broadcasts in the PTI step). So under vmap the step
    runs for every image and a select keeps the stopped ones unchanged: same results."""

    def step_one(c, frozen, active):
        """One step; an inactive image or a non-finite step keeps its state: the method's own
        gated update (`Method.commits_itself`), else one select over the state."""
        if method.commits_itself:
            state, metrics = method.step(c["state"], frozen, cfg, active)
        else:
            state, metrics = method.step(c["state"], frozen, cfg)
        metrics = jax.tree_util.tree_map(lambda m: jnp.asarray(m, jnp.float32), metrics)
        # Leaves the step passed through untouched (the target, its cached LPIPS features) are
        # the same traced values: checking and selecting them every step is pure memory traffic.
        changed = [
            n
            for n, o in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(c["state"]))
            if n is not o
        ]
        ok = losses_common.tree_all_finite(metrics) & losses_common.tree_all_finite(changed)
        keep = ok & active
        if not method.commits_itself:
            state = jax.tree_util.tree_map(
                lambda n, o: o if n is o else jnp.where(keep, n, o), state, c["state"]
            )
        return dict(
            c,
            state=state,
            done=jnp.where(
                active, ok & jnp.asarray(method.converged(metrics, cfg), bool), c["done"]
            ),
            failed=jnp.where(active, ~ok, c["failed"]),
            iters=c["iters"] + keep.astype(jnp.int32),
            # the state metrics' slots keep their last value: `run_one` fills them after the scan
            metrics=base.tree_where(active, dict(c["metrics"], **metrics), c["metrics"]),
        )

    def run_one(c, n_allowed, frozen):
        def body(c, i):
            active = ~c["done"] & ~c["failed"] & (i < n_allowed)
            if skip_inactive:
                return lax.cond(active, lambda c: step_one(c, frozen, True), lambda c: c, c), None
            return step_one(c, frozen, active), None

        c = lax.scan(body, c, jnp.arange(k))[0]
        # the state metrics of the state the K steps ended on
        c = dict(c, metrics=_with_state_metrics(method, cfg, c["metrics"], c["state"], frozen))
        return _keep_best(method, cfg, c, frozen, n_probes) if keep_best else c

    return run_one


def _per_image_result(method, cfg, keep_best: bool):
    def result_one(c, frozen):
        return method.result(c["best"] if keep_best else c["state"], frozen, cfg)

    return result_one


def _freeze_cfg(cfg):
    return (
        cfg
        if isinstance(cfg, ml_collections.FrozenConfigDict)
        else ml_collections.FrozenConfigDict(cfg)
    )


@functools.lru_cache(maxsize=64)
def _compiled(
    method: base.Method,
    cfg,
    strategy: str,
    chunk_size: int,
    k: int,
    mesh: jax.sharding.Mesh,
    compiler_options: Optional[tuple] = None,
    conv_impl: str = "auto",
    keep_best: bool = False,
    n_probes: int = 0,
):
    """jit(shard_map(batched per-image fns)) for init / run / result (cached per signature;
    `conv_impl`, the `ops.conv` form in force, is part of it: a jit traced under one form keeps
    it). n_probes > 0: keep_best under a drift budget (its value is a runtime input of init)."""
    data = shd.batch_sharding(mesh)
    repl = shd.replicated(mesh)
    sm = functools.partial(jax.shard_map, mesh=mesh, check_vma=False)
    jit = functools.partial(jax.jit, compiler_options=dict(compiler_options or ()) or None)
    init_b = _batched(_per_image_init(method, cfg, keep_best, n_probes), strategy, chunk_size)
    run_b = _batched(
        _per_image_run(method, cfg, k, strategy == "map", keep_best, n_probes), strategy, chunk_size
    )
    res_b = _batched(_per_image_result(method, cfg, keep_best), strategy, chunk_size)

    def init_local(keys, images, latents, active, max_drift, frozen):
        return init_b(frozen, keys, images, latents, active, max_drift)

    def run_local(carry, n_allowed, frozen):
        n = carry["iters"].shape[0]
        return run_b(frozen, carry, jnp.broadcast_to(n_allowed, (n,)))

    def res_local(carry, frozen):
        return res_b(frozen, carry)

    init = jit(
        sm(init_local, in_specs=(P(AXIS),) * 5 + (P(),), out_specs=P(AXIS)),
        in_shardings=(data,) * 5 + (repl,),
        out_shardings=data,
    )
    run = jit(
        sm(run_local, in_specs=(P(AXIS), P(), P()), out_specs=P(AXIS)),
        in_shardings=(data, repl, repl),
        out_shardings=data,
        donate_argnums=0,
    )
    res = jit(
        sm(res_local, in_specs=(P(AXIS), P()), out_specs=P(AXIS)),
        in_shardings=(data, repl),
        out_shardings=data,
    )
    return init, run, res


def invert_batch(
    method: base.Method,
    frozen: base.Frozen,
    images,
    image_ids,
    init_latents=None,
    cfg: Optional[ml_collections.ConfigDict] = None,
    *,
    seed: int = 0,
    strategy: str = "auto",
    steps: Optional[int] = None,
    steps_per_call: int = 10,
    chunk_size: int = 4,
    devices: Optional[Sequence[Any]] = None,
    stop_early: bool = True,
    compiler_options: Optional[dict] = None,
    keep_best: bool = False,
    max_drift: float = 0.0,
    drift_probes: int = 8,
) -> dict:
    """Inverts images [B,H,W,C] in [-1,1] (ids [B] int) with `method`; see the module docstring
    for the result keys.

    init_latents: [B, *latent_shape] of `frozen.arch` (StyleGAN2: [B, num_ws, w_dim] or
      [B, w_dim], W+ or W; PGGAN: [B, z_dim]; BigGAN: [B, z_dim + num_classes]), or None for
      the architecture's mean / start latent (StyleGAN2: the mean w).
    cfg: the method's ConfigDict (default `method.default_config()`).
    steps: the maximum number of steps per image (default `cfg.num_steps`; 0 without one).
    steps_per_call: K, the scan length of one compiled call.
    chunk_size: images per vmap chunk for strategy='chunked'.
    devices: the devices of the 1-D mesh ('data',) (default: all).
    stop_early: stop calling once every image has converged or failed.
    compiler_options: XLA options for the compiled calls (e.g. tests use
      {'xla_backend_optimization_level': 0} to halve CPU compile time).
    keep_best: return, per image, the state whose reconstruction had the lowest MSE to the
      image among the start and the ends of the compiled calls (every `steps_per_call` steps)
      instead of the last one: a tuning run never ends above its pivot's error. Costs a second
      copy of each image's state and one forward pass per image per call. Adds `best_mse`
      (of the reconstruction clipped to [-1, 1], as saved) and `best_step` (steps taken when
      it was kept) to the result.
    max_drift: > 0 (needs keep_best): a drift budget -- only a state whose `probe_drift` (MSE
      between the frozen and the tuned G on `drift_probes` fixed random latents) is <= max_drift
      can be kept, so each image's tuned G stays within the budget at a call end the run
      reached (its start always qualifies). Adds `best_drift`. Costs 2 x drift_probes forward
      passes per image per call (the frozen half once under vmap).
    """
    cfg = method.default_config() if cfg is None else cfg
    fcfg = _freeze_cfg(cfg)
    steps = int(cfg.get("num_steps", 0) if steps is None else steps)  # none: zero-step methods
    if strategy == "auto":
        strategy = auto_strategy(method)
    if max_drift > 0 and not keep_best:
        raise ValueError("max_drift (a drift budget) selects among kept states: needs keep_best")
    n_probes = int(drift_probes) if max_drift > 0 else 0
    images = jnp.asarray(images, jnp.float32)
    image_ids = np.asarray(image_ids, np.int64).reshape(-1)
    b = images.shape[0]
    if images.ndim != 4 or image_ids.shape[0] != b:
        raise ValueError(
            f"images must be [B,H,W,C] with B ids, got {images.shape} and {image_ids.shape[0]} ids"
        )
    arch = frozen.arch
    if init_latents is None:
        latents = jnp.broadcast_to(base.mean_latent(frozen), (b, *arch.latent_shape))
    else:
        latents = arch.check_latents(init_latents, b)

    mesh = shd.make_mesh(devices=devices, explicit=True)
    n_dev = mesh.devices.size
    b_pad = -(-b // n_dev) * n_dev
    pad = b_pad - b
    idx = np.concatenate([np.arange(b), np.zeros(pad, np.int64)])
    active = np.arange(b_pad) < b
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(
        jnp.asarray(image_ids[idx], jnp.uint32)
    )
    init, run, res = _compiled(
        method,
        fcfg,
        strategy,
        int(chunk_size),
        int(steps_per_call),
        mesh,
        tuple(sorted((compiler_options or {}).items())),
        conv_ops.resolve_impl(),
        bool(keep_best),
        n_probes,
    )

    data, repl = shd.batch_sharding(mesh), shd.replicated(mesh)
    frozen = jax.device_put(frozen, repl)
    budgets = jnp.full((b_pad,), max_drift, jnp.float32)
    carry = init(
        *jax.device_put((keys, images[idx], latents[idx], jnp.asarray(active), budgets), data),
        frozen,
    )
    done_steps, history, history_steps = 0, [], []
    while done_steps < steps:
        n_allowed = jax.device_put(
            jnp.asarray(min(steps_per_call, steps - done_steps), jnp.int32), repl
        )
        carry = run(carry, n_allowed, frozen)
        done_steps = min(done_steps + steps_per_call, steps)
        # the host syncs here anyway (stop test); the metrics are a few floats per image
        history.append(jax.device_get(carry["metrics"]))
        history_steps.append(done_steps)
        if stop_early and bool(jnp.all(carry["done"] | carry["failed"])):
            break
    out = res(carry, frozen)
    out = dict(out)
    out.update(
        iterations=carry["iters"],
        converged=carry["done"] & ~carry["failed"],
        failed=carry["failed"],
        metrics=carry["metrics"],
    )
    if keep_best:
        out.update(best_mse=carry["best_mse"], best_step=carry["best_step"])
    if n_probes:
        out["best_drift"] = carry["best_drift"]
    out = jax.tree_util.tree_map(lambda x: np.asarray(x)[:b], jax.device_get(out))
    out["history"] = (
        jax.tree_util.tree_map(lambda *xs: np.stack(xs)[:, :b], *history) if history else {}
    )
    out["history_steps"] = np.asarray(history_steps, np.int32)
    return out
