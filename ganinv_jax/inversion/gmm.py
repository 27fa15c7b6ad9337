"""GMM — gradient modification modules ("Gradient Adjusting Networks for Domain Inversion", 002).

No public code exists and the paper's equations were lost in extraction: this is our
reconstruction of its text (PAPERS.md §3). Per image:
  * pivot w (fixed; from an encoder — the paper uses e4e — or latent optimization);
  * θ0 = G's frozen synthesis weights; g = ∂L_rec(G(w; θ0), x)/∂θ0 for every conv weight
    (L_rec = l2_weight * MSE + lpips_weight * LPIPS);
  * tuned weights θ' = θ0 + sign * out_scale * M_φ(g), sign = -1 by default (a learned
    "gradient step"; config switch `sign`), applied once to θ0. `recompute_g=True` instead
    re-evaluates g at the current θ' after every update (stop-gradient) and feeds that to M_φ.
  * M_φ: ONE module per input-channel width C; every conv layer (3x3 modulated convs and 1x1
    ToRGB) whose weight is [k, k, C, O] shares M_C, applied to the gradient viewed as k*k*O
    vectors of length C. A module is `num_blocks` residual blocks
        h <- h + W2 · LeakyReLU_0.2(SN(W1 · h + b)),   SN(v) = s · v / |v|  (ScaleNorm)
    with W1 [C, H], W2 [H, C] (H = hidden_mult * C) He-normal times `init_scale` (small, so M
    starts near the identity), b ~ U(-1/sqrt(C), 1/sqrt(C)) (PyTorch Linear's bias init),
    s = sqrt(H)
    (unit-RMS output of SN at init). No input normalization (the paper's Table 8: not needed).
  * only φ is optimized, with Ranger = Lookahead(RAdam, k=6, α=0.5) (optax.radam +
    optax.lookahead); the losses use the fast weights; 300 iterations by default (faces, AFHQ).
  * loss = l2_weight L2 + lpips_weight LPIPS + id_weight ID + reg_weight L_R, where
    L_R = mean over `reg_samples` random w_r = mapping(z) of reg_l2_weight * MSE + reg_lpips_weight
    * LPIPS between G(w_r; θ') and G(w_r; θ0) (the localization regularizer), and ID is
    `Frozen.id_loss(x, y)` (any feature loss, e.g. 1 - cos of face-recognition features; the paper's
    ArcFace/MoCo and face-parsing terms need converted networks and are off by default).
The paper reads two ways, and both are switches (`update_mode`).
  * 'once' (default), its abstract: "a modified generator is obtained by a single application
    of these networks to the original parameters": θ' = θ0 + M_φ(g0).
  * 'iterative', its conclusion: "these shifts are used within an iterative optimization
    process [...] the learning of the mapping networks and the optimization of the generator
    occur concurrently". Every step applies M_φ to the gradient at the CURRENT weights and keeps
    the result, θ_{t+1} = θ_t + sign * out_scale * M_φ(g_t), g_t = ∂L_rec/∂θ_t, while φ learns
    online from the loss at θ_{t+1}: a learned optimizer trained on this one image (one extra G
    forward/backward per step for g_{t+1}; θ_t per image in the state, like PTI). Its `tuned`
    is θ - θ0, as PTI's. With `grad_norm='adam'` the modules are fed Adam's per-weight direction
    of the g_t instead of g_t (an identity module is then an Adam step of size out_scale; not the
    paper, which feeds raw gradients), `out_rampup` / `out_rampdown` ramp out_scale up at the
    start / down at the end, and `grad_reg` makes g_t the gradient of L_rec + reg_weight L_R
    (the localization term then moves θ itself; with g_t of L_rec alone it reaches θ only
    through φ).
Ours: the paper's lr was lost — we use Ranger's default 1e-3; the loss weights of its Table 1 were
lost — defaults 1/1/0 (L2/LPIPS/ID) and reg_weight 1 with PTI's inner weights; biases, affine
layers, noise strengths and the const input are not modulated (only conv weights, like
HyperStyle); LPIPS uses `Frozen.lpips_net` (the paper: AlexNet). `tuned` in the result = φ.
Other architectures (`Frozen.arch`): θ0 is all of G's params (`arch.tunable`) and the modulated
weights are its 4-D conv weights `weight` [k, k, C, O] (PGGAN's equalized convs; BigGAN's
spectrally normalized convs, whose σ is then recomputed from the tuned weight and the stored
u, v); the pivot and the regularizer's random latents are the arch's (PGGAN z; BigGAN z + class).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ganinv_jax.inversion import base


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.num_steps = 300
    c.lr = 1e-3
    c.lookahead_k = 6
    c.lookahead_alpha = 0.5
    c.num_blocks = 2
    c.hidden_mult = 1
    c.init_scale = 0.1
    c.sign = -1.0
    c.out_scale = 1.0
    c.grad_norm = "none"  # 'none' (paper) | 'rms': M sees g / rms(g) per layer |
    # 'rms_weight': and its output is scaled to rms(θ0) (see modify) | 'adam' (iterative only):
    # M sees Adam's per-weight direction m̂ / (sqrt(v̂) + eps) of the g_t (see _fed)
    c.recompute_g = False
    c.grad_reg = False  # iterative: g_t = ∂(L_rec + reg_weight L_R)/∂θ_t, so the localization
    # term moves θ directly, not only through φ (not the paper: its g is of L_rec)
    c.out_rampdown = 0.0  # iterative: > 0 ramps out_scale down (cosine) over this last fraction
    c.out_rampup = 0.0  # iterative: > 0 ramps out_scale up (linear) over this first fraction
    c.update_mode = "once"  # 'once' (abstract: θ' = θ0 + M_φ(g0), one application to θ0) |
    # 'iterative' (conclusion: θ_{t+1} = θ_t + M_φ(g_t), g_t at θ_t; see the module docstring)
    c.l2_weight = 1.0
    c.lpips_weight = 1.0
    c.perceptual = "lpips"  # 'lpips' | 'pooled_l2' | 'none'
    c.cache_target_features = True  # keep the target's LPIPS features in the state (see base)
    c.id_weight = 0.0
    c.reg_weight = 1.0
    c.reg_samples = 1
    c.reg_l2_weight = 0.1
    c.reg_lpips_weight = 0.1
    c.stop_mse = -1.0
    # > 0: a per-image multiplier λ_t >= 1 of reg_weight, raised while L_R's MSE part (images on
    # [0, 1], on that step's random latents) is above this target and lowered back toward 1
    # below it: log λ_{t+1} = log λ_t + reg_adapt_rate * clip(mse_R / reg_target - 1, -1, 1),
    # 1 <= λ <= 1e3 (dual ascent on the drift constraint; not the paper). Only the images that
    # drift get the heavier term; with grad_reg it moves θ directly.
    c.reg_target = -1.0
    c.reg_adapt_rate = 0.05
    return c


# ----------------------------------------------------------------------------- structure


def conv_paths(synthesis_params) -> list[tuple[str, ...]]:
    """Paths of the conv weights [k, k, C, O] in the tunable params (sorted)."""
    flat = jax.tree_util.tree_flatten_with_path(synthesis_params)[0]
    out = []
    for path, leaf in flat:
        if base.is_conv_weight(path, leaf):
            out.append(tuple(getattr(p, "key", str(p)) for p in path))
    return sorted(out)


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def _set(tree, path, value):
    if len(path) == 1:
        return {**tree, path[0]: value}
    return {**tree, path[0]: _set(tree[path[0]], path[1:], value)}


def module_key(width: int) -> str:
    return f"c{width}"


def sharing_plan(synthesis_params) -> dict[str, list[tuple[str, ...]]]:
    """{module key: conv weight paths that share it} (one module per input width C)."""
    plan: dict[str, list] = {}
    for path in conv_paths(synthesis_params):
        plan.setdefault(module_key(_get(synthesis_params, path).shape[2]), []).append(path)
    return plan


def init_module(key, width: int, cfg):
    hidden = cfg.hidden_mult * width
    blocks = []
    for k in jax.random.split(key, cfg.num_blocks):
        k1, k2, k3 = jax.random.split(k, 3)
        blocks.append(
            dict(
                w1=jax.random.normal(k1, (width, hidden)) * math.sqrt(2.0 / width) * cfg.init_scale,
                b1=jax.random.uniform(k3, (hidden,), minval=-1, maxval=1) / math.sqrt(width),
                s=jnp.asarray(math.sqrt(hidden), jnp.float32),
                w2=jax.random.normal(k2, (hidden, width))
                * math.sqrt(2.0 / hidden)
                * cfg.init_scale,
            )
        )
    return blocks


def scale_norm(v, s, eps=1e-8):
    return s * v / jnp.sqrt(jnp.maximum(jnp.sum(v * v, axis=-1, keepdims=True), eps * eps))


def apply_module(blocks, h):
    """Residual ScaleNorm blocks on vectors h [..., C]."""
    for blk in blocks:
        a = scale_norm(h @ blk["w1"] + blk["b1"], blk["s"])
        h = h + jax.nn.leaky_relu(a, 0.2) @ blk["w2"]
    return h


GRAD_NORMS = ("none", "rms", "rms_weight", "adam")
# grad_norm='adam': Adam's defaults, the moments PTI's optimizer keeps (base.adam_step)
ADAM_B1, ADAM_B2, ADAM_EPS = base.ADAM_B1, base.ADAM_B2, base.ADAM_EPS
UPDATES = ("once", "iterative")


def modify(blocks, grad, grad_norm: str = "none", weight=None):
    """M_C applied to a conv-weight gradient [k, k, C, O] viewed as k*k*O vectors of length C.

    grad_norm='rms' divides the layer's gradient by its RMS r before the module and multiplies
    the output by r (so M(g) = g still at an identity module). Why: ScaleNorm discards the input's
    magnitude, so for raw gradients (RMS ~1e-3 here) the block's input W1 g + b is all bias, the
    correction it adds does not depend on g, and φ has to grow W1 ~100x before g can steer it.
    grad_norm='rms_weight' also divides by r but rescales the output to the RMS of the layer's
    base `weight` instead: an identity module is then a normalized gradient step whose size,
    relative to the weights, is `out_scale` (measured on the default model: ||g|| / ||θ0|| =
    6e-5, so 'rms' leaves θ' = θ0 to 5 digits and the modules cannot grow the 1000x gain a
    visible change needs within 150 steps).
    grad_norm='adam': `grad` is already Adam's per-weight direction (`_fed`), used as is: an
    identity module is then an Adam step of size `out_scale` on the conv weights."""
    k1, k2, c, o = grad.shape
    if grad_norm not in GRAD_NORMS:
        raise ValueError(f"gmm: grad_norm must be one of {GRAD_NORMS}, got {grad_norm!r}")
    rms = lambda t: jnp.sqrt(jnp.mean(jnp.square(t))) + 1e-12  # noqa: E731
    r = rms(grad) if grad_norm in ("rms", "rms_weight") else 1.0
    out_r = rms(weight) if grad_norm == "rms_weight" else r
    vecs = jnp.transpose(grad / r, (0, 1, 3, 2)).reshape(-1, c)
    out = apply_module(blocks, vecs).reshape(k1, k2, o, c)
    return out_r * jnp.transpose(out, (0, 1, 3, 2))


def tuned_params(phi, theta0, grads, cfg, out_scale=None):
    """θ' = θ0 + sign * out_scale * M_φ(g) on every conv weight (others stay θ0); `theta0` is
    the weights the correction is applied to (the base, or θ_t with update_mode='iterative');
    `out_scale` (None: cfg.out_scale) is this step's, see `_out_scale`."""
    scale = cfg.sign * (cfg.out_scale if out_scale is None else out_scale)
    theta = theta0
    for mkey, paths in sharing_plan(theta0).items():
        for path in paths:
            corr = modify(phi[mkey], grads["/".join(path)], cfg.grad_norm, _get(theta0, path))
            theta = _set(theta, path, _get(theta0, path) + scale * corr)
    return theta


