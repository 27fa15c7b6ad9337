"""The per-image method interface and the frozen (broadcast) inputs every method sees.

A method is written for ONE image and is a set of pure functions of pytrees:

  init(key, image [H,W,C], frozen, init_latent [*latent_shape], cfg) -> state
  step(state, frozen, cfg) -> (state, metrics)     # metrics: dict of scalars (one image)
  result(state, frozen, cfg) -> {'latent': [*latent_shape], 'recon': [H,W,C],
                                  'tuned': pytree|None, ...method extras}
  converged(metrics, cfg) -> bool scalar           # the method's own stop criterion

(`cfg` is a static `ml_collections.ConfigDict`; the engine closes over it.) The engine
(`engine.invert_batch`) maps these over a batch of images, keeps per-image convergence masks and
iteration counts, and shards the image axis over devices. `Frozen` holds what every image shares:
the base generator (and D for Clone), the LPIPS weights, an optional real-image batch and latent
statistics. It is broadcast (`in_axes=None` / replicated over the mesh), never stacked per image.

Architectures: `Frozen.arch` (static, `inversion.arch`) says what a latent is, how it renders,
what random latents and the mean latent are, which params PTI/GMM tune and what the D is; the
helpers below (`synthesize`, `random_ws`, `mean_latent`, `discriminate`, `check_latent`) dispatch
through it, so the methods run on StyleGAN2 (W+ [num_ws, w_dim]), PGGAN (z) and BigGAN
(z + class) alike.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ganinv_jax import losses
from ganinv_jax.inversion import arch as arch_lib
from ganinv_jax.inversion.arch import arch_for, w_statistics  # noqa: F401 (re-exported)
from ganinv_jax.losses import common as loss_common
from ganinv_jax.models import stylegan2 as sg2
from ganinv_jax.ops import conv as conv_ops

Array = jax.Array
PyTree = Any


class Method(NamedTuple):
    """A per-image inversion method: pure functions plus its default config."""

    name: str
    init: Callable[..., PyTree]
    step: Callable[..., tuple[PyTree, dict]]
    result: Callable[..., dict]
    default_config: Callable[[], ml_collections.ConfigDict]
    converged: Callable[[dict, ml_collections.ConfigDict], Array]
    tunes_weights: bool = True  # per-image weights (drives the 'auto' strategy)
    encodes: bool = False  # starts from Frozen.encoder's own encoding (init_latent ignored)
    # (state, frozen, cfg) -> the G params a state stands for (the full tree or its tunable
    # sub-tree, as `synthesize` takes them); None: the frozen G (the engine's drift budget)
    tuned_g: Optional[Callable[..., PyTree]] = None
    # step(state, frozen, cfg, commit=True) takes the engine's per-image `commit` (a traced
    # bool: the image is still running) and returns the state unchanged where it is False or
    # where its own loss is non-finite (its optimizer gates the update, `adam_step`), so the
    # engine skips its select over the whole state; False: the engine selects.
    commits_itself: bool = False
    # (state, frozen, cfg) -> {name: scalar}: metrics of the state itself (e.g. how far the
    # tuned weights drifted from the base), computed by the engine once per compiled call after
    # its steps, not by every step: a pass over all tuned weights per step (and the frozen base
    # broadcast to every image under vmap) measured ~3% of bench_vs_torch's PTI step.
    state_metrics: Optional[Callable[..., dict]] = None


@flax.struct.dataclass
class Frozen:
    """Shared, never-stacked inputs of a batch inversion (a pytree; architecture fields static).

    g: generator variables {'params': ..., ['buffers': ...]} (the base G, e.g. G_ema).
    d: discriminator variables {'params': ...} or None (Clone needs it).
    lpips: LPIPS params from `losses.lpips.load_lpips_params`, or None.
    reals: [M,H,W,C] images from G's training distribution for Clone's global loss, or None
      (Clone then falls back to samples of the frozen original G).
    w_avg, w_std: the latent statistics of `arch.statistics`: StyleGAN2: the mean of
      w = mapping(z) and the projector's scalar spread sqrt(E|w - w_avg|^2); other
      architectures: the center of their start latent and the spread of their random latents.
    g_cfg: the generator's config (static). lpips_net: 'vgg' | 'alex' (static).
    lpips_dtype, g_dtype: 'float32' | 'bfloat16' (static): the operand dtype of the GEMMs of the
      LPIPS backbone in the methods' losses / of G's convolutions in `synthesize` (bf16: operands
      rounded, float32 accumulation, activations and parameters -- mixed precision; XLA:CPU runs
      such GEMMs ~2x float32 on AVX512-BF16). Metrics and tables always use float32 LPIPS.
    id_loss: optional feature loss (x, y, NHWC batches) -> [N] for GMM's identity term (static).
    arch: the `inversion.arch.Arch` (static); None -> `arch_for(g_cfg)` (its defaults).
    encoder: a trained encoder's params (`ganinv_jax.encoders`) or None; encoder_cfg: its
      `EncoderConfig` (static). The `encoder` / `encoder_ft` methods need them.
    """

    g: PyTree
    w_avg: Array
    w_std: Array
    g_cfg: Any = flax.struct.field(pytree_node=False)
    d: Optional[PyTree] = None
    lpips: Optional[PyTree] = None
    reals: Optional[Array] = None
    lpips_net: str = flax.struct.field(pytree_node=False, default="vgg")
    lpips_dtype: str = flax.struct.field(pytree_node=False, default="float32")
    g_dtype: str = flax.struct.field(pytree_node=False, default="float32")
    id_loss: Optional[Callable] = flax.struct.field(pytree_node=False, default=None)
    arch: Optional[arch_lib.Arch] = flax.struct.field(pytree_node=False, default=None)
    encoder: Optional[PyTree] = None
    encoder_cfg: Any = flax.struct.field(pytree_node=False, default=None)

    def __post_init__(self):
        if self.arch is None:
            object.__setattr__(self, "arch", arch_for(self.g_cfg))


GEMM_DTYPES = ("float32", "bfloat16")


def check_gemm_dtypes(**named: str) -> None:
    """ValueError naming the first of `named` (e.g. g_dtype='float16') not in GEMM_DTYPES."""
    for name, value in named.items():
        if value not in GEMM_DTYPES:
            raise ValueError(f"{name}={value!r}: expected one of {GEMM_DTYPES}")


def make_frozen(
    g_cfg: Any,
    g_vars: PyTree,
    *,
    d_vars: Optional[PyTree] = None,
    lpips: Any = "vgg",
    reals: Optional[Array] = None,
    id_loss=None,
    w_stats_samples: int = 10000,
    lpips_net: Optional[str] = None,
    arch: Optional[arch_lib.Arch] = None,
    encoder: Any = None,
    lpips_dtype: str = "float32",
    g_dtype: str = "float32",
) -> Frozen:
    """Builds the frozen inputs. `lpips`: 'vgg' | 'alex' (load the real weights), a params pytree
    (of net `lpips_net`, default 'vgg'), or None (no LPIPS: methods must then use
    perceptual='none' or 'pooled_l2'). `arch`: an `inversion.arch.Arch` for `g_cfg` (default
    `arch_for(g_cfg)`; e.g. `arch_for(biggan_cfg, truncation=0.4, class_mode='given')`).
    `encoder`: a `encoders.TrainedEncoder` (for the `encoder` / `encoder_ft` methods), checked
    against `g_cfg`. `lpips_dtype`, `g_dtype`: 'float32' | 'bfloat16' (see `Frozen`)."""
    check_gemm_dtypes(lpips_dtype=lpips_dtype, g_dtype=g_dtype)
    net = lpips_net or "vgg"
    if isinstance(lpips, str):
        net = lpips
        lpips = losses.load_lpips_params(net)
    arch = arch_for(g_cfg) if arch is None else arch
    if arch.cfg != g_cfg:
        raise ValueError(f"arch {arch.name} was made for another config than g_cfg")
    if encoder is not None:
        if arch.name != "stylegan2":
            raise ValueError(f"trained encoders exist for StyleGAN2 only, not {arch.name}")
        encoder.check_generator(g_cfg)
    w_avg, w_std = arch.statistics(g_vars, w_stats_samples, 123)
    return Frozen(
        g=g_vars,
        w_avg=w_avg,
        w_std=w_std,
        g_cfg=g_cfg,
        d=d_vars,
        lpips=lpips,
        reals=None if reals is None else jnp.asarray(reals, jnp.float32),
        lpips_net=net,
        lpips_dtype=lpips_dtype,
        g_dtype=g_dtype,
        id_loss=id_loss,
        arch=arch,
        encoder=None if encoder is None else encoder.params,
        encoder_cfg=None if encoder is None else encoder.config,
    )


# ----------------------------------------------------------------------------- G / D helpers


def synthesize(
    frozen: Frozen,
    ws: Array,
    params: Optional[PyTree] = None,
    *,
    noise_mode: str = "const",
    noise: Optional[dict] = None,
    rng: Optional[Array] = None,
) -> Array:
    """latents [N, *latent_shape] -> images [N,H,W,C] with G params `params` (default: the
    frozen ones). `params` may be the full G param tree or its tunable sub-tree (StyleGAN2:
    'synthesis'). Noise arguments only mean something for StyleGAN2."""
    with conv_ops.use_operand_dtype(jnp.dtype(frozen.g_dtype)):
        return frozen.arch.render(frozen.g, ws, params, noise_mode=noise_mode, noise=noise, rng=rng)


def mapping(frozen: Frozen, z: Array, params: Optional[PyTree] = None) -> Array:
    """StyleGAN2: z [N,z_dim] -> ws [N,num_ws,w_dim] (params: full G tree, default the frozen
    one). Other architectures: see `latents_from_prior`."""
    p = frozen.g["params"] if params is None else params
    gen = sg2.Generator(frozen.g_cfg)
    return gen.apply({"params": p, "buffers": frozen.g["buffers"]}, z, method=gen.mapping)


def latents_from_prior(frozen: Frozen, prior: Array, params: Optional[PyTree] = None) -> Array:
    """Prior samples (`arch.sample_prior`) -> latents: StyleGAN2's mapping, else the identity."""
    return frozen.arch.latents_from_prior(frozen.g, prior, params)


