"""Task `edit`: edit what an `invert` run inverted, along SeFa / GANSpace / InterFaceGAN directions.

  python -m ganinv_jax.main --config=configs/stylegan2.py --config.task=edit --workdir=W_EDIT \
      --config.edit.source=W_INVERT --config.edit.directions=sefa:0,sefa:1,ganspace:0 \
      --config.edit.strengths=-3,-1.5,0,1.5,3

Reads the inversion workdir (`latents.npz`: ids + W+ latents; `manifest.json`: the generator,
the method and its config; `tuned/`: per-chunk tuned generators; `summary.json`: the data
settings), loads the generator the inversion used, checks and resolves every direction
(`ganinv_jax.editing.directions`; any problem is one line before any work), then per inverted
image (status converged / max_steps, id order, the first `edit.max_images` if > 0) writes
  W_EDIT/grids/<id, 8 digits>.png   one row per direction: the reconstruction, then one column
                                    per strength (`make_grid(min_cell=READABLE_CELL)`);
and at the end
  W_EDIT/edits.npz      ids, directions (names), strengths, latents [N, D, S, num_ws, w_dim]
                        (the edited W+), vectors, masks, scales, generator ('tuned'|'base' per id);
  W_EDIT/directions/    each resolved direction as a reusable .npz (a spec of its own);
  W_EDIT/edit.json      the settings, the directions' metadata and, with `edit.measure`, what
                        the edits did (`measured`): the LPIPS each direction moves the picture;
                        for a tuned generator the same on the base G at the same latents and
                        their ratio (`editability`, near 1 = editability kept); for InterFaceGAN
                        A-B directions the label proxy (`editing/measure.py`);
  W_EDIT/tensorboard/   the grids as image summaries.

Which generator synthesizes the edits: the one each image was inverted with.
  * latent_opt, encoder, encoder_ft (its saved tuned trees are per-image encoders) and any
    method that keeps G fixed: the base G; noise maps the method optimized
    (`extra/noise/*` in the chunk files, `latent_opt.optimize_noise`) are used as well.
  * PTI: base params with the saved synthesis delta added (`tuned` = synthesis - base).
  * Clone: base params with the saved delta of the whole G added (mapping + synthesis).
  * GMM: the saved tree is φ (the gradient-modification modules), not weights. θ' is rebuilt as
    in `gmm.result`: θ' = θ0 + sign * out_scale * M_φ(g), with g = ∂L_rec/∂θ0 at the image's
    pivot recomputed from the target image (re-read from the inversion's data source, whose
    listing must still match the manifest's fingerprint) and the method's saved config. With
    `gmm.recompute_g=True` g depends on the whole optimization history, which is not saved:
    those edits use the BASE generator (a warning says so; `generator` in edits.npz is 'base').
    With `gmm.update_mode='iterative'` the saved tree is the synthesis delta, applied as PTI's.
  * a registered method of one's own with tuned parameters: the base G (warning).
Strengths (`edit.strengths`): SeFa / InterFaceGAN: distance in W along the unit direction;
GANSpace: standard deviations of that component. `edit.layers` 'start:stop' replaces every
direction's own W+ entries (SeFa then factorizes only the layers those entries feed).
The job runs on process 0 (other processes return after the checks); rerunning rewrites the
outputs atomically.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from typing import Any, Optional

import numpy as np
from absl import logging

from ganinv_jax import atomic
from ganinv_jax.data import images as image_io
from ganinv_jax.editing import directions as dirs
from ganinv_jax.editing import measure
from ganinv_jax.errors import UserError

MANIFEST = "manifest.json"
LATENTS = "latents.npz"
SUMMARY = "summary.json"
OK_STATUSES = (0, 1)  # jobs.records: converged, max_steps


class EditError(UserError, ValueError):
    """A problem with the edit job's settings or its source workdir; one line."""


# ----------------------------------------------------------------------------- settings


def parse_list(text: str, key: str) -> list[str]:
    items = [s.strip() for s in str(text or "").split(",")]
    if not any(items) or not all(items):
        raise EditError(f"{key}={text!r}: want a comma-separated list with no empty entries")
    return items


