"""Export a trained InvGAN-StyleGAN2 workdir as a `pretrained.load`-able DIR, with pictures.

    python -m ganinv_jax.main --config=configs/invgan_fashion_mnist.py --config.task=export \
        --workdir=/work/runs/invgan_fmnist --config.export.out=ganinv_jax/assets/default

DIR layout (the `weights_convert` format): `config.json` ({format_version, architecture,
networks, source, config=StyleGAN2Config.to_dict()}) and `params/` = orbax tree
{'G_ema': {'params', 'buffers'}, 'G': {...}, 'D': {'params'}}. The EMA of mapped w tracked
during training is in `buffers/mapping/w_avg`. Beside them: `train_config.json`,
`samples.png`, `reconstructions.png`, `curves.csv`, `curves.png`, `eval.json`.
"""

from __future__ import annotations

import glob
import json
import os

import jax
import numpy as np
from absl import logging

from ganinv_jax import atomic, checkpointing
from ganinv_jax import sharding as shd
from ganinv_jax.data import images as image_io
from ganinv_jax.errors import UserError
from ganinv_jax.training import invgan
from ganinv_jax.training import state as state_lib


def restore_workdir(config, workdir: str, step=None):
    """(nets, host state) of the latest (or given) checkpoint of a training workdir."""
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise UserError(f"{workdir}: no training checkpoints (checkpoints/ missing)")
    nets, mesh, init_fn = invgan.setup(config, shd.make_mesh(1))
    abstract, _ = state_lib.abstract_state(init_fn, jax.random.key(config.seed), mesh)
    mgr = checkpointing.train_checkpoint_manager(os.path.join(workdir, "checkpoints"))
    try:
        state = checkpointing.restore_train_state(mgr, abstract, step)
    finally:
        mgr.close()
    return nets, jax.device_get(state)


def export_trees(state) -> dict:
    return {
        "G_ema": {"params": state.g_ema, "buffers": state.g["buffers"]},
        "G": {"params": state.g["params"], "buffers": state.g["buffers"]},
        "D": {"params": state.d},
    }


def sample_grid(nets, g_vars, n: int = 64, seed: int = 123) -> np.ndarray:
    z = jax.random.normal(jax.random.key(seed), (n, nets.z_dim))
    imgs = jax.jit(lambda v, z: nets.synthesis(v, nets.mapping(v, z)))(g_vars, z)
    return image_io.make_grid(np.asarray(imgs), 8)


