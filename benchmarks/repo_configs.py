"""The repository's config files (`configs/<name>.py`) for benchmark scripts run from a checkout
(`configs/` is not part of the installed package)."""

from __future__ import annotations

import importlib.util
import os

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def get_config(name: str, variant: str = ""):
    """`configs/<name>.py`'s get_config(variant): e.g. 'stylegan2' (the main job), 'encoder'."""
    path = os.path.join(CONFIGS, name + ".py")
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)