def parse_strengths(text: str) -> np.ndarray:
    key = "config.edit.strengths"
    try:
        vals = np.asarray([float(s) for s in parse_list(text, key)], np.float32)
    except ValueError:
        raise EditError(
            f"{key}={text!r}: want comma-separated numbers, e.g. -3,-1.5,0,1.5,3"
        ) from None
    if not np.all(np.isfinite(vals)):
        raise EditError(f"{key}={text!r}: strengths must be finite")
    return vals


@dataclasses.dataclass
class Inversion:
    """What the edit job reads from an invert workdir."""

    path: str
    ids: np.ndarray
    latents: np.ndarray
    status: np.ndarray
    run: dict  # manifest['run']: generator, method, method_config, listing, ...
    chunks: list  # manifest['chunks']
    summary: Optional[dict]

    @property
    def method(self) -> str:
        return str(self.run.get("method", ""))

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)


def open_inversion(path: str) -> Inversion:
    key = "config.edit.source"
    if not path:
        raise EditError(f"{key} is required: the --workdir of an invert run")
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise EditError(f"{key}={path!r}: no such directory")
    mpath = os.path.join(path, MANIFEST)
    lpath = os.path.join(path, LATENTS)
    if not os.path.isfile(lpath):
        raise EditError(
            f"{lpath}: no latents.npz (not an invert workdir, an unfinished run, or one run "
            "with output.merge_latents=False)"
        )
    if not os.path.isfile(mpath):
        raise EditError(f"{mpath}: no manifest.json (not an invert workdir)")
    try:
        with np.load(lpath, allow_pickle=False) as z:
            ids, latents = np.asarray(z["ids"], np.int64), np.asarray(z["latents"], np.float32)
            status = np.asarray(z["status"]) if "status" in z.files else np.zeros(len(ids))
    except Exception as e:  # noqa: BLE001 -- any unreadable file is one line
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EditError(f"{lpath}: unreadable latents file ({msg})") from None
    try:
        with open(mpath) as f:
            manifest = json.load(f)
        run, chunks = dict(manifest["run"]), list(manifest["chunks"])
        if "generator" not in run:
            raise KeyError("run.generator")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EditError(f"{mpath}: unreadable manifest ({type(e).__name__}: {e})") from None
    arch = (run.get("arch") or {}).get("name", "stylegan2")
    if arch != "stylegan2":  # PGGAN / BigGAN inversions have no W+ to edit
        raise EditError(
            f"{path}: task 'edit' edits StyleGAN2 W+ latents; this is a {arch} inversion"
        )
    if latents.ndim != 3 or ids.shape != (len(latents),) or status.shape != ids.shape:
        raise EditError(
            f"{lpath}: want ids [N] and latents [N, num_ws, w_dim], got {latents.shape}"
        )
    summary = None
    if os.path.isfile(os.path.join(path, SUMMARY)):
        try:
            with open(os.path.join(path, SUMMARY)) as f:
                summary = json.load(f)
        except (OSError, ValueError):
            summary = None
    return Inversion(path, ids, latents, status, run, chunks, summary)


def load_generator(inv: Inversion):
    """The generator the inversion used (manifest 'generator'), checked against its recorded
    architecture."""
    from ganinv_jax import pretrained

    spec = inv.run["generator"]
    try:
        gan = pretrained.load(spec)
    except Exception as e:  # noqa: BLE001 -- any loading problem is one clear line
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EditError(
            f"{inv.file(MANIFEST)}: the inversion's generator {spec!r} cannot be loaded ({first})"
        ) from None
    if getattr(gan, "architecture", "stylegan2") != "stylegan2":
        raise EditError(
            f"{inv.file(MANIFEST)}: task 'edit' edits StyleGAN2 W+ latents; generator {spec!r} "
            f"is a {gan.architecture}"
        )
    want = inv.run.get("generator_config")
    have = json.loads(json.dumps(gan.config.to_dict(), default=str))
    if want is not None and want != have:
        raise EditError(
            f"{inv.file(MANIFEST)}: generator {spec!r} is not the architecture the inversion "
            "used (its config.json changed)"
        )
    if inv.latents.shape[1:] != (gan.config.num_ws, gan.config.w_dim):
        raise EditError(
            f"{inv.file(LATENTS)}: latents {inv.latents.shape[1:]} do not fit generator "
            f"{spec!r} (num_ws {gan.config.num_ws}, w_dim {gan.config.w_dim})"
        )
    return gan


# ----------------------------------------------------------------------------- tuned generators


