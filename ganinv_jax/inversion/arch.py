"""One interface over the generator architectures the inversion methods run on.

The methods (`latent_opt`, `pti`, `clone`, `gmm`) never assume StyleGAN's W / W+: everything
architecture-specific goes through the `Arch` stored (static) in `base.Frozen.arch`:

  latent_shape              the latent of ONE image (what `init_latents` / result 'latent' hold)
  check_latent(s)           validate (StyleGAN2 also broadcasts a W latent to W+)
  render(g, latents, params=None, noise_mode=, noise=, rng=)
                            latent batch -> NHWC images, with the frozen G's variables `g` and
                            optionally other params (the full tree or the tunable sub-tree)
  sample_prior(key, n)      what a random latent comes from (StyleGAN2: z; others: the latent)
  latents_from_prior(g, p)  StyleGAN2: mapping(z); others: p itself
  random_latents(g, key, n) random latents for regularizers (PTI/GMM) and Clone's fakes
  statistics(g, n, seed)    (center, spread): `Frozen.w_avg` / `Frozen.w_std`
  mean_latent(center)       the mean / start latent (the engine's default start)
  to_free / from_free       what latent optimization optimizes (its parametrization)
  perturb(free, key, scale) latent_opt's noise ramp on the free latent
  tunable(params)           the sub-tree PTI / GMM tune (StyleGAN2: 'synthesis'; others: all)
  discriminate(d, images)   logits [N] (Clone), and `gan_loss` names the model's own GAN loss

| arch       | latent of one image                       | prior / random latent                 |
|------------|-------------------------------------------|---------------------------------------|
| StyleGAN2  | W+ [num_ws, w_dim] (W: one w broadcast)   | z ~ N(0, I) -> mapping(z)             |
| PGGAN      | z [z_dim] (pixel-normalized inside G)     | z ~ N(0, I)                           |
| BigGAN     | [z_dim + num_classes] = concat(z, class)  | truncation * truncnorm(-2, 2), one-hot|

BigGAN's class part is a class vector (probabilities). `class_mode='optimize'` optimizes it as
logits (class = softmax(logits), started at log(max(class, 1e-6))); `class_mode='given'` keeps
the class of the start latent fixed (give it in `init_latents`, or `class_index` for all).
`truncation` (a static Python float) selects BigGAN's BN statistics exactly as
`models.biggan` does, and scales the prior's truncated z.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, ClassVar, Optional

import jax
import jax.numpy as jnp

from ganinv_jax.models import biggan, pggan
from ganinv_jax.models import stylegan2 as sg2

Array = jax.Array
PyTree = Any

GAN_LOSSES = ("stylegan2", "wgangp", "logistic", "dcgan", "mse")
CLASS_MODES = ("optimize", "given")
LATENT_SPACES = ("w", "w+")


@dataclasses.dataclass(frozen=True)
class Arch:
    """Base class: a static (hashable) description of one generator architecture.

    `d_apply`: a discriminator of one's own, `(variables, images) -> logits [N] or [N, 1]`; it
    replaces the architecture's own D (BigGAN has none, so Clone needs one there).
    """

    cfg: Any
    d_apply: Optional[Callable] = None

    name: ClassVar[str] = ""
    tunable_key: ClassVar[Optional[str]] = None  # None: PTI / GMM tune all G params
    has_noise: ClassVar[bool] = False  # per-layer noise inputs (latent_opt's optimize_noise)

    # -- latents

    @property
    def latent_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def describe_latent(self) -> str:
        return "[" + ", ".join(map(str, self.latent_shape)) + "]"

    def check_latent(self, latent) -> Array:
        """One image's latent as float32 of `latent_shape` (ValueError otherwise)."""
        latent = jnp.asarray(latent, jnp.float32)
        if latent.shape != self.latent_shape:
            raise ValueError(
                f"{self.name}: latent must be {self.describe_latent()}, got {latent.shape}"
            )
        return latent

    def check_latents(self, latents, b: int) -> Array:
        """A batch [b, *latent_shape] of start latents (ValueError otherwise)."""
        latents = jnp.asarray(latents, jnp.float32)
        if latents.shape != (b, *self.latent_shape):
            raise ValueError(
                f"init_latents must be [B, {self.describe_latent()[1:-1]}] for {self.name}, "
                f"got {latents.shape}"
            )
        return latents

    def sample_prior(self, key: Array, n: int) -> Array:
        raise NotImplementedError

    def latents_from_prior(self, g: PyTree, prior: Array, params: Optional[PyTree] = None):
        """Prior samples -> latents (params: the full G param tree, default g's)."""
        del g, params
        return prior

    def random_latents(self, g: PyTree, key: Array, n: int) -> Array:
        """n random latents [n, *latent_shape] (frozen G)."""
        return self.latents_from_prior(g, self.sample_prior(key, n))

    def statistics(self, g: PyTree, n: int, seed: int) -> tuple[Array, Array]:
        """(center [latent vector], spread scalar) from n random latents (seed `seed`):
        spread = sqrt(sum |l - mean|^2 / n) (the projector's w_std), center = `start_center`."""
        lat = jax.jit(lambda g, k: self.random_latents(g, k, n))(g, jax.random.key(seed))
        lat = lat.reshape(n, -1)
        mean = jnp.mean(lat, axis=0)
        spread = jnp.sqrt(jnp.sum(jnp.square(lat - mean)) / n)
        return self.start_center(lat, mean), spread

    def start_center(self, samples: Array, mean: Array) -> Array:
        """The `center` that `mean_latent` turns into the start latent (default: the mean)."""
        del samples
        return mean

    def mean_latent(self, center: Array) -> Array:
        """The mean / start latent [*latent_shape] from `statistics`' center."""
        return jnp.reshape(center, self.latent_shape)

    # -- latent optimization's parametrization

    def to_free(self, latent: Array, space: str) -> tuple[PyTree, PyTree]:
        """(free, fixed): the optimized variables and the fixed rest of one latent. `space`
        ('w' | 'w+') only means something for StyleGAN2."""
        _check_space(space)
        return latent, ()

    def from_free(self, free: PyTree, fixed: PyTree) -> Array:
        del fixed
        return free

    def perturb(self, free: PyTree, key: Array, scale) -> PyTree:
        """latent_opt's exploration noise: N(0, scale^2) on the continuous free latent."""
        return free + jax.random.normal(key, free.shape) * scale

    def noise_shapes(self) -> dict:
        raise ValueError(
            f"{self.name} has no per-layer noise inputs (optimize_noise is StyleGAN2's)"
        )

    # -- rendering

    def render(
        self,
        g: PyTree,
        latents: Array,
        params: Optional[PyTree] = None,
        *,
        noise_mode: str = "const",
        noise: Optional[dict] = None,
        rng: Optional[Array] = None,
    ) -> Array:
        raise NotImplementedError

    def tunable(self, g_params: PyTree) -> PyTree:
        """The sub-tree of G's params that PTI and GMM tune."""
        return g_params if self.tunable_key is None else g_params[self.tunable_key]

    def full_params(self, g_params: PyTree, params: Optional[PyTree]) -> PyTree:
        """`params` (None, the full tree, or the tunable sub-tree) as a full G param tree."""
        if params is None:
            return g_params
        if self.tunable_key is not None and self.tunable_key not in params:
            return {**g_params, self.tunable_key: params}
        return params

    # -- discriminator

    @property
    def gan_loss(self) -> str:
        return "logistic"

    @property
    def has_discriminator(self) -> bool:
        """Whether Clone can run: the architecture's own D, or `d_apply`."""
        return True

    def discriminate(self, d: PyTree, images: Array) -> Array:
        if self.d_apply is not None:
            out = self.d_apply(d, images)
            return out.reshape(out.shape[0], -1)[:, 0]
        return self._own_d(d, images)

    def _own_d(self, d: PyTree, images: Array) -> Array:
        raise ValueError(f"{self.name} has no discriminator: give one as d_apply (arch_for)")


