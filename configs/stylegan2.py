"""Batch GAN inversion with a StyleGAN2 generator (default: the embedded InvGAN Fashion-MNIST
model) -- or any converted DIR: PGGAN (pytorch_GAN_zoo) and BigGAN (pytorch-pretrained-biggan)
DIRs run with the same config (`--config.generator=DIR`; BigGAN's options in `config.biggan`).

  python -m ganinv_jax.main --config=configs/stylegan2.py --workdir=/tmp/ganinv
  python -m ganinv_jax.main --config=configs/stylegan2.py:tiny --workdir=/tmp/ganinv_tiny
  python -m ganinv_jax.main --config=configs/stylegan2.py --workdir=W \
      --config.generator=/path/to/converted_dir --config.method=pti --config.steps=500 \
      --config.data.path=/path/to/images
  python -m ganinv_jax.main --config=configs/stylegan2.py --workdir=W \
      --config.data.tfds_name=fashion_mnist --config.data.split=test --config.data.limit=256
  python -m ganinv_jax.main --config=configs/stylegan2.py --config.task=sample --workdir=W
  python -m ganinv_jax.main --config=configs/stylegan2.py --workdir=W \
      --config.generator=/path/to/biggan_dir --config.method=pti --config.biggan.truncation=0.4 \
      --config.biggan.class_mode=given --config.biggan.class_index=207 --config.pti.lr=3e-4

Contract keys (README): `task`, `method`, `steps`, `batch_size`, `seed`, `generator`,
`data.path`, `data.tfds_name`, `data.split`, `data.limit`. Per-method hyperparameters live in
`config.<method>` (defaults: the method's own `default_config()` in `ganinv_jax/inversion/`;
their `num_steps` is always `config.steps`).
"""

import ml_collections

from ganinv_jax import inversion


def method_defaults(name: str) -> ml_collections.ConfigDict:
    """The inversion package's defaults for `name`, without num_steps (= config.steps)."""
    cfg = inversion.METHODS[name].default_config()
    return ml_collections.ConfigDict({k: v for k, v in cfg.items() if k != "num_steps"})


def data_config(path: str = "") -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    d.path = path  # folder of images (recursive) or .npz/.npy; '' + no tfds_name:
    # the bundled sample (16 Fashion-MNIST test images)
    d.tfds_name = ""  # or a TFDS dataset (download=False; fashion_mnist works offline)
    d.split = "test"
    d.limit = 0  # first N items (0: all)
    d.tfds_data_dir = ""  # TFDS data_dir ('' : TFDS default)
    d.array_key = ""  # .npz member ('' : 'images' or the only array)
    d.resize_mode = "crop"  # 'crop': shorter side to G's size + center crop; 'pad': center
    # pad smaller images (e.g. 28x28 Fashion-MNIST into 32x32)
    d.background = 0  # gray level for alpha compositing and padding
    d.max_pixels = 50_000_000  # decompression-bomb cap (width * height from the header)
    d.align = ""  # alignment hook: 'package.module:function' (PIL -> PIL or None)
    return d