def discriminate(frozen: Frozen, images: Array, params: Optional[PyTree] = None) -> Array:
    """images [N,H,W,C] -> logits [N] with D params `params` (default: the frozen ones)."""
    if frozen.d is None:
        raise ValueError("this method needs a discriminator: make_frozen(..., d_vars=...)")
    variables = dict(frozen.d)
    if params is not None:
        variables["params"] = params
    return frozen.arch.discriminate(variables, images)


def mean_latent(frozen: Frozen) -> Array:
    """The mean / start latent [*latent_shape] (StyleGAN2: the mean w broadcast to W+)."""
    return frozen.arch.mean_latent(frozen.w_avg)


def random_ws(frozen: Frozen, key: Array, n: int) -> Array:
    """n random latents [n, *latent_shape] (StyleGAN2: w = mapping(z), z ~ N(0, I), as W+)."""
    return frozen.arch.random_latents(frozen.g, key, n)


random_latents = random_ws


# ----------------------------------------------------------------------------- losses


def to_rgb(x: Array) -> Array:
    """LPIPS needs 3 channels: grayscale images are repeated (the usual convention)."""
    return jnp.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


_PERCEPTUAL_KINDS = ("lpips", "pooled_l2", "none")


def _check_perceptual(frozen: Frozen, kind: str) -> None:
    if kind not in _PERCEPTUAL_KINDS:
        raise ValueError(
            f"unknown perceptual loss {kind!r}: expected 'lpips', 'pooled_l2' or 'none'"
        )
    if kind == "lpips" and frozen.lpips is None:
        raise ValueError("perceptual='lpips' but frozen.lpips is None (make_frozen(lpips='vgg'))")