def _out_scale(t, cfg):
    """Step t's out_scale: constant, or (iterative) shaped like latent_opt's lr: a linear
    ramp-up over the first `out_rampup` fraction (the first Adam-direction steps are ~sign(g)
    on every weight) and a cosine ramp-down over the last `out_rampdown` (the last steps settle
    instead of ending on the step's noise floor)."""
    if cfg.out_rampdown <= 0 and cfg.out_rampup <= 0:
        return cfg.out_scale
    if not _iterative(cfg):
        raise ValueError("gmm: out_rampup/out_rampdown need update_mode='iterative' (a schedule)")
    return cfg.out_scale * base.lr_ramp(t, cfg.num_steps, cfg.out_rampup, cfg.out_rampdown)


# ----------------------------------------------------------------------------- losses


def _rec_loss(frozen, params, ws, image, cfg, perc_target=None):
    img = base.synthesize(frozen, ws[None], params)
    l2 = jnp.mean(jnp.square(img - image[None]))
    lp = base.perceptual_to_image(frozen, img, image[None], perc_target, cfg.perceptual)[0]
    return cfg.l2_weight * l2 + base.weighted(cfg.lpips_weight, lp), (img, l2, lp)


def _reg_loss(frozen, params, key, cfg):
    """(L_R, its MSE part on [0, 1] images): L_R = reg_l2 * MSE + reg_lpips * LPIPS between
    G(w_r; θ') and G(w_r; θ0), mean over `reg_samples` random w_r."""
    ws_r = base.random_ws(frozen, key, cfg.reg_samples)
    tuned = base.synthesize(frozen, ws_r, params)
    orig = jax.lax.stop_gradient(base.synthesize(frozen, ws_r))
    mse = jnp.mean(jnp.square(tuned - orig), axis=(1, 2, 3))
    loss = jnp.mean(
        cfg.reg_l2_weight * mse
        + cfg.reg_lpips_weight * base.perceptual(frozen, tuned, orig, cfg.perceptual)
    )
    return loss, jnp.mean(mse) / 4.0


