"""The one entry point: `python -m ganinv_jax.main --config=configs/stylegan2.py --workdir=W`.

`config.task` picks the job; each job is a function `run(config, workdir)` imported lazily
so that a task's heavy dependencies load only when it runs:
  * `sample`        — a grid of samples from `config.generator` (a converted DIR or 'default').
  * `invert`        — batch inversion of a dataset (`ganinv_jax.jobs.invert`).
  * `train_invgan`  — train InvGAN (`ganinv_jax.training.invgan`).
  * `export`        — a training workdir -> a `pretrained.load` DIR (`ganinv_jax.training.export`).
  * `ablation`      — InvGAN's naive / aug_naive / full ablation (`ganinv_jax.training.ablation`).
  * `edit`          — edit an invert workdir's latents along SeFa / GANSpace / InterFaceGAN
                      directions (`ganinv_jax.editing.task`).
Overrides: `--config.KEY=VALUE`; the config is locked, so a misspelt key fails at once.
Every task has the same error contract (`ganinv_jax.errors`): a problem with the input or the
settings ends the job with ONE line `<task>: error: <what, which file or key>` and exit status 1.
"""

from __future__ import annotations

import importlib
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from ganinv_jax import errors

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory of the job.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    None,
    "host:port of process 0 for multi-host runs (jax.distributed.initialize). Also read from "
    "$GANINV_COORDINATOR; TPU pods need neither (auto-detected).",
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Call jax.distributed.initialize() with auto-detection (TPU pods, "
    "SLURM) even without --coordinator_address.",
)

TASKS = {
    "sample": "ganinv_jax.jobs.sample:run",
    "invert": "ganinv_jax.jobs.invert:run",
    "train_invgan": "ganinv_jax.training.invgan:train_and_evaluate",
    "export": "ganinv_jax.training.export:run",
    "ablation": "ganinv_jax.training.ablation:run",
    "edit": "ganinv_jax.editing.task:run",
    "train_encoder": "ganinv_jax.training.encoder:train_and_evaluate",
}


def resolve_task(name: str):
    if name not in TASKS:
        raise app.UsageError(f"unknown config.task {name!r}; choose from {sorted(TASKS)}")
    module, fn = TASKS[name].split(":")
    return getattr(importlib.import_module(module), fn)


def maybe_initialize_distributed() -> None:
    """Explicit multi-host start-up; errors propagate (a silent single-host fallback would
    make every host redo the whole dataset)."""
    import jax

    coordinator = _COORDINATOR.value or os.environ.get("GANINV_COORDINATOR")
    if coordinator:
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    elif _DISTRIBUTED.value:
        jax.distributed.initialize()


def parse_flags(argv):
    """absl's flag parsing, with config-override errors as one line: a misspelt
    `--config.KEY` makes ml_collections raise AttributeError/KeyError from inside parsing,
    which absl would otherwise print as a three-part traceback."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(
            f"FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on flags."
        )
    except (AttributeError, KeyError) as e:
        key, _, hint = " ".join(
            str(e).replace("\\n", " ").replace("\\'", "").strip("'\"").split()
        ).partition(" ")
        bad = [a.split("=")[0] for a in argv if a.startswith("--config.") and key in a]
        sys.exit(f"FATAL Flags parsing error: unknown config key {(bad or [key])[0]!r}. {hint}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/stylegan2.py")
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required")
    run = resolve_task(config.task)
    maybe_initialize_distributed()
    os.makedirs(_WORKDIR.value, exist_ok=True)
    logging.info("task %s, workdir %s\n%s", config.task, _WORKDIR.value, config)
    with errors.exit_on_user_error(config.task):
        run(config, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