def _lpips_features(frozen: Frozen, x: Array) -> tuple[Array, ...]:
    x = to_rgb(x)
    if x.shape[1] < 16:  # VGG's minimum size: nearest-neighbour upsampling
        f = -(-16 // x.shape[1])
        x = jnp.repeat(jnp.repeat(x, f, 1), f, 2)
    return losses.lpips_features(
        frozen.lpips, x, net=frozen.lpips_net, dtype=jnp.dtype(frozen.lpips_dtype)
    )


def perceptual_target(frozen: Frozen, y: Array, kind: str) -> PyTree:
    """The part of `perceptual(frozen, x, y, kind)` that depends on y alone (LPIPS: its
    normalized backbone features; pooled_l2: the pooled images; none: ()). A method computes it
    once for its fixed target image and keeps it in its state (`cache_target_features`)."""
    _check_perceptual(frozen, kind)
    if kind == "lpips":
        return _lpips_features(frozen, y)
    if kind == "pooled_l2":
        return (loss_common.avg_pool(y, 2), loss_common.avg_pool(y, 4))
    return ()


def perceptual_to_target(frozen: Frozen, x: Array, target: PyTree, kind: str) -> Array:
    """`perceptual(frozen, x, y, kind)` given `target = perceptual_target(frozen, y, kind)`."""
    _check_perceptual(frozen, kind)
    if kind == "lpips":
        return losses.lpips_from_features(frozen.lpips, _lpips_features(frozen, x), target)
    if kind == "pooled_l2":
        return 0.5 * (
            loss_common.mse(loss_common.avg_pool(x, 2), target[0])
            + loss_common.mse(loss_common.avg_pool(x, 4), target[1])
        )
    return jnp.zeros((x.shape[0],), jnp.float32)


def perceptual(frozen: Frozen, x: Array, y: Array, kind: str) -> Array:
    """Perceptual distance per image [N] between NHWC batches in [-1, 1].

    kind='lpips': LPIPS v0.1 with the real weights in `frozen.lpips` (images < 16 px are
    upsampled by nearest neighbour to 16, VGG's minimum); 'pooled_l2': a cheap stand-in for
    tests and engine benchmarks (mean of MSEs of 2x, 4x average-pooled images; NOT LPIPS);
    'none': zeros. x and y go through the backbone separately, so that y's half
    (`perceptual_target`) can be computed once for a fixed target.
    """
    return perceptual_to_target(frozen, x, perceptual_target(frozen, y, kind), kind)


def cache_target(frozen: Frozen, target: Array, kind: str, enabled: bool) -> Optional[PyTree]:
    """For a method's `init`: the target's `perceptual_target` when `enabled`, else None."""
    return perceptual_target(frozen, target, kind) if enabled else None


def weighted(weight: float, term: Array) -> Array | float:
    """weight * term for a loss; a weight of 0 leaves the term out of the loss, so a term that
    is only reported (e.g. LPIPS as a metric) costs its forward pass, not a backward pass that
    autodiff would run and multiply by 0."""
    return weight * term if weight else 0.0


def perceptual_to_image(
    frozen: Frozen, x: Array, target: Array, cached: Optional[PyTree], kind: str
) -> Array:
    """`perceptual(frozen, x, target, kind)`, reusing `cached` (from `cache_target`) if given."""
    if cached is None:
        cached = perceptual_target(frozen, target, kind)
    return perceptual_to_target(frozen, x, cached, kind)


def mse1(x: Array, y: Array) -> Array:
    """MSE of two single images (no batch axis) -> scalar."""
    return jnp.mean(jnp.square(x - y))


# ----------------------------------------------------------------------------- pytree utils


def tree_where(pred: Array, a: PyTree, b: PyTree) -> PyTree:
    """Leafwise jnp.where(pred, a, b) with a scalar predicate."""
    return jax.tree_util.tree_map(lambda u, v: jnp.where(pred, u, v), a, b)


def tree_sub(a: PyTree, b: PyTree) -> PyTree:
    return jax.tree_util.tree_map(jnp.subtract, a, b)


def relative_change(new: PyTree, old: PyTree) -> Array:
    """||new - old|| / ||old|| over all leaves (L2): how far tuned weights moved from the base."""
    sq = lambda t: sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(t))  # noqa: E731
    return jnp.sqrt(sq(tree_sub(new, old)) / jnp.maximum(sq(old), 1e-30))