def _check_space(space: str) -> None:
    if space not in LATENT_SPACES:
        raise ValueError(f"latent_opt: space must be 'w' or 'w+', got {space!r}")


# ----------------------------------------------------------------------------- StyleGAN2


def w_statistics(
    g_cfg: sg2.StyleGAN2Config, g_vars: PyTree, n: int = 10000, seed: int = 123
) -> tuple[Array, Array]:
    """(w_avg [w_dim], w_std scalar) from `n` samples of the mapping network, as the StyleGAN2
    projector computes them (w_std = sqrt(sum |w - w_avg|^2 / n))."""
    gen = sg2.Generator(g_cfg)
    z = jax.random.normal(jax.random.key(seed), (n, g_cfg.z_dim))
    ws = jax.jit(lambda v, z: gen.apply(v, z, method=gen.mapping))(g_vars, z)[:, 0]
    w_avg = jnp.mean(ws, axis=0)
    w_std = jnp.sqrt(jnp.sum(jnp.square(ws - w_avg)) / n)
    return w_avg, w_std


@dataclasses.dataclass(frozen=True)
class StyleGAN2Arch(Arch):
    """W+ latents [num_ws, w_dim]; random latents mapping(z); PTI/GMM tune 'synthesis'; its own
    D with StyleGAN2's loss (non-saturating logistic + lazy R1)."""

    name: ClassVar[str] = "stylegan2"
    tunable_key: ClassVar[Optional[str]] = "synthesis"
    has_noise: ClassVar[bool] = True

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.cfg.num_ws, self.cfg.w_dim)

    def check_latent(self, latent) -> Array:
        """[w_dim] or [num_ws, w_dim] -> [num_ws, w_dim] float32."""
        g_cfg = self.cfg
        latent = jnp.asarray(latent, jnp.float32)
        if latent.shape == (g_cfg.w_dim,):
            latent = jnp.broadcast_to(latent, (g_cfg.num_ws, g_cfg.w_dim))
        if latent.shape != (g_cfg.num_ws, g_cfg.w_dim):
            raise ValueError(
                f"latent must be [{g_cfg.w_dim}] or [{g_cfg.num_ws}, {g_cfg.w_dim}], "
                f"got {latent.shape}"
            )
        return latent

    def check_latents(self, latents, b: int) -> Array:
        g_cfg = self.cfg
        latents = jnp.asarray(latents, jnp.float32)
        if latents.shape == (b, g_cfg.w_dim):
            latents = jnp.broadcast_to(latents[:, None], (b, g_cfg.num_ws, g_cfg.w_dim))
        if latents.shape != (b, g_cfg.num_ws, g_cfg.w_dim):
            raise ValueError(
                f"init_latents must be [B, {g_cfg.num_ws}, {g_cfg.w_dim}] or "
                f"[B, {g_cfg.w_dim}], got {latents.shape}"
            )
        return latents

    def sample_prior(self, key: Array, n: int) -> Array:
        return jax.random.normal(key, (n, self.cfg.z_dim))

    def latents_from_prior(self, g, prior, params=None):
        """z [N, z_dim] -> ws [N, num_ws, w_dim] (the mapping; params: full G tree)."""
        p = g["params"] if params is None else params
        gen = sg2.Generator(self.cfg)
        return gen.apply({"params": p, "buffers": g["buffers"]}, prior, method=gen.mapping)

    def statistics(self, g, n, seed):
        return w_statistics(self.cfg, g, n, seed)

    def mean_latent(self, center):
        return jnp.broadcast_to(center, (self.cfg.num_ws, self.cfg.w_dim))

    def to_free(self, latent, space):
        _check_space(space)
        # a W+ start collapses to its mean w in W
        return (jnp.mean(latent, axis=0) if space == "w" else latent), ()

    def from_free(self, free, fixed):
        g_cfg = self.cfg
        return jnp.broadcast_to(free, (g_cfg.num_ws, g_cfg.w_dim)) if free.ndim == 1 else free

    def noise_shapes(self) -> dict:
        return sg2.noise_shapes(self.cfg)

    def render(self, g, latents, params=None, *, noise_mode="const", noise=None, rng=None):
        """ws [N,num_ws,w_dim] -> images; `params` the full G tree or its 'synthesis' sub-tree."""
        p = g["params"] if params is None else params
        if "synthesis" not in p:
            p = {**g["params"], "synthesis": p}
        gen = sg2.Generator(self.cfg)
        rngs = {"noise": rng} if rng is not None else None
        return gen.apply(
            {"params": p, "buffers": g["buffers"]},
            latents,
            noise_mode,
            noise,
            method=gen.synthesis,
            rngs=rngs,
        )

    @property
    def gan_loss(self) -> str:
        return "stylegan2"

    def _own_d(self, d, images):
        return sg2.Discriminator(self.cfg).apply(d, images)[:, 0]