def _as_lists(tree):
    """Orbax may give lists back as dicts {'0': .., '1': ..}: turn those into lists again."""
    if isinstance(tree, dict):
        out = {k: _as_lists(v) for k, v in tree.items()}
        if out and all(re.fullmatch(r"\d+", str(k)) for k in out):
            return [out[k] for k in sorted(out, key=int)]
        return out
    if isinstance(tree, (list, tuple)):
        return [_as_lists(v) for v in tree]
    return tree


class Generators:
    """Per image id: the G variables the image was inverted with, and the noise maps it used."""

    def __init__(self, inv: Inversion, gan):
        import jax

        self.inv, self.gan = inv, gan
        self.method = inv.method
        self.base = gan.G
        self._chunk_of = {}
        for c in inv.chunks:
            for a, b in c["ids"]:
                for i in range(a, b):
                    self._chunk_of[i] = c
        has_tuned = any(c.get("tuned") for c in inv.chunks)
        self.mode = "base"
        self.note = ""
        self._cache: dict[str, Any] = {}
        if has_tuned and self.method in ("pti", "clone"):
            self.mode = self.method
        elif has_tuned and self.method == "gmm":
            self._setup_gmm()
        elif has_tuned and self.method == "encoder_ft":
            pass  # its tuned parameters are per-image encoders: G is the base
        elif has_tuned:
            self.note = (
                f"method {self.method!r} saved tuned parameters this job cannot apply: "
                "edits use the base generator"
            )
        self._add = jax.jit(lambda a, b: jax.tree_util.tree_map(lambda x, y: x + y, a, b))

    # -- GMM: θ' = θ0 + sign * out_scale * M_φ(g), g recomputed from the target image

    def _setup_gmm(self) -> None:
        import jax
        import ml_collections

        from ganinv_jax import losses
        from ganinv_jax.inversion import base, gmm
        from ganinv_jax.jobs import sources

        cfg = gmm.default_config()
        for k, v in (self.inv.run.get("method_config") or {}).items():
            if k in cfg:
                cfg[k] = tuple(v) if isinstance(v, list) else v
        if gmm.saves_weight_delta(cfg):  # its `tuned` is the synthesis delta, as PTI's
            self.mode = "gmm_delta"
            return
        if cfg.recompute_g:
            self.note = (
                "gmm.recompute_g=True: its tuned weights depend on the whole optimization "
                "history, which is not saved; edits use the BASE generator"
            )
            return
        where = self.inv.file(SUMMARY)
        if not self.inv.summary or "config" not in self.inv.summary:
            raise EditError(
                f"{where}: missing or unreadable; GMM edits re-read the target images with the "
                "inversion's data settings recorded there"
            )
        config = ml_collections.ConfigDict(self.inv.summary["config"])
        source = sources.open_source(config.data)
        if source.fingerprint() != self.inv.run.get("listing"):
            raise EditError(
                f"{where}: the inversion's input ({source.describe()}) changed since it ran; "
                "GMM edits need the same target images"
            )
        # the settings the manifest recorded for the run win over its summary's config
        recorded = self.inv.run.get("preprocess", {})
        config.data.update(
            {k: recorded[k] for k in ("resize_mode", "background", "max_pixels") if k in recorded}
        )
        cg = self.gan.config
        self.pre = sources.preprocess_for(config.data, cg)
        lpips_params, net = None, losses.perceptual.canonical_net(config.lpips_net)
        if cfg.perceptual == "lpips":
            try:
                lpips_params = losses.load_lpips_params(config.lpips_net)
            except (ValueError, FileNotFoundError) as e:
                raise EditError(f"{where}: lpips_net={config.lpips_net!r}: {e}") from None
        g = self.base
        self.frozen = base.Frozen(
            g=g,
            w_avg=g["buffers"]["mapping"]["w_avg"],
            w_std=np.ones((), np.float32),  # unused by the gradient g
            g_cfg=cg,
            lpips=lpips_params,
            lpips_net=net,
        )
        self.source, self.gmm_cfg, self.mode = source, cfg, "gmm"

        def theta(frozen, phi, ws, image):
            theta0 = frozen.g["params"]["synthesis"]
            target = base.cache_target(
                frozen, image[None], cfg.perceptual, cfg.cache_target_features
            )
            grads = gmm.conv_grads(frozen, theta0, ws, image, cfg, target)
            return gmm.tuned_params(phi, theta0, grads, cfg)

        self._theta = jax.jit(theta)

    # -- per image

    def _chunk_tree(self, image_id: int, what: str):
        """A committed chunk's tuned tree ('tuned') or record arrays ('file') for an id."""
        c = self._chunk_of.get(int(image_id))
        if c is None:
            raise EditError(f"{self.inv.file(MANIFEST)}: image {image_id} is in no finished chunk")
        key = (what, c["name"])
        if key not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if k[0] != what}  # one per kind
            if what == "tuned":
                from ganinv_jax import checkpointing

                path = self.inv.file(c["tuned"])
                try:
                    tree = checkpointing.restore_sharded_pytree(path)
                except Exception as e:  # noqa: BLE001 -- orbax raises many types
                    first = str(e).splitlines()[0] if str(e) else type(e).__name__
                    raise EditError(f"{path}: cannot read the tuned parameters ({first})") from None
                tree = {"ids": np.asarray(tree["ids"]), "tuned": _as_lists(tree["tuned"])}
            else:
                from ganinv_jax.jobs import records

                tree = records.load_chunk(self.inv.file(c["file"]))
            self._cache[key] = tree
        return self._cache[key]

    def noise(self, image_id: int) -> Optional[dict]:
        """Noise maps the method optimized for this image (`extra/noise/<layer>`), or None."""
        rec = self._chunk_tree(image_id, "file")
        names = [k for k in rec if k.startswith("extra/noise/")]
        if not names:
            return None
        j = int(np.flatnonzero(np.asarray(rec["ids"]) == image_id)[0])
        return {k[len("extra/noise/") :]: np.asarray(rec[k][j], np.float32) for k in names}

    def variables(self, image_id: int, latent: np.ndarray) -> tuple[Any, str]:
        """(G variables, 'tuned' | 'base') for this image."""
        import jax

        if self.mode == "base":
            return self.base, "base"
        tree = self._chunk_tree(image_id, "tuned")
        j = np.flatnonzero(tree["ids"] == image_id)
        if not j.size:
            raise EditError(f"{self.inv.path}: no tuned parameters saved for image {image_id}")
        mine = jax.tree_util.tree_map(lambda x: np.asarray(x)[int(j[0])], tree["tuned"])
        params = self.base["params"]
        try:
            if self.mode in ("pti", "gmm_delta"):
                params = {**params, "synthesis": self._add(params["synthesis"], mine)}
            elif self.mode == "clone":
                params = self._add(params, mine)
            else:  # gmm
                image, reason = self.source.load_prepared(int(image_id), self.pre)
                if image is None:
                    raise EditError(
                        f"{self.source.describe()}: image {image_id} no longer decodes ({reason})"
                    )
                syn = self._theta(self.frozen, mine, np.asarray(latent, np.float32), image)
                params = {**params, "synthesis": syn}
        except (ValueError, TypeError, KeyError) as e:
            raise EditError(
                f"{self.inv.path}/tuned: the saved {self.method} parameters of image {image_id} "
                f"do not fit the generator ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
            ) from None
        return {**self.base, "params": params}, "tuned"


