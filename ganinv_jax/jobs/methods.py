"""Which inversion method `config.method` names, and the method config the engine gets.

Methods live in `ganinv_jax.inversion.<name>` as a `METHOD` (`inversion.base.Method`).
`config.<name>` (a sub-config in configs/stylegan2.py) overrides the method's own defaults, and the
contract key `config.steps` sets the method's `num_steps` (its schedule horizon) as well as the
engine's iteration cap, so the two can never disagree.
"""
from __future__ import annotations

import importlib

import ml_collections

KNOWN = ("latent_opt", "pti", "clone", "gmm")
_REGISTERED: dict = {}   # extra methods (tests); never consulted for the KNOWN names


class MethodError(ValueError):
    pass


def register(method) -> None:
    """Make an extra `Method` selectable by its name (used by tests for toy methods)."""
    if method.name in KNOWN:
        raise MethodError(f"{method.name!r} is a built-in method name")
    _REGISTERED[method.name] = method


def get(name: str):
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in KNOWN:
        raise MethodError(f"config.method={name!r}: choose one of {', '.join(KNOWN)}")
    try:
        module = importlib.import_module(f"ganinv_jax.inversion.{name}")
    except ImportError as e:
        raise MethodError(f"config.method={name!r}: not available in this build ({e})") from None
    return module.METHOD


def method_config(config, method) -> ml_collections.ConfigDict:
    """The method's defaults, overridden by `config.<method name>`, with num_steps = steps."""
    cfg = method.default_config()
    overrides = config.get(method.name)
    if overrides is not None:
        for key, value in overrides.items():
            if key not in cfg:
                raise MethodError(f"config.{method.name}.{key}: not a {method.name} setting "
                                  f"(known: {', '.join(sorted(cfg.keys()))})")
            cfg[key] = value
    if "num_steps" in cfg:
        cfg.num_steps = int(config.steps)
    return cfg