REG_SCALE_MAX = 1e3  # the largest multiplier of reg_weight that reg_target can reach


def _reg_multiplier(log_scale, reg_mse, cfg):
    """The next step's log λ (reg_target > 0): dual ascent on mse_R <= reg_target, with the
    relative violation clipped to [-1, 1] (one noisy sample moves λ by at most a factor
    e^reg_adapt_rate) and 1 <= λ <= REG_SCALE_MAX."""
    excess = jnp.clip(jax.lax.stop_gradient(reg_mse) / cfg.reg_target - 1.0, -1.0, 1.0)
    return jnp.clip(log_scale + cfg.reg_adapt_rate * excess, 0.0, math.log(REG_SCALE_MAX))


def conv_grads(frozen, params, ws, image, cfg, perc_target=None, reg_key=None, reg_scale=1.0):
    """g: {path: ∂L/∂θ} for the conv weights at `params` (stop-gradient); L = L_rec, plus
    reg_scale * reg_weight * L_R on random latents drawn with `reg_key` when given (grad_reg)."""

    def loss(p):
        rec = _rec_loss(frozen, p, ws, image, cfg, perc_target)[0]
        if reg_key is None:
            return rec
        return rec + reg_scale * cfg.reg_weight * _reg_loss(frozen, p, reg_key, cfg)[0]

    g = jax.grad(loss)(params)
    g = jax.lax.stop_gradient(g)
    return {"/".join(p): _get(g, p) for p in conv_paths(params)}