def g_drift(frozen: Frozen, tuned: PyTree) -> dict:
    """A G-tuning method's `state_metrics`: drift = ||θ - θ0|| / ||θ0|| of G's tunable weights
    `tuned` (the `arch.tunable` sub-tree) against the frozen G's."""
    return dict(drift=relative_change(tuned, frozen.arch.tunable(frozen.g["params"])))


def check_latent(latent: Array, arch_or_cfg: Any) -> Array:
    """One image's latent, checked (and StyleGAN2's [w_dim] broadcast) against an `Arch` or a
    generator config: [*latent_shape] float32."""
    a = arch_or_cfg if isinstance(arch_or_cfg, arch_lib.Arch) else arch_for(arch_or_cfg)
    return a.check_latent(latent)


# ----------------------------------------------------------------------------- optimizer


# Adam's defaults (optax's, PTI's): adam_step's, and the moments GMM's grad_norm='adam' keeps
ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8


def adam_init(params: PyTree) -> dict:
    """The state of `adam_step`: the step count and Adam's two moments (zeros like params)."""
    zeros = lambda: jax.tree_util.tree_map(jnp.zeros_like, params)  # noqa: E731
    return dict(count=jnp.zeros((), jnp.int32), mu=zeros(), nu=zeros())


def adam_step(
    params: PyTree,
    opt: dict,
    grads: PyTree,
    lr,
    commit: Array,
    b1: float = ADAM_B1,
    b2: float = ADAM_B2,
    eps: float = ADAM_EPS,
) -> tuple[PyTree, dict]:
    """One Adam step -- optax.adam's math (bias-corrected moments; `lr` a float or a schedule
    of the step count, as `tuning_lr` returns) -- taken only where `commit` (a traced bool) is
    True; where it is False, params and opt come back unchanged, exactly.

    Why not optax and then `jnp.where(commit, new, old)`: under the engine's vmap'd scan that
    select is one more pass over the weights and both moments that XLA:CPU does not fuse into
    the update (measured on bench_vs_torch's PTI step: ~5% of the step, README "Speed"). Here
    the commit is a 0/1 factor c inside the update's own expression, m + c (1 - b1) (g - m)
    and p - c lr m_hat / (sqrt(v_hat) + eps):
    with c = 0 every leaf comes back exactly as it was, with c = 1 it is Adam's step (optax's to
    float32 rounding). Written as new * c + old * (1 - c), or as a where inside the update,
    it measured no faster than the select. The gradient of an uncommitted step is replaced by 0
    first, so a non-finite one cannot leak in (0 * NaN)."""
    commit = jnp.asarray(commit, bool)
    c = commit.astype(jnp.float32)
    lr_t = lr(opt["count"]) if callable(lr) else lr
    count = opt["count"] + commit.astype(jnp.int32)
    t = jnp.maximum(count, 1)  # the bias correction of a committed step (count >= 1 then)
    bc1, bc2 = 1 - b1**t, 1 - b2**t

    def leaf(p, m, v, g):
        g = jnp.where(commit, g, 0).astype(m.dtype)
        m_new = m + c * (1 - b1) * (g - m)
        v_new = v + c * (1 - b2) * (g * g - v)
        return p - c * lr_t * (m_new / bc1) / (jnp.sqrt(v_new / bc2) + eps), m_new, v_new

    out = jax.tree_util.tree_map(leaf, params, opt["mu"], opt["nu"], grads)
    treedef = jax.tree_util.tree_structure(params)
    p, m, v = (treedef.unflatten(x) for x in zip(*treedef.flatten_up_to(out)))
    return p, dict(count=count, mu=m, nu=v)