# ----------------------------------------------------------------------------- PGGAN


@dataclasses.dataclass(frozen=True)
class PGGANArch(Arch):
    """z latents [z_dim]; PTI/GMM tune all of G; its own D with the zoo's loss of the checkpoint
    (`gan_loss`: 'wgangp' with `lambda_gp` / `epsilon_d`, 'logistic' with `logistic_grad_real`,
    'dcgan', 'mse'; `from_zoo_config` reads them from the converted provenance).

    Start latent (`mean_latent`): the prior's mean, z = 0. G pixel-normalizes z, so z = 0 has
    no direction of its own (G(0) is the bias-only image); latent_opt's exploration noise
    (std w_std * initial_noise_factor, w_std ~ sqrt(z_dim)) and the first Adam steps choose one.
    Measured on the fixture (benchmarks/arch_inversion.py, 16 samples, 100 steps): 17.2 dB PSNR
    from z = 0 against 11.9 dB from a fixed prior sample at norm sqrt(z_dim) (4.4 dB from z = 0
    without the noise).
    """

    loss: str = "wgangp"
    lambda_gp: float = 10.0
    epsilon_d: float = 0.001
    logistic_grad_real: float = 0.0

    name: ClassVar[str] = "pggan"

    def __post_init__(self):
        if self.loss not in GAN_LOSSES[1:]:
            raise ValueError(f"pggan: loss must be one of {GAN_LOSSES[1:]}, got {self.loss!r}")

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.cfg.z_dim,)

    def sample_prior(self, key, n):
        return jax.random.normal(key, (n, self.cfg.z_dim))

    def start_center(self, samples, mean):
        return jnp.zeros((self.cfg.z_dim,))  # the prior's exact mean (see the class docstring)

    def render(self, g, latents, params=None, *, noise_mode="const", noise=None, rng=None):
        del noise_mode, noise, rng  # no noise inputs
        p = self.full_params(g["params"], params)
        return pggan.Generator(self.cfg).apply({**g, "params": p}, latents)

    @property
    def gan_loss(self) -> str:
        return self.loss

    def _own_d(self, d, images):
        return pggan.Discriminator(self.cfg).apply(d, images)[:, 0]