# ----------------------------------------------------------------------------- the job


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]+", "_", name).strip("_") or "direction"


def run(config, workdir: str) -> dict:
    """Entry point of task 'edit' (see the module docstring). Problems: one-line EditError /
    DirectionError (UserError) before any output is written."""
    import jax

    ec = config.edit
    strengths = parse_strengths(ec.strengths)
    specs = parse_list(ec.directions, "config.edit.directions")
    if int(ec.max_images) < 0:
        raise EditError(f"config.edit.max_images must be >= 0, got {ec.max_images}")
    if int(ec.ganspace_samples) < 2:
        raise EditError(f"config.edit.ganspace_samples must be >= 2, got {ec.ganspace_samples}")
    if int(ec.interfacegan_per_class) < 1:
        raise EditError(
            f"config.edit.interfacegan_per_class must be >= 1, got {ec.interfacegan_per_class}"
        )
    inv = open_inversion(ec.source)
    gan = load_generator(inv)
    layers = dirs.parse_layers(ec.layers, gan.config.num_ws, key="config.edit.layers")
    resolver = dirs.Resolver(
        gan,
        layers=layers,
        ganspace_samples=int(ec.ganspace_samples),
        interfacegan_per_class=int(ec.interfacegan_per_class),
        seed=int(config.seed),
        generator_desc=str(inv.run["generator"]),
    )
    try:
        checked = [resolver.check(s) for s in specs]  # every spec, before any is computed
    except dirs.DirectionError as e:
        raise EditError(f"config.edit.directions: {e}") from None
    keep = np.flatnonzero(np.isin(inv.status, OK_STATUSES))
    if int(ec.max_images):
        keep = keep[: int(ec.max_images)]
    if not keep.size:
        raise EditError(f"{inv.file(LATENTS)}: no successfully inverted image to edit")
    gens = Generators(inv, gan)  # GMM: checks its data source here, before any work
    if gens.note:
        logging.warning("edit: %s", gens.note)
    directions = [resolver.resolve(s) for s in checked]
    if jax.process_index() != 0:
        return {}
    return execute(config, workdir, inv, gan, gens, directions, strengths, keep)


