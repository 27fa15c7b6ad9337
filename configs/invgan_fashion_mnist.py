"""InvGAN-StyleGAN2 on Fashion-MNIST (32x32, 3 channels): the project's embedded default model.

Every job is a task of the one entry point (2-core CPU; training resumes from the workdir):
    python -m ganinv_jax.main --config=configs/invgan_fashion_mnist.py --workdir=/work/runs/fm
Continue training the shipped default in a fresh workdir (fresh Adam moments):
    ... --config.init_from=default --config.num_train_steps=20000
Export a workdir as a `pretrained.load` DIR (samples, reconstructions, curves, eval.json):
    ... --config.task=export --workdir=/work/runs/fm --config.export.out=ganinv_jax/assets/default
Ablations (paper Sec. 4.4): naive vs aug_naive vs full at the same budget, in WORKDIR/<variant>:
    ... --config.task=ablation --config.ablation.steps=2000 --workdir=/work/runs/ablation
One variant alone:  --config=configs/invgan_fashion_mnist.py:naive   (or :aug_naive)
DCGAN backbone:     --config=configs/invgan_fashion_mnist.py:dcgan
Seconds-long smoke run (tests):  --config=configs/invgan_fashion_mnist.py:tiny
Variants combine with commas, e.g. `:tiny,naive`.
Train on random 32x32 patches of 64x64 images (paper Sec. 4.3, for tiled inversion):
    ... --config.data.patch=2
Parameter sharding (data parallel by default; `fsdp` shards params and Adam moments over the
'data' axis): --config.param_sharding="(('.*', 'fsdp'),)"
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    opts = set(filter(None, (arg or "").split(",")))
    c = ml_collections.ConfigDict()
    c.task = "train_invgan"
    c.seed = 0
    c.backbone = "stylegan2"
    c.variant = "full"  # full | aug_naive | naive

    c.model = ml_collections.ConfigDict(
        dict(
            resolution=32,
            channels=(64, 64, 32, 32),
            z_dim=64,
            w_dim=64,
            img_channels=3,
            mapping_layers=2,
            mapping_lr_multiplier=0.01,
            architecture="skip",
            d_architecture="resnet",
            mbstd_group_size=4,
            conv_clamp=None,
        )
    )
    c.dcgan = ml_collections.ConfigDict(
        dict(
            resolution=32,
            channels=(128, 64, 32),
            z_dim=64,
            w_dim=64,
            img_channels=3,
            mapping_layers=2,
        )
    )
    c.noise_mode = "const"  # deterministic G(w): the inversion target is well defined
    c.init_from = ""  # an exported DIR (or 'default') to continue from, if no ckpt

    c.data = ml_collections.ConfigDict(
        dict(
            name="fashion_mnist",
            dir="/usr/share/datasets/fashion-mnist",
            folder="",
            resolution=32,
            channels=3,
            limit=0,
            # Paper 004 Sec. 4.3 (tiling): k >= 2 trains on random resolution-px patches of the
            # images loaded at k x resolution px (Fashion-MNIST above 32 px: the padded 32-px
            # image resized up); tiles of k*m images are then what the invert job's
            # --config.tile=k inverts. 0: whole images (the default model).
            patch=0,
        )
    )

    c.batch_size = 32
    c.num_train_steps = 40000
    c.lr_g = 0.0025
    c.lr_d = 0.0025
    c.adam_betas = (0.0, 0.99)
    c.r1_gamma = 0.1
    c.r1_interval = 16
    c.w_lat = 1.0
    c.w_fm = 1.0
    c.w_mmd = 1.0
    c.mmd_sigmas = (0.25, 0.5, 1.0, 2.0, 4.0)  # times sqrt(w_dim)
    c.ema_kimg = 10.0
    c.ema_rampup = 0.05
    c.w_avg_beta = 0.995

    c.num_devices = 0  # 0: all devices
    # (regex over the state path, 'replicate' | 'fsdp' | a PartitionSpec tuple); first match wins
    c.param_sharding = ((".*", "replicate"),)
    c.log_every = 50
    c.checkpoint_every = 500
    c.sample_every = 1000
    c.max_to_keep = 3
    c.eval_at_end = True
    c.num_eval = 0  # 0: the whole 10k test split

    # task=export: the workdir's latest (or `step`) checkpoint -> a `pretrained.load` DIR
    c.export = ml_collections.ConfigDict(
        dict(out="", num_test=0, step=-1, note="", fd_n=10000)
    )  # step -1: latest; fd_n 0: no FD
    # task=ablation: naive / aug_naive / full of this config, `steps` each
    c.ablation = ml_collections.ConfigDict(dict(steps=2000, num_test=0, figure_only=False))

    for o in opts:
        if o in ("full", "aug_naive", "naive"):
            c.variant = o
        elif o == "dcgan":
            # Plain (not equalized-LR) layers: DCGAN's own Adam settings. With StyleGAN2's
            # lr 0.0025 / betas (0, 0.99) the full model's w head diverged at ~1.3k steps.
            c.backbone = "dcgan"
            c.lr_g = c.lr_d = 2e-4
            c.adam_betas = (0.5, 0.99)
        elif o == "tiny":
            c.model.channels = (16, 8)
            c.model.resolution = 8
            c.model.z_dim = c.model.w_dim = 16
            c.dcgan.update(resolution=8, channels=(16,), z_dim=16, w_dim=16)
            c.data.resolution = 8
            c.data.limit = 256
            c.batch_size = 8
            c.num_train_steps = 4
            c.r1_interval = 2
            c.log_every = 1
            c.checkpoint_every = 2
            c.sample_every = 0
            c.num_eval = 64
        else:
            raise ValueError(f"unknown config option {o!r}")
    return c