def _tx(cfg):
    return optax.lookahead(
        optax.radam(cfg.lr), sync_period=cfg.lookahead_k, slow_step_size=cfg.lookahead_alpha
    )


def init(key, image, frozen: base.Frozen, init_latent, cfg):
    theta0 = frozen.arch.tunable(frozen.g["params"])
    ws = frozen.arch.check_latent(init_latent)
    # fail here, not silently or mid-run: grad_reg and the step ramps need update_mode='iterative'
    _grad_reg_key(key, cfg)
    _out_scale(0, cfg)
    key, kphi = jax.random.split(key)
    widths = sorted({_get(theta0, p).shape[2] for p in conv_paths(theta0)})
    keys = jax.random.split(kphi, len(widths))
    phi = {module_key(c): init_module(k, c, cfg) for k, c in zip(keys, widths)}
    phi = optax.LookaheadParams.init_synced(phi)
    perc_target = base.cache_target(frozen, image[None], cfg.perceptual, cfg.cache_target_features)
    state = dict(
        t=jnp.asarray(0, jnp.int32),
        key=key,
        image=image,
        ws=ws,
        phi=phi,
        opt=_tx(cfg).init(phi),
        perc_target=perc_target,
        g=conv_grads(frozen, theta0, ws, image, cfg, perc_target),
    )
    if _iterative(cfg):
        state["theta"] = theta0
    if _adam(cfg):
        state["moments"] = _moments(None, state["g"])
    if cfg.reg_target > 0:
        if cfg.reg_weight <= 0:
            raise ValueError("gmm: reg_target adapts the localization term: needs reg_weight > 0")
        state["log_reg_scale"] = jnp.zeros((), jnp.float32)
    return state