class Measurer:
    """`edit.measure`: the LPIPS each edit moves the picture on the image's generator and on the
    base G (editability; tuned generators only), and for InterFaceGAN directions the label
    proxy (nearest class mean of encoder latents) of the strongest positive edit."""

    def __init__(self, config, gan, gens, directions, strengths, n: int):
        from ganinv_jax import losses

        self.gan, self.gens, self.strengths = gan, gens, np.asarray(strengths)
        self.moving = np.flatnonzero(self.strengths != 0)
        self.tuned = gens.mode != "base"
        d = len(directions)
        self.moved = np.zeros((n, d, len(self.moving)))
        self.moved_base = np.zeros_like(self.moved)
        self.lpips_params = losses.load_lpips_params("vgg")
        self._lpips = losses.lpips_apply
        # label proxy: InterFaceGAN directions, a positive strength and an encoder to read codes
        self.proxy = [r for r, x in enumerate(directions) if x.kind == "interfacegan"]
        self.top = int(np.argmax(self.strengths))
        if self.strengths[self.top] <= 0 or not dirs.has_encoder(gan):
            self.proxy = []
        self.means = None
        if self.proxy:
            codes = dirs.labelled_codes(
                gan,
                range(len(dirs.FMNIST_CLASSES)),
                int(config.edit.interfacegan_per_class),
                int(config.seed),
            )
            self.means = measure.class_means(codes, len(dirs.FMNIST_CLASSES))
        self.classes = [
            tuple(dirs.class_index(c) for c in directions[r].classes) for r in self.proxy
        ]
        self.codes = np.zeros((n, len(self.proxy), 2, self.means.shape[1] if self.proxy else 0))

    def _rgb(self, x):
        return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x

    def _moved(self, recon, cells):
        """recon [H, W, C], cells [D, S, H, W, C] -> [D, S'] LPIPS (nonzero strengths)."""
        edited = self._rgb(cells[:, self.moving].reshape(-1, *recon.shape))
        moved = measure.lpips_moved(
            lambda a, b: self._lpips(self.lpips_params, a, b), self._rgb(recon), edited
        )
        return moved.reshape(cells.shape[0], len(self.moving))

    def add(self, k: int, ws, recon, cells, noise) -> None:
        self.moved[k] = self._moved(recon, cells)
        if self.tuned:
            base = np.asarray(
                self.gan.synthesis(ws, noise=noise, variables=self.gens.base), np.float32
            )
            self.moved_base[k] = self._moved(base[0], base[1:].reshape(cells.shape))
        for q, r in enumerate(self.proxy):
            pair = np.stack([recon, cells[r, self.top]])
            self.codes[k, q] = dirs.encode_images(self.gan, image_io.to_uint8(pair))

    def report(self, directions) -> dict:
        names = [x.name for x in directions]
        out = {"strengths": self.strengths[self.moving].tolist()}
        out["lpips_moved"] = {n: float(self.moved[:, r].mean()) for r, n in enumerate(names)}
        if self.tuned:
            out["editability"] = measure.summarize_editability(self.moved, self.moved_base, names)
        if self.proxy:
            out["label_proxy"] = {
                "strength": float(self.strengths[self.top]),
                "per_direction": {
                    names[r]: measure.label_proxy(
                        self.codes[:, q, 0], self.codes[:, q, 1], self.means, a, b
                    )
                    for q, (r, (a, b)) in enumerate(zip(self.proxy, self.classes))
                },
            }
        return out