def lr_ramp(t: Array, num_steps: int, rampup: float, rampdown: float) -> Array:
    """StyleGAN2 projector's learning-rate ramp in [0, 1] at step t of num_steps
    (cosine ramp-down over the last `rampdown` fraction, linear ramp-up over `rampup`)."""
    frac = t / max(num_steps, 1)
    ramp = jnp.minimum(1.0, (1.0 - frac) / max(rampdown, 1e-8))
    ramp = 0.5 - 0.5 * jnp.cos(jnp.clip(ramp, 0.0, 1.0) * np.pi)
    return ramp * jnp.minimum(1.0, frac / max(rampup, 1e-8)) if rampup > 0 else ramp


def tuning_lr(lr: float, num_steps: int, rampdown: float, rampup: float = 0.0):
    """A tuning method's generator learning rate: constant (the papers), or shaped by
    `lr_ramp`: a cosine ramp-down over the last `rampdown` fraction of `num_steps` (> 0: a
    per-image overfit settles into its minimum instead of ending on Adam's constant-lr noise
    floor) and a linear ramp-up over the first `rampup` fraction (> 0: Adam's first steps are
    ~lr * sign(g) on EVERY weight, a kick that lifts a good pivot's error several-fold before
    the moments are estimated; the ramp-up makes those steps small)."""
    if rampdown <= 0 and rampup <= 0:
        return lr
    return lambda count: lr * lr_ramp(count, num_steps, rampup, rampdown)


def is_conv_weight(path, leaf) -> bool:
    """A conv kernel [k, k, C, O] (named `weight`): the parameters GMM modulates."""
    return getattr(path[-1], "key", None) == "weight" and leaf.ndim == 4


def conv_weights_only(tree):
    """`tree` with every leaf but the conv kernels zeroed."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: x if is_conv_weight(p, x) else jnp.zeros_like(x), tree
    )
