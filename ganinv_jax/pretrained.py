"""Load a converted GAN (see `weights_convert/`) and use it through pure functions.

Every architecture loads as the same kind of object (a `GAN`):

    gan = pretrained.load("path/to/DIR")            # or pretrained.load("default")
    gan.architecture                                # 'stylegan2' | 'pggan' | 'biggan'
    gan.config, gan.params, gan.which, gan.meta, gan.G, gan.D
    gan.z_dim, gan.resolution, gan.img_channels
    img = gan.generate(z, c=None, truncation=1.0)   # [N, H, W, C] float32, NHWC
    logits = gan.discriminate(img, c=None)          # where a D was converted

`generate`: StyleGAN2 maps z with `truncation_psi=truncation` and synthesizes with constant
noise; PGGAN takes z [N, z_dim] (c must be None; it has no truncation); BigGAN needs the class
vector c [N, num_classes] and `truncation` (a static Python float in (0, 1]) selects the BN
statistics exactly as pytorch-pretrained-biggan does (z is NOT truncated here: draw it with
`gan.sample_inputs(key, n, truncation)`, the package's `truncated_noise_sample`).
`which='G'` loads the raw (non-EMA) generator where the DIR has one (StyleGAN2 --raw-g, PGGAN
netG); BigGAN has one generator.

StyleGAN2 (`PretrainedGAN`) also has the two halves and the InvGAN encoder:

    ws = gan.mapping(z, truncation_psi=0.7)         # [N, num_ws, w_dim]
    img = gan.synthesis(ws, noise_mode="const")     # [N, H, W, C] float32, NHWC
    logits = gan.discriminate(img)                  # [N, 1]

The methods are jit-compiled wrappers over *functional* forms that take the variables
explicitly (`gan.generate_fn(variables_G, z, c, truncation)`, `gan.discriminate_fn(variables_D,
img, c)`; StyleGAN2 `gan.mapping_fn(variables_G, z, ...)`, `gan.synthesis_fn(variables_G, ws,
...)`), which is what the inversion methods that tune G use. A variables tree is
`{'params': ..., ['buffers': ...]}`.

DIR layout (written by `python -m weights_convert`):
    DIR/config.json   architecture, the model config, source format/path/sha256, networks
    DIR/params/       orbax checkpoint of {'G_ema': vars, ['G': vars,] ['D': vars]}
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, ClassVar, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp

from ganinv_jax import checkpointing
from ganinv_jax.errors import UserError
from ganinv_jax.models import biggan as biggan_model
from ganinv_jax.models import pggan as pggan_model
from ganinv_jax.models.stylegan2 import (
    Discriminator,
    Generator,
    StyleGAN2Config,
    noise_layer_names,
    noise_shapes,
)

CONFIG_NAME = "config.json"
PARAMS_NAME = "params"
DEFAULT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "default")
GENERATORS = ("G_ema", "G")


# ----------------------------------------------------------------------------- init


def init_variables(cfg: StyleGAN2Config, net: str, key: jax.Array) -> Any:
    """Randomly initialised variables of G ('G_ema' / 'G') or D ('D')."""
    c = jnp.zeros((1, cfg.c_dim), jnp.float32) if cfg.c_dim else None
    if net in GENERATORS:
        return Generator(cfg).init({"params": key}, jnp.zeros((1, cfg.z_dim), jnp.float32), c)
    if net == "D":
        img = jnp.zeros((1, cfg.resolution, cfg.resolution, cfg.img_channels), jnp.float32)
        return Discriminator(cfg).init({"params": key}, img, c, return_w=cfg.d_w_head)
    raise ValueError(f"unknown network {net!r}; expected 'G_ema', 'G' or 'D'")


def abstract_variables(cfg: StyleGAN2Config, networks: Sequence[str]) -> dict[str, Any]:
    """`jax.eval_shape` of `init_variables` for each network: shapes only, no compute."""
    return {
        net: jax.eval_shape(functools.partial(init_variables, cfg, net), jax.random.key(0))
        for net in networks
    }


# ----------------------------------------------------------------------------- the GAN


class GAN:
    """What every loaded architecture offers: config, variables trees (`params` by network),
    the selected generator (`which`), `meta` (config.json), `generate` and `discriminate`."""

    architecture: ClassVar[str] = ""
    networks: ClassVar[tuple[str, ...]] = ("G_ema", "G", "D")
    no_d_hint: ClassVar[str] = "it was converted with --no-d, or the source had none"

    def __init__(
        self,
        config: Any,
        params: Mapping[str, Any],
        which: str = "G_ema",
        meta: Optional[Mapping[str, Any]] = None,
    ):
        gens = tuple(n for n in self.networks if n != "D")
        if which not in GENERATORS:
            raise ValueError(f"which must be 'G_ema' or 'G', got {which!r}")
        if which not in gens:
            raise ValueError(f"a {self.architecture} GAN has one generator: use which='G_ema'")
        if which not in params:
            raise ValueError(
                f"this GAN has no {which!r} network (has {sorted(params)}); "
                "convert with --raw-g to get the raw G"
            )
        self.config = config
        self.params = dict(params)
        self.which = which
        self.meta = dict(meta or {})

    @classmethod
    def from_trees(
        cls,
        config: Any,
        trees: Mapping[str, Any],
        which: str = "G_ema",
        meta: Optional[Mapping[str, Any]] = None,
    ) -> "GAN":
        trees = jax.tree_util.tree_map(jnp.asarray, dict(trees))
        return cls(config, trees, which, meta)

    # -- variables

    @property
    def G(self) -> Any:
        """The variables of the selected generator (`which`)."""
        return self.params[self.which]

    @property
    def D(self) -> Any:
        if "D" not in self.params:
            raise ValueError(f"this GAN has no discriminator ({self.no_d_hint})")
        return self.params["D"]

    # -- shapes

    @property
    def z_dim(self) -> int:
        return int(self.config.z_dim)

    @property
    def resolution(self) -> int:
        return int(self.config.resolution)

    @property
    def img_channels(self) -> int:
        return int(self.config.img_channels)

    @property
    def c_dim(self) -> int:
        """Width of the condition `c` (0: unconditional)."""
        return 0

    # -- the common sampling / scoring functions

    def generate_fn(self, variables, z, c=None, truncation: Any = 1.0):
        raise NotImplementedError

    def discriminate_fn(self, variables, images, c=None):
        raise NotImplementedError

    def generate(self, z, c=None, truncation=1.0, variables=None):
        """z [N, z_dim] (+ c) -> images [N, H, W, C] float32 (NHWC, not clamped)."""
        return self._generate(self.G if variables is None else variables, z, c, truncation)

    def discriminate(self, images, c=None, variables=None):
        """images [N, H, W, C] -> logits [N, outputs]."""
        return self._discriminate(self.D if variables is None else variables, images, c)

    def sample_inputs(self, key, n: int, truncation: float = 1.0):
        """(z, c) of n random samples for `generate` (c None for an unconditional G)."""
        del truncation
        return jax.random.normal(key, (n, self.z_dim)), None

    def _check_images(self, images):
        want = (self.resolution, self.resolution, self.img_channels)
        if images.ndim != 4 or tuple(images.shape[1:]) != want:
            raise ValueError(
                f"images must be NHWC [N, {', '.join(map(str, want))}], got {tuple(images.shape)}"
            )

    def _no_condition(self, c):
        if c is not None:
            raise ValueError(f"a {self.architecture} generator takes no condition c (pass None)")

    def __repr__(self):
        return (
            f"{type(self).__name__}({self.architecture}, res={self.resolution}, "
            f"z_dim={self.z_dim}, networks={sorted(self.params)}, which={self.which!r})"
        )


class PretrainedGAN(GAN):
    """A StyleGAN2 G/D pair: config, variables trees and pure functions over them."""

    architecture: ClassVar[str] = "stylegan2"

    def __init__(
        self,
        config: StyleGAN2Config,
        params: Mapping[str, Any],
        which: str = "G_ema",
        meta: Optional[Mapping[str, Any]] = None,
    ):
        super().__init__(config, params, which, meta)
        self.generator = Generator(config)
        self.discriminator = Discriminator(config)
        self.num_ws = config.num_ws
        self.noise_names = noise_layer_names(config)
        # jit once per GAN; the variables are arguments, never baked-in constants.
        self._mapping_static = jax.jit(
            self.mapping_fn, static_argnames=("truncation_psi", "truncation_cutoff")
        )
        self._mapping_traced = jax.jit(self.mapping_fn, static_argnames=("truncation_cutoff",))
        self._synthesis = jax.jit(self.synthesis_fn, static_argnames=("noise_mode",))
        self._discriminate = jax.jit(self.discriminate_fn)
        self._encode = jax.jit(self.encode_fn)

    @property
    def c_dim(self) -> int:
        return int(self.config.c_dim)

    # -- pure functions over explicit variables

    def mapping_fn(
        self,
        variables: Any,
        z: jax.Array,
        c: Optional[jax.Array] = None,
        truncation_psi: Any = 1.0,
        truncation_cutoff: Optional[int] = None,
    ) -> jax.Array:
        """z [N, z_dim] (+ c [N, c_dim]) -> ws [N, num_ws, w_dim].

        Truncation `w_avg + psi * (w - w_avg)` on the first `truncation_cutoff` ws (all by
        default) is applied here rather than in the module so that psi may be traced.
        """
        ws = self.generator.apply(variables, z, c, method=Generator.mapping)
        if isinstance(truncation_psi, (int, float)) and truncation_psi == 1:
            return ws
        w_avg = variables["buffers"]["mapping"]["w_avg"]
        cut = self.num_ws if truncation_cutoff is None else truncation_cutoff
        return ws.at[:, :cut].set(w_avg + truncation_psi * (ws[:, :cut] - w_avg))

    def random_noise(self, key: jax.Array, n: int) -> dict[str, jax.Array]:
        """Per-layer standard-normal noise `{name: [n, r, r]}`, layer i from fold_in(key, i)."""
        shapes = noise_shapes(self.config)
        return {
            name: jax.random.normal(jax.random.fold_in(key, i), (n, *shapes[name]))
            for i, name in enumerate(self.noise_names)
        }

    def synthesis_fn(
        self,
        variables: Any,
        ws: jax.Array,
        noise_mode: str = "const",
        key: Optional[jax.Array] = None,
        noise: Optional[Mapping[str, jax.Array]] = None,
    ) -> jax.Array:
        """ws [N, num_ws, w_dim] -> images [N, H, W, C] (NHWC, float32, not clamped).

        noise_mode: 'const' (stored buffers), 'random' (needs `key`), 'none'. `noise`
        overrides single layers (names as in `noise_layer_names`).
        """
        if noise_mode == "random":
            if key is None:
                raise ValueError(
                    "noise_mode='random' needs a PRNG key: synthesis(ws, 'random', key)"
                )
            noise = {**self.random_noise(key, ws.shape[0]), **dict(noise or {})}
            noise_mode = "const"  # every layer is given explicitly now
        elif noise_mode not in ("const", "none"):
            raise ValueError(f"noise_mode must be 'const', 'random' or 'none', got {noise_mode!r}")
        return self.generator.apply(variables, ws, noise_mode, noise, method=Generator.synthesis)

    def discriminate_fn(
        self, variables: Any, images: jax.Array, c: Optional[jax.Array] = None
    ) -> jax.Array:
        """images [N, H, W, C] -> logits [N, 1] (conditional D needs c [N, c_dim])."""
        self._check_images(images)
        return self.discriminator.apply(variables, images, c)

    def encode_fn(self, variables: Any, images: jax.Array) -> jax.Array:
        """InvGAN: D's w head, broadcast to ws [N, num_ws, w_dim]."""
        if not self.config.d_w_head:
            raise ValueError("this discriminator has no w head (config.d_w_head is False)")
        self._check_images(images)
        w = self.discriminator.apply(variables, images, method=Discriminator.infer_w)
        return jnp.broadcast_to(w[:, None, :], (w.shape[0], self.num_ws, w.shape[-1]))

    # -- convenience wrappers (jit-compiled). `variables=` swaps in other variables of the same
    #    shapes (e.g. a tuned G) and reuses the compiled function.

    def mapping(self, z, c=None, truncation_psi=1.0, truncation_cutoff=None, variables=None):
        fn = (
            self._mapping_static
            if isinstance(truncation_psi, (int, float))
            else self._mapping_traced
        )
        return fn(
            self.G if variables is None else variables,
            z,
            c,
            truncation_psi=truncation_psi,
            truncation_cutoff=truncation_cutoff,
        )

    def synthesis(self, ws, noise_mode="const", key=None, noise=None, variables=None):
        return self._synthesis(
            self.G if variables is None else variables,
            ws,
            noise_mode=noise_mode,
            key=key,
            noise=noise,
        )

    def discriminate(self, images, c=None, variables=None):
        return self._discriminate(self.D if variables is None else variables, images, c)

    def encode(self, images, variables=None):
        if not self.config.d_w_head:
            raise ValueError("this discriminator has no w head (config.d_w_head is False)")
        return self._encode(self.D if variables is None else variables, images)

    def generate(
        self,
        z,
        c=None,
        truncation=1.0,
        noise_mode="const",
        key=None,
        *,
        truncation_psi=None,
        variables=None,
    ):
        """mapping(z, c, truncation_psi=truncation) then synthesis (constant noise by default).
        `truncation_psi` is the older name of `truncation` (either may be given)."""
        psi = truncation if truncation_psi is None else truncation_psi
        ws = self.mapping(z, c, psi, variables=variables)
        return self.synthesis(ws, noise_mode, key, variables=variables)

    def generate_fn(self, variables, z, c=None, truncation: Any = 1.0):
        ws = self.mapping_fn(variables, z, c, truncation_psi=truncation)
        return self.synthesis_fn(variables, ws, "const")

    def sample_inputs(self, key, n: int, truncation: float = 1.0):
        """(z, c): z ~ N(0, I); a conditional G gets the one-hot classes 0, 1, ... in turn."""
        z = jax.random.normal(key, (n, self.z_dim))
        c = jax.nn.one_hot(jnp.arange(n) % self.c_dim, self.c_dim) if self.c_dim else None
        return z, c

    def __repr__(self):
        c = self.config
        return (
            f"PretrainedGAN(res={c.resolution}, w_dim={c.w_dim}, num_ws={c.num_ws}, "
            f"networks={sorted(self.params)}, which={self.which!r})"
        )


