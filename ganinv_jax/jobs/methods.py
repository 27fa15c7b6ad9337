"""Which inversion method `config.method` names, and the method config the engine gets.

Methods are registered in `ganinv_jax.inversion.METHODS` (`inversion.base.Method`s).
`config.<name>` (a sub-config in configs/stylegan2.py) overrides the method's own defaults, and the
contract key `config.steps` sets the method's `num_steps` (its schedule horizon) as well as the
engine's iteration cap, so the two can never disagree.
"""

from __future__ import annotations

import ml_collections

from ganinv_jax.errors import UserError


class MethodError(UserError, ValueError):
    pass


def get(name: str):
    """The registered method `name` (`ganinv_jax.inversion.METHODS`)."""
    from ganinv_jax import inversion

    if name not in inversion.METHODS:
        raise MethodError(f"config.method={name!r}: choose one of {', '.join(inversion.METHODS)}")
    return inversion.METHODS[name]


def method_config(config, method) -> ml_collections.ConfigDict:
    """The method's defaults, overridden by `config.<method name>`, with num_steps = steps."""
    cfg = method.default_config()
    # A method without settings ('encoder') has no config.<name>: config.encoder names the
    # encoder the job uses.
    overrides = config.get(method.name) if len(cfg) else None
    if overrides is not None:
        for key, value in overrides.items():
            if key not in cfg:
                raise MethodError(
                    f"config.{method.name}.{key}: not a {method.name} setting "
                    f"(known: {', '.join(sorted(cfg.keys()))})"
                )
            cfg[key] = value
    if "num_steps" in cfg:
        cfg.num_steps = int(config.steps)
    return cfg