# pytorch_GAN_zoo lossCriterion -> our loss name
ZOO_LOSSES = {"WGANGP": "wgangp", "Logistic": "logistic", "DCGAN": "dcgan", "MSE": "mse"}


def pggan_loss_options(zoo_config: Optional[dict], cfg: pggan.PGGANConfig) -> dict:
    """PGGANArch loss fields from a converted DIR's `provenance.zoo_config` (the checkpoint's
    BaseConfig); without it, from the output activation (tanh: 'dcgan', linear: 'wgangp')."""
    if not zoo_config or zoo_config.get("lossCriterion") not in ZOO_LOSSES:
        return {"loss": "dcgan" if cfg.output_activation == "tanh" else "wgangp"}
    out = {"loss": ZOO_LOSSES[zoo_config["lossCriterion"]]}
    for src, dst in (
        ("lambdaGP", "lambda_gp"),
        ("epsilonD", "epsilon_d"),
        ("logisticGradReal", "logistic_grad_real"),
    ):
        v = zoo_config.get(src)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[dst] = float(v)
    return out


# ----------------------------------------------------------------------------- BigGAN


@dataclasses.dataclass(frozen=True)
class BigGANArch(Arch):
    """Latent concat(z, class vector) [z_dim + num_classes]; PTI/GMM tune all of G; no D of its
    own (Clone needs `d_apply`, whose loss is the logistic one unless `loss` says otherwise).

    truncation: static float in (0, 1]: BN statistics (as the package) and the prior's z scale.
    class_mode: 'optimize' (class as logits -> softmax) | 'given' (the start's class is fixed).
    class_index: >= 0 puts that class (one-hot) in the start latent; -1: the uniform vector.
    """

    truncation: float = 1.0
    class_mode: str = "optimize"
    class_index: int = -1
    loss: str = "logistic"

    name: ClassVar[str] = "biggan"

    def __post_init__(self):
        object.__setattr__(self, "truncation", biggan.check_truncation(self.truncation))
        if self.class_mode not in CLASS_MODES:
            raise ValueError(
                f"biggan: class_mode must be 'optimize' or 'given', got {self.class_mode!r}"
            )
        if not -1 <= int(self.class_index) < self.cfg.num_classes:
            raise ValueError(
                f"biggan: class_index must be -1 or in [0, {self.cfg.num_classes}), "
                f"got {self.class_index}"
            )
        if self.loss not in GAN_LOSSES[1:]:
            raise ValueError(f"biggan: loss must be one of {GAN_LOSSES[1:]}, got {self.loss!r}")

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.cfg.z_dim + self.cfg.num_classes,)

    def describe_latent(self) -> str:
        return f"[{self.latent_shape[0]}] (z {self.cfg.z_dim} + class {self.cfg.num_classes})"

    def split(self, latents: Array) -> tuple[Array, Array]:
        """latent(s) -> (z, class vector)."""
        return latents[..., : self.cfg.z_dim], latents[..., self.cfg.z_dim :]

    def sample_prior(self, key, n):
        """The package's `truncated_noise_sample` (truncation * truncnorm(-2, 2)) + a uniformly
        drawn one-hot class."""
        kz, kc = jax.random.split(key)
        z = self.truncation * jax.random.truncated_normal(kz, -2.0, 2.0, (n, self.cfg.z_dim))
        k = self.cfg.num_classes
        c = jax.nn.one_hot(jax.random.randint(kc, (n,), 0, k), k)
        return jnp.concatenate([z, c], axis=1)

    def start_center(self, samples, mean):
        # the prior's exact mean: z 0, the uniform class vector
        k = self.cfg.num_classes
        return jnp.concatenate([jnp.zeros((self.cfg.z_dim,)), jnp.full((k,), 1.0 / k)])

    def mean_latent(self, center):
        latent = jnp.reshape(center, self.latent_shape)
        if self.class_index >= 0:
            z, _ = self.split(latent)
            c = jax.nn.one_hot(self.class_index, self.cfg.num_classes)
            latent = jnp.concatenate([z, c])
        return latent

    def to_free(self, latent, space):
        _check_space(space)
        z, c = self.split(latent)
        if self.class_mode == "given":
            return z, c
        return {"z": z, "logits": jnp.log(jnp.maximum(c, 1e-6))}, ()

    def from_free(self, free, fixed):
        if self.class_mode == "given":
            return jnp.concatenate([free, fixed], axis=-1)
        return jnp.concatenate([free["z"], jax.nn.softmax(free["logits"], axis=-1)], axis=-1)

    def perturb(self, free, key, scale):
        if self.class_mode == "given":
            return free + jax.random.normal(key, free.shape) * scale
        return dict(free, z=free["z"] + jax.random.normal(key, free["z"].shape) * scale)

    def render(self, g, latents, params=None, *, noise_mode="const", noise=None, rng=None):
        del noise_mode, noise, rng  # no noise inputs
        p = self.full_params(g["params"], params)
        z, c = self.split(latents)
        return biggan.Generator(self.cfg).apply({**g, "params": p}, z, c, self.truncation)

    @property
    def gan_loss(self) -> str:
        return self.loss

    @property
    def has_discriminator(self) -> bool:
        return self.d_apply is not None

    def _own_d(self, d, images):
        raise ValueError(
            "biggan has no discriminator (pytorch-pretrained-biggan ships none): Clone needs "
            "one of your own, arch_for(cfg, d_apply=fn) and make_frozen(..., d_vars=...)"
        )


# ----------------------------------------------------------------------------- dispatch

ARCHS = {
    sg2.StyleGAN2Config: StyleGAN2Arch,
    pggan.PGGANConfig: PGGANArch,
    biggan.BigGANConfig: BigGANArch,
}


@functools.lru_cache(maxsize=None)
def _arch_class(cfg_type: type) -> type:
    for t, cls in ARCHS.items():
        if issubclass(cfg_type, t):
            return cls
    raise ValueError(
        f"no inversion architecture for a {cfg_type.__name__} (known: "
        + ", ".join(c.name for c in ARCHS.values())
        + ")"
    )


def arch_for(cfg: Any, **options) -> Arch:
    """The `Arch` of a generator config (StyleGAN2Config, PGGANConfig, BigGANConfig).

    options: `d_apply` (all); PGGAN `loss`, `lambda_gp`, `epsilon_d`, `logistic_grad_real`;
    BigGAN `truncation`, `class_mode`, `class_index`, `loss`. Unknown options: TypeError.
    """
    return _arch_class(type(cfg))(cfg, **options)