class PGGANPretrained(GAN):
    """A pytorch_GAN_zoo progressive GAN: G(z), z [N, z_dim] ~ N(0, I); D with minibatch
    stddev over consecutive groups of 4 (so a logit depends on its group)."""

    architecture: ClassVar[str] = "pggan"

    def __init__(self, config, params, which="G_ema", meta=None):
        super().__init__(config, params, which, meta)
        self.generator = pggan_model.Generator(config)
        self.discriminator = pggan_model.Discriminator(config)
        self._generate = jax.jit(self.generate_fn, static_argnames=("truncation",))
        self._discriminate = jax.jit(self.discriminate_fn)

    def generate_fn(self, variables, z, c=None, truncation: Any = 1.0):
        self._no_condition(c)
        if not isinstance(truncation, (int, float)) or truncation != 1:
            raise ValueError("a pggan generator has no truncation (pass truncation=1.0)")
        return self.generator.apply(variables, z)

    def discriminate_fn(self, variables, images, c=None):
        self._no_condition(c)
        self._check_images(images)
        return self.discriminator.apply(variables, images)


class BigGANPretrained(GAN):
    """A pytorch-pretrained-biggan BigGAN generator (no discriminator: the package has none).
    `generate(z, c, truncation)`: c the class vector [N, num_classes] (one-hot or soft),
    truncation a static Python float selecting the BN statistics; images in [-1, 1]."""

    architecture: ClassVar[str] = "biggan"
    networks: ClassVar[tuple[str, ...]] = ("G_ema",)
    no_d_hint: ClassVar[str] = "pytorch-pretrained-biggan ships none"

    def __init__(self, config, params, which="G_ema", meta=None):
        super().__init__(config, params, which, meta)
        self.generator = biggan_model.Generator(config)
        self._generate = jax.jit(self.generate_fn, static_argnames=("truncation",))

    @property
    def img_channels(self) -> int:
        return 3

    @property
    def c_dim(self) -> int:
        return int(self.config.num_classes)

    def generate_fn(self, variables, z, c=None, truncation: Any = 1.0):
        if c is None:
            raise ValueError(
                f"biggan needs the class vector c [N, {self.config.num_classes}] (one-hot)"
            )
        return self.generator.apply(variables, z, c, biggan_model.check_truncation(truncation))

    def generate(self, z, c=None, truncation=1.0, variables=None):
        # checked here: under jit a float32 truncation would fail as an unhashable static
        t = biggan_model.check_truncation(truncation)
        return self._generate(self.G if variables is None else variables, z, c, t)

    def discriminate(self, images, c=None, variables=None):
        raise ValueError(f"this GAN has no discriminator ({self.no_d_hint})")

    def discriminate_fn(self, variables, images, c=None):
        raise ValueError(f"this GAN has no discriminator ({self.no_d_hint})")

    def sample_inputs(self, key, n: int, truncation: float = 1.0):
        """The package's `truncated_noise_sample` (truncation * truncnorm(-2, 2)) and the
        one-hot classes 0, 1, ... in turn."""
        t = biggan_model.check_truncation(truncation)
        z = t * jax.random.truncated_normal(key, -2.0, 2.0, (n, self.z_dim))
        k = self.c_dim
        return z, jax.nn.one_hot(jnp.arange(n) % k, k)


