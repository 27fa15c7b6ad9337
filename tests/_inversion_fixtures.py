"""Shared by tests/test_inversion*.py: a tiny random StyleGAN2 (res 16, channels 16/16/8,
w_dim 16) with 8 target images, the engine call and the comparisons of its results.

Compile count is the cost of these tests (XLA:CPU compiles each (method, cfg, strategy, mesh,
shape) once per init/run/result), so runs are module-scoped fixtures shared by the checks: a
lone image and a batch of 8 padded to 8 devices hit the same compiled program. The tests are
split over several files so that pytest-xdist (`--dist loadfile`) spreads them over workers.
"""

import jax
import jax.numpy as jnp
import numpy as np

from ganinv_jax import inversion as inv
from ganinv_jax.inversion import base, clone, latent_opt, pti
from ganinv_jax.models import stylegan2 as sg2

IDS = np.array([3, 10, 11, 42, 7, 0, 100, 5])
RTOL, ATOL = 2e-4, 2e-5


def tiny_setup():
    """(Frozen tiny G + D, images [8, 16, 16, 3]): G's samples plus noise; images 0 and 1 are
    exactly G(mean w), so methods starting at mean w reproduce them at step 1."""
    cfg = sg2.StyleGAN2Config(
        resolution=16, channels=(16, 16, 8), z_dim=16, w_dim=16, mapping_layers=2, img_channels=3
    )
    gv = sg2.Generator(cfg).init(jax.random.key(0), jnp.zeros((1, 16)))
    dv = sg2.Discriminator(cfg).init(jax.random.key(1), jnp.zeros((1, 16, 16, 3)))
    fr = base.make_frozen(cfg, gv, d_vars=dv, lpips=None, w_stats_samples=512)
    ws = base.random_ws(fr, jax.random.key(7), 8)
    imgs = base.synthesize(fr, ws) + 0.3 * jax.random.normal(jax.random.key(8), (8, 16, 16, 3))
    exact = base.synthesize(fr, jnp.broadcast_to(base.mean_latent(fr), (2,) + ws.shape[1:]))
    imgs = imgs.at[:2].set(exact)
    return fr, np.asarray(imgs)


def run(method, fr, imgs, ids, cfg, steps, **kw):
    kw.setdefault("strategy", "map")
    kw.setdefault("steps_per_call", 2)
    return inv.invert_batch(method, fr, imgs, ids, None, cfg, seed=0, steps=steps, **kw)


def assert_same(a, b, rows_a=slice(None), rows_b=slice(None), keys=("latent", "recon")):
    for k in keys:
        np.testing.assert_allclose(a[k][rows_a], b[k][rows_b], rtol=RTOL, atol=ATOL, err_msg=k)
    np.testing.assert_array_equal(a["iterations"][rows_a], b["iterations"][rows_b])
    np.testing.assert_array_equal(a["converged"][rows_a], b["converged"][rows_b])


def quick_cfg(method):
    """Each method's defaults at this tiny size: no early stop; the step sizes of the tests
    (the paper lrs are for 1024-px generators and move a 16-px one too little in 6 steps)."""
    c = method.default_config()
    if method is latent_opt:
        c.perceptual, c.initial_lr, c.initial_noise_factor = "none", 0.05, 0.0
    elif method is pti:
        c.perceptual, c.lr, c.stop_mse, c.stop_lpips = "none", 3e-3, -1.0, -1.0
    elif method is clone:
        c.eps = -1.0
    else:
        c.perceptual = "none"
    return c


def assert_lowers_the_reconstruction_loss(setup, method):
    """The default test run steps every method (Clone's G+D game and a whole GMM run included):
    6 steps on 3 noisy images, one device (vmap); each image's MSE after the last call is below
    its MSE after the first, and the run reports no failure."""
    fr, imgs = setup
    out = run(
        method.METHOD,
        fr,
        imgs[2:5],
        IDS[2:5],
        quick_cfg(method),
        6,
        strategy="vmap",
        devices=jax.devices()[:1],
    )
    mse = out["history"]["mse"]  # [calls, images], the method's own MSE
    assert mse.shape == (3, 3) and np.isfinite(mse).all() and not out["failed"].any()
    assert np.all(mse[-1] < mse[0]), mse
