"""Load a converted StyleGAN2 (see `weights_convert/`) and use it through pure functions.

    gan = pretrained.load("path/to/DIR")            # or pretrained.load("default")
    ws = gan.mapping(z, truncation_psi=0.7)         # [N, num_ws, w_dim]
    img = gan.synthesis(ws, noise_mode="const")     # [N, H, W, C] float32, NHWC
    logits = gan.discriminate(img)                  # [N, 1]

The methods are jit-compiled wrappers over *functional* forms that take the variables
explicitly (`gan.mapping_fn(variables_G, z, ...)`, `gan.synthesis_fn(variables_G, ws, ...)`,
`gan.discriminate_fn(variables_D, img, ...)`), which is what the inversion methods that tune
G use. A variables tree is `{'params': ..., 'buffers': ...}` (G) or `{'params': ...}` (D).

DIR layout (written by `python -m weights_convert`):
    DIR/config.json   architecture, StyleGAN2Config, source format/path/sha256, networks
    DIR/params/       orbax checkpoint of {'G_ema': vars, ['G': vars,] ['D': vars]}
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp

from ganinv_jax import checkpointing
from ganinv_jax.errors import UserError
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


class PretrainedGAN:
    """A StyleGAN2 G/D pair: config, variables trees and pure functions over them."""

    def __init__(
        self,
        config: StyleGAN2Config,
        params: Mapping[str, Any],
        which: str = "G_ema",
        meta: Optional[Mapping[str, Any]] = None,
    ):
        if which not in GENERATORS:
            raise ValueError(f"which must be 'G_ema' or 'G', got {which!r}")
        if which not in params:
            raise ValueError(
                f"this GAN has no {which!r} network (has {sorted(params)}); "
                "convert with --raw-g to get the raw G"
            )
        self.config = config
        self.params = dict(params)
        self.which = which
        self.meta = dict(meta or {})
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

    @classmethod
    def from_trees(
        cls,
        config: StyleGAN2Config,
        trees: Mapping[str, Any],
        which: str = "G_ema",
        meta: Optional[Mapping[str, Any]] = None,
    ) -> "PretrainedGAN":
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
            raise ValueError(
                "this GAN has no discriminator (it was converted with --no-d, or "
                "the source had none)"
            )
        return self.params["D"]

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

    def _check_images(self, images):
        cfg = self.config
        want = (cfg.resolution, cfg.resolution, cfg.img_channels)
        if images.ndim != 4 or tuple(images.shape[1:]) != want:
            raise ValueError(
                f"images must be NHWC [N, {', '.join(map(str, want))}], got {tuple(images.shape)}"
            )

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

    def generate(self, z, c=None, truncation_psi=1.0, noise_mode="const", key=None):
        return self.synthesis(self.mapping(z, c, truncation_psi), noise_mode, key)

    def __repr__(self):
        c = self.config
        return (
            f"PretrainedGAN(res={c.resolution}, w_dim={c.w_dim}, num_ws={c.num_ws}, "
            f"networks={sorted(self.params)}, which={self.which!r})"
        )


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


def read_config(path: str) -> tuple[StyleGAN2Config, dict]:
    """Parse DIR/config.json -> (config, the whole document)."""
    fname = os.path.join(path, CONFIG_NAME)
    if not os.path.isfile(fname):
        raise MissingDirError(
            f"{path}: not a converted GAN directory (no {CONFIG_NAME}; "
            "make one with `python -m weights_convert`)"
        )
    try:
        with open(fname) as f:
            doc = json.load(f)
        if doc.get("architecture") != "stylegan2":
            raise BadDirError(f"unsupported architecture {doc.get('architecture')!r}")
        cfg = StyleGAN2Config.from_dict(doc["config"])
        nets = list(doc.get("networks", ["G_ema"]))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise BadDirError(f"{fname}: corrupt config ({type(e).__name__}: {e})") from None
    if "G_ema" not in nets or not set(nets) <= {"G_ema", "G", "D"}:
        raise BadDirError(f"{fname}: bad 'networks' list {nets}")
    doc["networks"] = nets
    return cfg, doc


def load(
    path: str = "default", which: str = "G_ema", networks: Optional[Sequence[str]] = None
) -> PretrainedGAN:
    """Load a converted GAN directory (or 'default'). `networks` restricts what is read."""
    path = resolve(path)
    cfg, doc = read_config(path)
    nets = list(doc["networks"]) if networks is None else list(networks)
    missing = set(nets) - set(doc["networks"])
    if missing:
        raise BadDirError(f"{path}: has no network(s) {sorted(missing)} (has {doc['networks']})")
    if which not in nets:
        raise BadDirError(f"{path}: which={which!r} is not among the loaded networks {nets}")
    params_dir = os.path.join(path, PARAMS_NAME)
    if not os.path.isdir(params_dir):
        raise MissingDirError(f"{path}: no {PARAMS_NAME}/ checkpoint directory")
    abstract = abstract_variables(cfg, doc["networks"])
    try:
        trees = checkpointing.restore_pytree(params_dir, target=abstract)
    except Exception as e:  # orbax raises many types; the user needs the path and the cause
        msg = str(e).splitlines()[0] if str(e) else ""
        raise BadDirError(
            f"{params_dir}: cannot restore parameters ({type(e).__name__}: {msg[:300]})"
        ) from None
    _check_like(trees, abstract, params_dir)
    trees = {k: trees[k] for k in nets}
    return PretrainedGAN(cfg, trees, which=which, meta=doc)


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