StyleGAN2Pretrained = PretrainedGAN


# ----------------------------------------------------------------------------- loading


class MissingDirError(UserError, FileNotFoundError):
    """The generator DIR (or a part of it) does not exist."""


class BadDirError(UserError, ValueError):
    """The generator DIR exists but cannot be read (corrupt config, wrong parameter tree)."""


def resolve(path: str) -> str:
    """'default' -> the embedded default model; anything else -> an existing directory."""
    if path == "default":
        if not os.path.isdir(DEFAULT_DIR):
            raise MissingDirError(
                f"the embedded default model is missing: {DEFAULT_DIR} "
                "does not exist (it is produced by training the default "
                "config; see README)"
            )
        return DEFAULT_DIR
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise MissingDirError(f"{path}: no such converted-GAN directory")
    return path


def _biggan_abstract(cfg, networks: Sequence[str]) -> dict[str, Any]:
    return {
        net: jax.eval_shape(functools.partial(biggan_model.init_variables, cfg), jax.random.key(0))
        for net in networks
    }


# architecture -> (config class, GAN class, abstract_variables(cfg, networks))
ARCHITECTURES = {
    "stylegan2": (StyleGAN2Config, PretrainedGAN, abstract_variables),
    "pggan": (pggan_model.PGGANConfig, PGGANPretrained, pggan_model.abstract_variables),
    "biggan": (biggan_model.BigGANConfig, BigGANPretrained, _biggan_abstract),
}