def reconstruction_grid(nets, g_vars, d_params, test_images, n: int = 16) -> np.ndarray:
    """Rows of (real, G(D_w(real)), |diff| - 1) triplets, `n` test images, 8 per row."""
    x = np.asarray(test_images[:n])
    _, rec = invgan.reconstruct(nets, g_vars, d_params, x)
    diff = np.abs(rec - x) - 1.0  # |diff| in [0, 2] shown as [-1, 1]
    rows = []
    for i in range(0, n, 8):
        rows += [x[i : i + 8], np.clip(rec[i : i + 8], -1, 1), np.clip(diff[i : i + 8], -1, 1)]
    labels = ["real", "G(D_w(real))", "|diff|"] * (len(rows) // 3)
    return image_io.make_grid(np.concatenate(rows), 8, row_labels=labels)


def generated_images(gan, n: int, seed: int = 0, batch: int = 500) -> np.ndarray:
    """n samples G(mapping(z)) of a `pretrained` GAN (z ~ N(0, I) from `seed`, constant noise,
    no truncation), NHWC float32, in batches of `batch` (one compiled shape)."""
    z = np.asarray(jax.random.normal(jax.random.key(seed), (n, gan.config.z_dim)))
    fn = jax.jit(lambda z: gan.generate(z))
    out = []
    for i in range(0, n, batch):
        zb = z[i : i + batch]
        pad = batch - zb.shape[0]
        imgs = np.asarray(
            fn(np.concatenate([zb, np.zeros((pad, zb.shape[1]), zb.dtype)]) if pad else zb)
        )
        out.append(imgs[: batch - pad])
    return np.concatenate(out)


def sample_fd_vgg16(gan, real_images: np.ndarray, n: int, seed: int = 0) -> float:
    """`losses.metrics.fd_vgg16` of n generated samples against the first n `real_images`."""
    from ganinv_jax.losses import metrics

    n = min(n, len(real_images))
    return metrics.fd_vgg16(generated_images(gan, n, seed), real_images[:n])


def read_scalars(workdir: str) -> dict[str, list[tuple[int, float]]]:
    """All scalars from the workdir's TensorBoard event files."""
    import tensorflow as tf

    out: dict[str, dict[int, float]] = {}
    for f in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
        for ev in tf.compat.v1.train.summary_iterator(f):
            for v in ev.summary.value:
                if v.HasField("tensor"):
                    arr = tf.make_ndarray(v.tensor)
                    if arr.size != 1 or arr.dtype.kind not in "fiu":
                        continue
                    val = float(arr.reshape(()))
                elif v.HasField("simple_value"):
                    val = float(v.simple_value)
                else:
                    continue
                out.setdefault(v.tag, {})[int(ev.step)] = val  # later writes win (resume)
    return {k: sorted(d.items()) for k, d in out.items()}


def write_curves(
    scalars,
    csv_path: str,
    png_path: str,
    tags=("g_adv", "d_adv", "g_lat", "fm", "mmd", "rec_mae_train"),
) -> None:
    steps = sorted({s for v in scalars.values() for s, _ in v})
    names = sorted(scalars)
    table = {k: dict(v) for k, v in scalars.items()}
    with open(csv_path, "w") as f:
        f.write(",".join(["step"] + names) + "\n")
        for s in steps:
            f.write(
                ",".join([str(s)] + [f"{table[k][s]:.6g}" if s in table[k] else "" for k in names])
                + "\n"
            )
    _plot_png([(t, scalars[t]) for t in tags if t in scalars], png_path)


def _plot_png(series, path: str, w: int = 360, h: int = 200) -> None:
    """One small panel per series (PIL only; no matplotlib on the target machines)."""
    from PIL import Image, ImageDraw

    cols = 3
    rows = max(1, -(-len(series) // cols))
    img = Image.new("RGB", (cols * w, rows * h), "white")
    draw = ImageDraw.Draw(img)
    for i, (name, pts) in enumerate(series):
        ox, oy = (i % cols) * w, (i // cols) * h
        xs = np.array([p[0] for p in pts], float)
        ys = np.array([p[1] for p in pts], float)
        draw.rectangle([ox + 40, oy + 20, ox + w - 10, oy + h - 25], outline="black")
        lo, hi = float(np.min(ys)), float(np.max(ys))
        hi = hi if hi > lo else lo + 1e-6
        x0, x1 = xs.min(), max(xs.max(), xs.min() + 1)
        px = ox + 40 + (xs - x0) / (x1 - x0) * (w - 50)
        py = oy + h - 25 - (ys - lo) / (hi - lo) * (h - 45)
        draw.line(list(zip(px.tolist(), py.tolist())), fill="navy", width=1)
        draw.text((ox + 45, oy + 4), f"{name}  [{lo:.3g}, {hi:.3g}]", fill="black")
        draw.text((ox + 40, oy + h - 20), f"step {int(x0)}..{int(x1)}", fill="black")
    img.save(path)


def model_card(config, nets, res: dict, note: str = "") -> str:
    m = nets.model_config
    return "\n".join(
        [
            "# InvGAN-StyleGAN2, Fashion-MNIST 32x32x3",
            "",
            f"Trained with `configs/invgan_fashion_mnist.py` (variant `{config.variant}`) for "
            f"{res['step']} steps of batch {config.batch_size} "
            f"({res['step'] * config.batch_size / 1000:.0f} kimg) on the train split.",
            f"G/D widths {tuple(m.channels)} at 4..{m.resolution}, z_dim {m.z_dim}, w_dim "
            f"{m.w_dim}, {m.mapping_layers}-layer mapping, noise_mode '{config.noise_mode}'.",
            "",
            f"Held-out test split ({res['num_test']} images), per-pixel MAE of G(D_w(x)) "
            "on [-1, 1]: "
            f"G_ema {res['test_mae_g_ema']:.4f}, raw G {res['test_mae_g']:.4f}.",
            f"Time per inferred latent (D_w, batch 256, this CPU): "
            f"{res['sec_per_latent_cpu'] * 1e3:.2f} ms.",
            *(
                [
                    "Sample quality: FD-VGG16 (`losses.metrics.fd_vgg16`, "
                    f"{res['fd_n']} G_ema samples "
                    f"vs {res['fd_n']} test images) = {res['fd_vgg16']:.2f} (lower is better)."
                ]
                if "fd_vgg16" in res
                else []
            ),
            "",
            "Files: `samples.png` (64 random G_ema samples), `reconstructions.png` (rows of real, "
            "G_ema(D_w(real)), |difference|), `curves.csv`/`curves.png` (training losses), "
            "`train_config.json`, `eval.json`.",
            *(["", f"Note: {note}"] if note else []),
            "",
        ]
    )


def export(
    config,
    workdir: str,
    out: str,
    num_test: int = 0,
    step=None,
    source_note: str = "",
    fd_n: int = 10000,
) -> dict:
    """Write the DIR (atomically: temp sibling then rename; an existing `out` is replaced)."""
    from ganinv_jax import pretrained

    if config.backbone != "stylegan2":
        raise UserError("only the StyleGAN2 backbone exports to the pretrained DIR format")
    nets, state = restore_workdir(config, workdir, step)
    step = int(state.step)
    out = os.path.abspath(out)
    with atomic.atomic_dir(out, replace=True) as tmp:
        trees = export_trees(state)
        checkpointing.save_pytree(os.path.join(tmp, pretrained.PARAMS_NAME), trees)
        doc = {
            "format_version": 1,
            "architecture": "stylegan2",
            "networks": sorted(trees),
            "source": {
                "format": "ganinv_jax-invgan",
                "trainer": "ganinv_jax.training.invgan",
                "config": "configs/invgan_fashion_mnist.py",
                "variant": config.variant,
                "dataset": "fashion_mnist (train split, padded to 32x32, 3 channels)",
                "step": step,
                "images_seen": step * config.batch_size,
                "note": source_note,
            },
            "config": nets.model_config.to_dict(),
        }
        with open(os.path.join(tmp, pretrained.CONFIG_NAME), "w") as f:
            json.dump(doc, f, indent=2, sort_keys=True)
            f.write("\n")
        with open(os.path.join(tmp, "train_config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
        # Pictures and numbers from the exported trees themselves (loaded back through
        # `pretrained.load`, so they also check the format).
        gan = pretrained.load(tmp)
        g_vars, d_params = gan.params["G_ema"], gan.params["D"]["params"]
        image_io.save_png(os.path.join(tmp, "samples.png"), sample_grid(nets, g_vars))
        test = invgan.load_test_images(config, num_test or None)
        image_io.save_png(
            os.path.join(tmp, "reconstructions.png"),
            reconstruction_grid(nets, g_vars, d_params, test),
        )
        res = {
            "step": step,
            "num_test": int(test.shape[0]),
            "test_mae_g_ema": invgan.test_reconstruction_mae(nets, g_vars, d_params, test),
            "test_mae_g": invgan.test_reconstruction_mae(nets, gan.params["G"], d_params, test),
            "sec_per_latent_cpu": invgan.time_per_latent(nets, d_params, test),
        }
        if fd_n and nets.model_config.resolution >= 32:  # fd_vgg16 needs >= 32 px
            # sample quality: offline FID in ImageNet-VGG16 features, N of each side
            res.update(fd_vgg16=sample_fd_vgg16(gan, test, fd_n), fd_n=min(fd_n, len(test)))
        with open(os.path.join(tmp, "eval.json"), "w") as f:
            json.dump(res, f, indent=2)
        with open(os.path.join(tmp, "MODEL.md"), "w") as f:
            f.write(model_card(config, nets, res, source_note))
        scalars = read_scalars(workdir)
        if scalars:
            write_curves(scalars, os.path.join(tmp, "curves.csv"), os.path.join(tmp, "curves.png"))
    return res


def run(config, workdir: str) -> dict:
    """Task `export`: the training run in `workdir` -> the DIR `config.export.out`."""
    e = config.export
    if not e.out:
        raise UserError(
            "config.export.out: say where to write the DIR (e.g. --config.export.out=/tmp/my_model)"
        )
    res = export(config, workdir, e.out, e.num_test, None if e.step < 0 else e.step, e.note, e.fd_n)
    logging.info("export: wrote %s: %s", e.out, json.dumps(res))
    return res