def execute(config, workdir, inv, gan, gens, directions, strengths, keep) -> dict:
    from ganinv_jax.jobs import reporting

    out = lambda *p: os.path.join(workdir, *p)  # noqa: E731
    n, d, s = len(keep), len(directions), len(strengths)
    num_ws, w_dim = gan.config.num_ws, gan.config.w_dim
    edited = np.zeros((n, d, s, num_ws, w_dim), np.float32)
    used = []
    writing = {"path": ""}

    def at(path: str) -> str:
        writing["path"] = path
        return path

    measurer = (
        Measurer(config, gan, gens, directions, strengths, n) if config.edit.measure else None
    )
    header = [f"recon ({inv.method})"] + [f"{v:+g}" for v in strengths]
    t0 = time.perf_counter()
    logging.info(
        "edit: %d images of %s (%s, generator %s), %d directions x %d strengths",
        n,
        inv.path,
        inv.method,
        gens.mode,
        d,
        s,
    )
    writer = reporting.make_writer(out("tensorboard"), True)
    try:
        os.makedirs(at(out("grids")), exist_ok=True)
        for k, j in enumerate(keep):
            image_id, latent = int(inv.ids[j]), inv.latents[j]
            for r, direction in enumerate(directions):
                edited[k, r] = dirs.sweep(latent, direction, strengths)
            ws = np.concatenate([latent[None], edited[k].reshape(d * s, num_ws, w_dim)])
            variables, which = gens.variables(image_id, latent)
            used.append(which)
            imgs = np.asarray(
                gan.synthesis(ws, noise=gens.noise(image_id), variables=variables), np.float32
            )
            recon, cells = imgs[0], imgs[1:].reshape(d, s, *imgs.shape[1:])
            if measurer is not None:
                measurer.add(k, ws, recon, cells, gens.noise(image_id))
            rows = np.concatenate([np.broadcast_to(recon, (d, 1, *recon.shape)), cells], axis=1)
            grid = image_io.make_grid(
                rows.reshape(d * (s + 1), *recon.shape),
                ncols=s + 1,
                col_labels=header,
                row_labels=[x.name for x in directions],
            )
            image_io.save_png(at(out("grids", f"{image_id:08d}.png")), grid)
            try:
                writer.write_images(k, {"edits": grid[None]})
            except Exception as e:  # noqa: BLE001 -- TensorBoard must never stop the job
                logging.warning("edit: TensorBoard write failed: %s", e)
            logging.info("edit: %d/%d images | %s", k + 1, n, f"{image_id:08d}.png")
        os.makedirs(at(out("directions")), exist_ok=True)
        files = []
        for r, direction in enumerate(directions):
            name = f"{r:02d}_{safe_name(direction.name)}.npz"
            dirs.save(at(out("directions", name)), direction)
            files.append(os.path.join("directions", name))
        atomic.write_npz(
            at(out("edits.npz")),
            ids=inv.ids[keep],
            directions=np.asarray([x.name for x in directions], dtype=np.str_),
            strengths=strengths,
            latents=edited,
            vectors=np.stack([x.vector for x in directions]).astype(np.float32),
            masks=np.stack([x.mask for x in directions]),
            scales=np.asarray([x.scale for x in directions], np.float64),
            generator=np.asarray(used, dtype=np.str_),
        )
        report = {
            "source": inv.path,
            "method": inv.method,
            "generator": inv.run["generator"],
            "generator_mode": gens.mode,
            "note": gens.note,
            "images": n,
            "strengths": strengths.tolist(),
            "layers": str(config.edit.layers),
            "seconds": round(time.perf_counter() - t0, 3),
            "directions": [
                {
                    "name": x.name,
                    "kind": x.kind,
                    "index": x.index,
                    "classes": list(x.classes),
                    "scale": x.scale,
                    "value": x.value,
                    "layers": np.flatnonzero(x.mask).tolist(),
                    "file": f,
                }
                for x, f in zip(directions, files)
            ],
        }
        if measurer is not None:
            report["measured"] = measurer.report(directions)
        atomic.write_json(at(out("edit.json")), report)
        writer.flush()
    except OSError as e:
        raise EditError(
            f"cannot write {e.filename or writing['path']} ({e.strerror or e})"
        ) from None
    finally:
        writer.close()
    logging.info("edit: done: %d images x %d directions -> %s", n, d, workdir)
    return report