def read_config(path: str) -> tuple[Any, dict]:
    """Parse DIR/config.json -> (config of its architecture, the whole document)."""
    fname = os.path.join(path, CONFIG_NAME)
    if not os.path.isfile(fname):
        raise MissingDirError(
            f"{path}: not a converted GAN directory (no {CONFIG_NAME}; "
            "make one with `python -m weights_convert`)"
        )
    try:
        with open(fname) as f:
            doc = json.load(f)
        arch = doc.get("architecture")
        if arch not in ARCHITECTURES:
            raise BadDirError(
                f"{fname}: unsupported architecture {arch!r} (known: {', '.join(ARCHITECTURES)})"
            )
        try:
            cfg = ARCHITECTURES[arch][0].from_dict(doc["config"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise BadDirError(
                f"{fname}: corrupt config for architecture {arch!r} ({type(e).__name__}: {e})"
            ) from None
        nets = list(doc.get("networks", ["G_ema"]))
    except BadDirError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise BadDirError(f"{fname}: corrupt config ({type(e).__name__}: {e})") from None
    allowed = set(ARCHITECTURES[arch][1].networks)
    if "G_ema" not in nets or not set(nets) <= allowed:
        raise BadDirError(f"{fname}: bad 'networks' list {nets}")
    doc["networks"] = nets
    return cfg, doc


def load(
    path: str = "default", which: str = "G_ema", networks: Optional[Sequence[str]] = None
) -> GAN:
    """Load a converted GAN directory (or 'default') of any architecture: a `GAN` (StyleGAN2:
    `PretrainedGAN`). `networks` restricts what is read."""
    path = resolve(path)
    cfg, doc = read_config(path)
    _, gan_cls, abstract_fn = ARCHITECTURES[doc["architecture"]]
    nets = list(doc["networks"]) if networks is None else list(networks)
    missing = set(nets) - set(doc["networks"])
    if missing:
        raise BadDirError(f"{path}: has no network(s) {sorted(missing)} (has {doc['networks']})")
    if which not in nets:
        raise BadDirError(f"{path}: which={which!r} is not among the loaded networks {nets}")
    params_dir = os.path.join(path, PARAMS_NAME)
    if not os.path.isdir(params_dir):
        raise MissingDirError(f"{path}: no {PARAMS_NAME}/ checkpoint directory")
    abstract = abstract_fn(cfg, doc["networks"])
    try:
        trees = checkpointing.restore_pytree(params_dir, target=abstract)
    except Exception as e:  # orbax raises many types; the user needs the path and the cause
        msg = str(e).splitlines()[0] if str(e) else ""
        raise BadDirError(
            f"{params_dir}: cannot restore parameters ({type(e).__name__}: {msg[:300]})"
        ) from None
    _check_like(trees, abstract, params_dir)
    trees = {k: trees[k] for k in nets}
    return gan_cls(cfg, trees, which=which, meta=doc)


DEFAULT_ENCODER_DIR = os.path.join(os.path.dirname(DEFAULT_DIR), "default_encoder")


def load_encoder(path: str = "default"):
    """A trained encoder DIR (`python -m ganinv_jax.main --config=configs/encoder.py`), or
    'default' (the paper-000 encoder shipped for the embedded default model, `assets/`) ->
    `encoders.TrainedEncoder` with `encode(images) -> latents`. Problems: one-line UserErrors."""
    from ganinv_jax import encoders

    if path == "default":
        if not os.path.isdir(DEFAULT_ENCODER_DIR):
            raise MissingDirError(
                f"the default encoder is missing ({DEFAULT_ENCODER_DIR} does not exist: a "
                "broken install?); reinstall, or train one: "
                "python -m ganinv_jax.main --config=configs/encoder.py --workdir=W"
            )
        path = DEFAULT_ENCODER_DIR
    return encoders.TrainedEncoder.load(path)


def _check_like(tree: Any, abstract: Any, where: str) -> None:
    """Orbax may restore into a target of another shape without complaint: check ourselves."""
    got = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}
    want = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(abstract)}
    if set(got) != set(want):
        odd = sorted(set(got) ^ set(want))
        raise BadDirError(f"{where}: cannot restore parameters (tree mismatch at {odd[0]})")
    for k, spec in want.items():
        if tuple(got[k].shape) != tuple(spec.shape) or got[k].dtype != spec.dtype:
            raise BadDirError(
                f"{where}: cannot restore parameters ({k} is "
                f"{tuple(got[k].shape)} {got[k].dtype}, config implies "
                f"{tuple(spec.shape)} {spec.dtype})"
            )