def get_config(variant: str = ""):
    config = ml_collections.ConfigDict()
    config.task = "invert"  # invert | sample | edit
    config.generator = "default"  # a converted DIR (python -m weights_convert) or 'default'
    config.seed = 0

    # Inversion (task 'invert').
    config.method = "latent_opt"  # latent_opt | pti | clone | gmm | encoder | encoder_ft
    config.steps = 200  # max iterations per image (= the method's num_steps)
    config.batch_size = 8  # images per device per chunk
    config.init = "auto"  # auto: each method's paper start -- latent_opt from the
    # encoder (mean w if G has none); PTI / Clone / GMM tune
    # around a projected pivot ('latent_opt') | mean_w |
    # encoder (config.encoder) | latent_opt (projection below)
    config.encoder = "auto"  # the encoder of init 'encoder', of the pivot's start and of the
    # encoder methods: auto (the shipped paper-000 encoder of the default G, else G's InvGAN
    # w-head, else none) | default | invgan | none | a trained encoder DIR (configs/encoder.py)
    config.init_steps = 0  # pivot projection: latent_opt steps, 0 = `steps` (config.latent_opt's
    config.init_space = "w+"  # loss) in 'w+' or 'w' (PTI's pivot), from the encoder if any
    config.strategy = "auto"  # engine batching: auto | vmap | map | chunked
    config.steps_per_call = 25  # method steps per compiled call (lax.scan length)
    config.keep_best = True  # each image keeps the state whose reconstruction had the lowest
    # MSE among its start (the pivot) and the end of every compiled call, not the last one: a
    # tuning method never ends above its pivot (engine.invert_batch(keep_best=...); costs a
    # second copy of each image's state). False: the last step's state, as the papers.
    config.max_drift = 0.0  # > 0 (with keep_best): a drift budget -- only a state whose tuned G
    # is within this MSE (on [0, 1]) of the frozen G on 8 fixed random latents can be kept
    # (engine.invert_batch(max_drift=...)); 0: off
    config.lpips_net = "vgg"  # LPIPS backbone of the metrics (and of Frozen.lpips)
    config.g_dtype = "float32"  # float32 | bfloat16: operand dtype of the GEMMs of G's convs
    config.lpips_dtype = "float32"  # and of the loss's LPIPS backbone (mixed precision: float32
    # accumulation, activations and weights; 1.1-1.15x the tuning steps/s on this AVX512-BF16
    # CPU, README "Speed"). Metrics always use float32.
    config.data = data_config()
    config.tile = 0  # InvGAN's tiling (paper 004): N >= 2 inverts each image at N*m px as N x N
    # tiles of G's m px (one latent each) and stitches them into WORKDIR/stitched/; 0/1: off

    config.reals = data_config()  # Clone's global loss: real images from path / tfds_name; with
    config.reals.num = 512  # neither, the default model's Fashion-MNIST TRAIN split; other
    # G without reals (or num 0): samples of the frozen G

    config.output = ml_collections.ConfigDict()
    config.output.save_png = True  # recon/<id>.png per image
    config.output.grid_pairs = 16  # target|recon pairs per chunk grid (grids/, TensorBoard)
    config.output.merge_latents = True  # latents.npz of all images at the end (per-chunk
    # chunks/*.npz hold them anyway; off for huge runs)

    for name in inversion.BUILTIN_NAMES:
        if len(method_defaults(name)):  # 'encoder' has none (config.encoder is the encoder)
            config[name] = method_defaults(name)
    # The one departure from the method's defaults: the projector's LPIPS-VGG term costs ~10x
    # more per step than the whole 32x32 generator on CPU, so the default run optimizes MSE
    # (in W+) and stays within minutes on 2 cores. LPIPS is still reported in metrics.csv.
    # --config.latent_opt.perceptual=lpips restores the StyleGAN2 projector's loss.
    if "perceptual" in config.latent_opt:
        config.latent_opt.perceptual = "none"
    # The tuning methods' settings on the default model come from one-change-at-a-time
    # ablations (README "Diagnosis", rounds 1-4: 4 held-out test images, 300 steps from a
    # latent_opt pivot); each paper's setting is one flag away. Locality (base vs tuned G on
    # 16 random latents, MSE; the bound 0.01): the larger steps moved it to 0.012 (PTI)
    # and 0.023 (GMM); averaging the localization term over 4 random latents per step instead
    # of 1 (and, for GMM, letting it reach θ through g_t) brings it to 0.0085 / 0.0069 (round 4).
    # PTI: lr 1e-2 with a cosine ramp-down over the last half, around a W+ pivot (init_space
    # above): 5.9x below the pivot's MSE (lr 3e-3 constant: 5.1x; 1e-2 constant: 3.9x; the
    # paper's 3e-4 around a W pivot ends above latent_opt). Paper: --config.pti.lr=3e-4
    # --config.pti.lr_rampdown=0 --config.pti.lr_rampup=0 --config.pti.lpips_weight=1
    # --config.init_space=w --config.pti.reg_samples=1. The
    # locality term is averaged over 4 latents per step (PTI: 1): the 1-sample gradient's
    # noise, which Adam turns into a step on every weight, cost both drift and MSE (1 sample:
    # drift 0.0117, 5.9x; 4: 0.0085, 7.0x; lr 5e-3 / 3e-3 with 1: 0.0049 / 0.0022, 5.3x / 4.7x).
    # A linear lr ramp-up over the first 10% (round 5): Adam's first steps move every weight
    # by ~lr and lifted the MSE to 4x the pivot's at step 10; with the ramp-up the curve never
    # rises, 7.5x, and the drift halves (0.0039; ramp-up 20%: 7.0x, 0.0050). Its loss is the
    # MSE alone (lpips_weight 0, as latent_opt's above; the locality term keeps its LPIPS
    # part): the LPIPS-VGG term pulled against the pixel error, 10.4x vs 7.5x at drift 0.0066
    # (no locality term instead: 9.2x at drift 0.015; lr 1.5e-2: 7.0x).
    # The locality latents lie 3 w_std from the pivot toward random latents (`reg_alpha`; the
    # method's default, our reading of PTI's alpha = 30 in FFHQ's W, is 1; README "Round 12"):
    # an OOD photo's pivot lies far from the latents G is used at, and samples 1 w_std away
    # guarded only the pivot's own neighbourhood. On the table's 8 OOD photos
    # (one change per run): alpha 1 9.2x / drift 0.0131 (a doubled weight: 6.0x / 0.0130),
    # 2 9.8x / 0.0064, 3 10.8x / 0.0048, 5 10.8x / 0.0069, 10 9.2x / 0.0133; the table with 3:
    # 6.1x / 11.2x latent_opt at drift 0.0055 / 0.0055 (64 held-out / 8 OOD images).
    if "lr" in config.pti:
        config.pti.update(
            lr=1e-2, lr_rampdown=0.5, lr_rampup=0.1, reg_samples=4, reg_alpha=3.0, lpips_weight=0.0
        )
    # Clone: Algorithm 1 with every step local (p 1), L_recon the MSE (`recon_loss` mse; the
    # paper's Laplacian-pyramid L1 gains 1.3x in 300 steps), Adam (0.9, 0.999) at lr 1e-2 with
    # a 10% linear ramp-up and a cosine ramp-down over the last half, no eps stop (eps
    # thresholds L_recon; the job runs its budget), and its GAN terms OFF (λ 0, L_global 0):
    # README "Round 7", from the job's own pivot on test images 0-3, 300 steps: 26x below the
    # pivot at drift 0.0061; GAN terms at λ 1e-3 / L_global 1e-4: 27x at drift 0.0103; at
    # λ 1e-2 / L_global 1e-3: 18x at drift 0.029; the round-5 job setting (pyramid L1, λ 0.1,
    # L_global 0.01, lr 3e-3): 1.2x at drift 0.019. At a step that fits an image in 300 steps
    # the GAN terms only move G away from itself on other latents (round 6), so the job leaves
    # them off and the step skips D. The GAN terms back at the round-7 weights:
    # --config.clone.lam=0.001 --config.clone.global_weight=0.0001 (they use `reals` below).
    # Paper: --config.clone.recon_loss=pyramid_l1 --config.clone.p=0.25 --config.clone.lam=10
    # --config.clone.global_weight=1 --config.clone.eps=0.001 --config.clone.lr=0.002
    # --config.clone.betas="(0.0, 0.99)" --config.clone.lr_rampup=0 --config.clone.lr_rampdown=0
    # --config.clone.d_lr=0.002 --config.clone.d_betas="(0.0, 0.99)".
    config.clone.update(
        p=1.0,
        recon_loss="mse",
        lam=0.0,
        global_weight=0.0,
        eps=-1.0,
        lr=1e-2,
        lr_rampup=0.1,
        lr_rampdown=0.5,
        betas=(0.9, 0.999),
        d_lr=1e-2,
        d_betas=(0.9, 0.999),
    )
    # GMM: the paper's iterative reading (θ_t accumulates M_φ(·)), its modules fed Adam's
    # per-weight direction of g_t (an identity module = Adam on the conv weights), step 2e-2
    # ramped up over the first 10% and down (cosine) over the last half, the modules STARTED
    # AT THE IDENTITY (init_scale 0), L_rec the MSE alone, the localization term (weight 0.25,
    # 4 samples per step) in φ's loss and in g_t (grad_reg). How it got there: README "Round 7",
    # from the job's pivot on test images 0-3, 300 steps, with the localization term (1 sample)
    # in φ's loss only and step 1e-2: 21.0x below the pivot at drift 0.0049. One change at a
    # time from there:
    # L_R at weight 1 17.6x at drift 0.0063; no localization term 22.9x at drift 0.0072;
    # modules frozen at the identity (= Adam on the conv weights) 21.2x / 0.0058; modules at
    # the old init_scale 0.1 (a random residual on every step) 17.0x / 0.035 without L_R;
    # the round-5 job setting (init_scale 0.1, MSE + LPIPS, grad_reg with 4 samples, no
    # ramp-down) 6.0x / 0.0063. Step size (round 8: test images 64-79, outside the quality
    # table's 64, README "Round 8"): out_scale 1e-2 10.5x at drift 0.0055, 1.5e-2 11.7x /
    # 0.0073 (the job's), 2e-2 13.7x / 0.0082, 3e-2 15.1x / 0.0151; φ's lr 3e-3 9.7x / 0.0083;
    # 2e-2 with L_R at weight 0.5 12.4x / 0.0100. On the table's 64 images 2e-2 drifted 0.0110,
    # over the 0.01 (12.7x latent_opt), so the job took the next step down; its OOD
    # drift (8 photos) stayed over 0.01 (0.0126 at 1e-2). Rounds 10-11: the localization term's
    # gradient also drives θ (`grad_reg`), averaged over 4 random latents per step (one sample's
    # noise, turned by Adam into a step on every weight, random-walked G away: 1 sample 10.0x /
    # drift 0.0083 in, 0.0107 OOD); with it the step can grow back to 2e-2. Table, 64 held-out
    # + 8 OOD images: 11.0x / 20.6x latent_opt at drift 0.0031 / 0.0040 (1.5e-2 without
    # grad_reg: 11.4x at 0.0089, OOD 0.0136), at ~2x the time per image.
    # The paper's one-shot form: --config.gmm.update_mode=once --config.gmm.grad_norm=none
    # --config.gmm.out_scale=1 --config.gmm.init_scale=0.1 --config.gmm.lpips_weight=1
    # --config.gmm.out_rampup=0 --config.gmm.out_rampdown=0 --config.gmm.reg_weight=1.
    config.gmm.update(
        update_mode="iterative",
        grad_norm="adam",
        out_scale=2e-2,
        out_rampup=0.1,
        out_rampdown=0.5,
        init_scale=0.0,
        lpips_weight=0.0,
        grad_reg=True,
        reg_samples=4,
        reg_weight=0.25,
    )

    # Sampling (task 'sample').
    config.sample = ml_collections.ConfigDict()
    config.sample.num = 16
    config.sample.truncation_psi = 1.0
    config.sample.noise_mode = "const"

    # BigGAN generators only (a converted biggan-hf DIR; other architectures ignore these).
    # Its latent is concat(z, class vector): latents.npz holds [N, z_dim + num_classes].
    config.biggan = ml_collections.ConfigDict()
    config.biggan.truncation = 1.0  # in (0, 1]: the BN-statistics row (as the package) and the
    # scale of the prior's truncated z (regularizer / sample latents); task 'sample' uses it too
    config.biggan.class_mode = "optimize"  # 'optimize': the class vector is optimized as logits
    # (softmax) by latent_opt | 'given': every image's class is class_index, kept fixed
    config.biggan.class_index = -1  # >= 0: start (and with 'given', keep) this class;
    # -1: start from the uniform class vector (the prior's mean)

    # Editing an inversion (task 'edit', ganinv_jax/editing/task.py).
    config.edit = ml_collections.ConfigDict()
    config.edit.source = ""  # the --workdir of an invert run (latents.npz, manifest.json)
    config.edit.directions = "sefa:0,sefa:1,ganspace:0"  # sefa:K | ganspace:K |
    # interfacegan:A-B (Fashion-MNIST classes, needs the encoder) | a saved direction .npz
    config.edit.strengths = "-3,-1.5,0,1.5,3"  # SeFa/InterFaceGAN: W distance; GANSpace: stds
    config.edit.layers = ""  # '' : each direction's own W+ entries (all); 'start:stop'
    config.edit.max_images = 0  # first N inverted images (0: all)
    config.edit.ganspace_samples = 10000  # mapped z of GANSpace's PCA (seed: config.seed)
    config.edit.interfacegan_per_class = 500  # encoded train images per class
    config.edit.measure = True  # edit.json 'measured': LPIPS moved, editability, label proxy

    if variant == "tiny":
        config.steps = 5
        config.batch_size = 2
        config.steps_per_call = 5
        config.data.limit = 4
        config.sample.num = 4
    elif variant:
        raise ValueError(f"unknown variant {variant!r} (known: 'tiny')")
    return config