def _grad_reg_key(key, cfg):
    """The key of g_t's localization samples (grad_reg), or None: g_t is of L_rec alone."""
    if not cfg.grad_reg or cfg.reg_weight <= 0:
        return None
    if not _iterative(cfg):
        raise ValueError("gmm: grad_reg needs update_mode='iterative' (g_t at θ_t)")
    return jax.random.fold_in(key, 1)


def _adam(cfg) -> bool:
    if cfg.grad_norm == "adam" and not _iterative(cfg):
        raise ValueError("gmm: grad_norm='adam' needs update_mode='iterative' (moments of g_t)")
    return cfg.grad_norm == "adam"


def _moments(moments, g):
    """Adam's first and second moments of the conv gradients, updated with g (None: zeros)."""
    m, v = (jax.tree_util.tree_map(jnp.zeros_like, g),) * 2 if moments is None else moments
    m = jax.tree_util.tree_map(lambda m, g: ADAM_B1 * m + (1 - ADAM_B1) * g, m, g)
    v = jax.tree_util.tree_map(lambda v, g: ADAM_B2 * v + (1 - ADAM_B2) * g * g, v, g)
    return m, v


def _fed(state, cfg):
    """What M_φ is applied to: g_t, or (grad_norm='adam') Adam's bias-corrected direction
    m̂ / (sqrt(v̂) + eps) of g_0..g_t -- a per-weight scale, where 'rms_weight' has one per
    layer (on the default model, 4 held-out images: 8.4x below the pivot in 300 steps fed
    Adam's direction, 1.5x in 150 fed the per-layer one; README "Diagnosis")."""
    if not _adam(cfg):
        return state["g"]
    n = (state["t"] + 1).astype(jnp.float32)  # gradients in the moments
    m, v = state["moments"]
    c1, c2 = 1 - ADAM_B1**n, 1 - ADAM_B2**n
    return jax.tree_util.tree_map(lambda m, v: (m / c1) / (jnp.sqrt(v / c2) + ADAM_EPS), m, v)


def saves_weight_delta(cfg) -> bool:
    """Whether `result`'s `tuned` is θ - θ0 (update_mode='iterative') rather than φ."""
    return _iterative(cfg)


def _iterative(cfg) -> bool:
    if cfg.update_mode not in UPDATES:
        raise ValueError(f"gmm: update_mode must be one of {UPDATES}, got {cfg.update_mode!r}")
    return cfg.update_mode == "iterative"


def _current(state, frozen, cfg):
    """The weights M_φ's correction is applied to: θ0, or θ_t with update_mode='iterative'."""
    return state["theta"] if _iterative(cfg) else frozen.arch.tunable(frozen.g["params"])


