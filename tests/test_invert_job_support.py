"""Helpers for the invert-job tests (no tests here): a tiny random generator DIR in the converted
format, job configs, a test-only toy method, and a folder of broken files.

Run as a script it is the subprocess entry point of the multi-process / kill tests:
  python tests/test_invert_job_support.py WORKDIR GEN_DIR [key=value ...]
"""

from __future__ import annotations

import json
import os
import sys

import jax.numpy as jnp
import numpy as np


def make_tiny_gan_dir(
    path: str, *, resolution: int = 16, channels: int = 1, seed: int = 0, with_d: bool = True
) -> str:
    """A random tiny StyleGAN2 written like `python -m weights_convert` writes a DIR."""
    import jax

    from ganinv_jax import checkpointing, pretrained
    from ganinv_jax.models.stylegan2 import StyleGAN2Config

    n_blocks = int(np.log2(resolution)) - 1
    cfg = StyleGAN2Config(
        resolution=resolution,
        channels=(16,) * n_blocks,
        z_dim=16,
        w_dim=16,
        img_channels=channels,
        mapping_layers=2,
    )
    nets = ["G_ema", "D"] if with_d else ["G_ema"]
    trees = {
        n: pretrained.init_variables(cfg, n, jax.random.fold_in(jax.random.key(seed), k))
        for k, n in enumerate(nets)
    }
    os.makedirs(path)
    checkpointing.save_pytree(os.path.join(path, pretrained.PARAMS_NAME), trees)
    with open(os.path.join(path, pretrained.CONFIG_NAME), "w") as f:
        json.dump(
            {
                "architecture": "stylegan2",
                "config": cfg.to_dict(),
                "networks": nets,
                "source": {"format": "test-random"},
            },
            f,
        )
    return path


def job_config(gen_dir: str, **overrides):
    """configs/stylegan2.py with a tiny generator and cheap settings; `a.b=v` style overrides
    given as keyword `a__b=v`."""
    import importlib.util

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(
        "cfg_stylegan2", os.path.join(repo, "configs", "stylegan2.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config()
    config.generator = gen_dir
    config.steps = 6
    config.steps_per_call = 3
    config.batch_size = 2
    config.latent_opt.perceptual = "pooled_l2"  # fast; the metrics still use real LPIPS
    config.output.grid_pairs = 4
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    config.lock()
    return config


def write_array_images(path: str, n: int, resolution: int = 16, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, resolution, resolution, 1), dtype=np.uint8)
    np.save(path, x)
    return path


# ----------------------------------------------------------------------------- toy methods
# Test-only methods (never shipped): they exercise the job's machinery cheaply.


def toy_nan_method():
    """Test-only: latent_opt whose steps go non-finite on bright images from step 2 on."""
    from ganinv_jax.inversion import base, latent_opt

    def step(state, frozen, cfg):
        new, m = latent_opt.step(state, frozen, cfg)
        poison = (jnp.mean(state["image"]) > 0.5) & (state["t"] >= 2)
        return new, dict(m, loss=jnp.where(poison, jnp.nan, m["loss"]))

    return base.Method(
        "toy_nan",
        latent_opt.init,
        step,
        latent_opt.result,
        cheap_latent_opt_cfg,
        latent_opt.converged,
        tunes_weights=False,
    )


def cheap_latent_opt_cfg():
    from ganinv_jax.inversion import latent_opt

    cfg = latent_opt.default_config()
    cfg.perceptual = "pooled_l2"
    return cfg


def toy_tuned_method():
    """Test-only: latent_opt that also reports a per-image "tuned" tree (as PTI/GMM do), so the
    collective orbax save is exercised without the cost of compiling a real G-tuning method."""
    from ganinv_jax.inversion import base, latent_opt

    def result(state, frozen, cfg):
        out = latent_opt.result(state, frozen, cfg)
        w = state["params"]["w"]
        return dict(out, tuned={"delta": {"w_shift": w - frozen.w_avg, "t": state["t"]}})

    return base.Method(
        "toy_tuned",
        latent_opt.init,
        latent_opt.step,
        result,
        cheap_latent_opt_cfg,
        latent_opt.converged,
        tunes_weights=False,
    )


def register_toys() -> None:
    from ganinv_jax import inversion

    for make in (toy_nan_method, toy_tuned_method):
        inversion.register(make())


def _parse(value: str):
    try:
        return json.loads(value)
    except ValueError:
        return value


def main(argv) -> None:
    """Subprocess entry: optional jax.distributed from env, then the job."""
    workdir, gen_dir, *kv = argv
    import jax

    n_dev = int(os.environ.get("TEST_NUM_CPU_DEVICES", "1"))
    jax.config.update("jax_num_cpu_devices", n_dev)
    jax.config.update("jax_platforms", "cpu")
    if os.environ.get("TEST_COORDINATOR"):
        jax.distributed.initialize(
            coordinator_address=os.environ["TEST_COORDINATOR"],
            num_processes=int(os.environ["TEST_NUM_PROCESSES"]),
            process_id=int(os.environ["TEST_PROCESS_ID"]),
        )
    overrides = {k.replace(".", "__"): _parse(v) for k, v in (a.split("=", 1) for a in kv)}
    from ganinv_jax.jobs import invert

    register_toys()
    invert.run(job_config(gen_dir, **overrides), workdir)


if __name__ == "__main__":
    main(sys.argv[1:])


def align_center_or_none(img):
    """A stand-in alignment hook: "no face" (None) on near-white images, else the central half."""
    a = np.asarray(img.convert("L"), np.float32)
    if a.mean() > 250:
        return None
    w, h = img.size
    return img.crop((w // 4, h // 4, w - w // 4, h - h // 4))