def step(state, frozen: base.Frozen, cfg):
    key, kr = jax.random.split(state["key"])
    theta0 = frozen.arch.tunable(frozen.g["params"])
    current = _current(state, frozen, cfg)
    image, ws = state["image"], state["ws"]
    fed, scale = _fed(state, cfg), _out_scale(state["t"], cfg)
    reg_scale = jnp.exp(state["log_reg_scale"]) if cfg.reg_target > 0 else 1.0

    def loss_fn(fast):
        theta = tuned_params(fast, current, fed, cfg, scale)
        rec, (img, l2, lp) = _rec_loss(frozen, theta, ws, image, cfg, state["perc_target"])
        idl = jnp.zeros((), jnp.float32)
        if cfg.id_weight > 0:
            if frozen.id_loss is None:
                raise ValueError("gmm: id_weight > 0 needs Frozen.id_loss (a feature loss)")
            idl = frozen.id_loss(img, image[None])[0]
        reg = reg_mse = jnp.zeros((), jnp.float32)
        if cfg.reg_weight > 0:
            reg, reg_mse = _reg_loss(frozen, theta, kr, cfg)
        loss = rec + cfg.id_weight * idl + reg_scale * cfg.reg_weight * reg
        # drift: ||θ' - θ0|| / ||θ0|| of the conv weights this step used (diagnostic curve)
        # and grad_rel: ||g|| / ||θ0||, the size of the gradient the modules are fed
        conv0 = {k: _get(theta0, k.split("/")) for k in state["g"]}
        drift = base.relative_change({k: _get(theta, k.split("/")) for k in state["g"]}, conv0)
        grad_rel = base.relative_change(base.tree_sub(conv0, state["g"]), conv0)
        return loss, dict(
            loss=loss,
            mse=l2,
            perceptual=lp,
            id=idl,
            reg=reg,
            reg_mse=reg_mse,
            reg_scale=jnp.asarray(reg_scale, jnp.float32),
            drift=drift,
            grad_rel=grad_rel,
        )

    grads, metrics = jax.grad(loss_fn, has_aux=True)(state["phi"].fast)
    updates, opt = _tx(cfg).update(grads, state["opt"], state["phi"])
    phi = optax.apply_updates(state["phi"], updates)
    new = dict(state, t=state["t"] + 1, key=key, phi=phi, opt=opt)
    if cfg.reg_target > 0:
        new["log_reg_scale"] = _reg_multiplier(state["log_reg_scale"], metrics["reg_mse"], cfg)
        reg_scale = jnp.exp(new["log_reg_scale"])
    if cfg.recompute_g or _iterative(cfg):
        theta = tuned_params(phi.fast, current, fed, cfg, scale)
        new["g"] = conv_grads(
            frozen, theta, ws, image, cfg, state["perc_target"], _grad_reg_key(key, cfg), reg_scale
        )
        if _iterative(cfg):
            new["theta"] = theta
        if _adam(cfg):
            new["moments"] = _moments(state["moments"], new["g"])
    return new, metrics


def tuned_g(state, frozen: base.Frozen, cfg):
    """θ' of a state: the weights the run reached (iterative; φ alone cannot rebuild them), or
    θ0 corrected by M_φ of the gradient at θ0 (one-shot)."""
    if _iterative(cfg):
        return state["theta"]
    return tuned_params(state["phi"].fast, frozen.arch.tunable(frozen.g["params"]), state["g"], cfg)


def result(state, frozen: base.Frozen, cfg):
    theta = tuned_g(state, frozen, cfg)
    if _iterative(cfg):
        tuned = base.tree_sub(theta, frozen.arch.tunable(frozen.g["params"]))
    else:
        tuned = state["phi"].fast
    recon = base.synthesize(frozen, state["ws"][None], theta)[0]
    return dict(latent=state["ws"], recon=recon, tuned=tuned)


def converged(metrics, cfg):
    return metrics["mse"] < cfg.stop_mse


METHOD = base.Method(
    "gmm", init, step, result, default_config, converged, tunes_weights=True, tuned_g=tuned_g
)
