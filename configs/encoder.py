"""Train a GAN encoder for a frozen generator (papers 000 and 003; `ganinv_jax.training.encoder`).

    python -m ganinv_jax.main --config=configs/encoder.py --workdir=W           # 000: pre-train
    python -m ganinv_jax.main --config=configs/encoder.py:finetune --workdir=W2 \
        --config.encoder.init_from=W/encoder                                   # 000: fine-tune
    python -m ganinv_jax.main --config=configs/encoder.py:crg --workdir=W3      # 003: CRG (to z)
Another generator: --config.generator=DIR (a converted DIR; 'default' is the embedded model).
The encoder lands in WORKDIR/encoder (or --config.export_dir) as config.json + params/.
Ablations (paper 000's Tables 4 and 7, AT crops): variants `no_ssim`, `no_at`, `strategy1`,
`strategy2` (the mu presets), `gradcam` (Grad-CAM crops for unaligned data); CRG to w: `crg,w`.
Seconds-long smoke run (tests): `:tiny` (with any of the above, e.g. `:tiny,crg`).
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    opts = set(filter(None, (arg or "").split(",")))
    c = ml_collections.ConfigDict()
    c.task = "train_encoder"
    c.seed = 0
    c.generator = "default"  # a converted DIR (python -m weights_convert) or 'default'
    c.truncation_psi = 1.0  # of the training codes w = M(z)

    c.encoder = ml_collections.ConfigDict(
        dict(
            kind="adaptive",  # adaptive (paper 000) | crg (paper 003)
            stage="pretrain",  # adaptive: pretrain (G's samples) | finetune (real images)
            width=1.0,  # times the derived widths (adaptive: G's channels, Table 9; crg: VGG19)
            max_channels=512,
            target="",  # '' : the kind's own (adaptive 'wplus'; crg 'z') | crg: 'w'
            dropout=0.5,  # crg: spatial dropout
            init_from="",  # an encoder DIR to start from (finetune: the pre-trained one) | default
        )
    )
    # Paper 000's losses: L_img = 5 MSE + 3 (1 - cos) + 2 LPIPS + 1 (1 - SSIM), cropped
    # attentions (aligned boxes | Grad-CAM | none) with (mu1, mu2) presets paper (0.375, 0.625) |
    # strategy1 (1, 1) | strategy2 (5, 9), 0.01 latent term (pre-training), eps L_LS (fine-tuning).
    c.loss = ml_collections.ConfigDict(
        dict(
            w_mse=5.0,
            w_cos=3.0,
            w_lpips=2.0,
            w_ssim=1.0,
            attention="aligned",
            mu="paper",
            latent_weight=0.01,
            eps=0.01,
            cos_mode="per_sample",
            max_size=256,
        )
    )
    c.optim = ml_collections.ConfigDict(dict(lr=0.0015, b1=0.0, b2=0.99, eps=1e-8))
    # Validation every `every` steps (0: off): reduce-LR-on-plateau, best params, early stop.
    c.val = ml_collections.ConfigDict(
        dict(every=0, num=256, plateau_factor=0.5, plateau_patience=10, rtol=1e-4, early_stop=20)
    )
    # Real images (stage finetune; and the held-out test split of eval_at_end).
    c.data = ml_collections.ConfigDict(
        dict(
            name="fashion_mnist",
            dir="/usr/share/datasets/fashion-mnist",
            folder="",
            resolution=32,
            channels=3,
            limit=0,
        )
    )

    c.batch_size = 16
    c.num_train_steps = 20000
    c.num_devices = 0  # 0: all devices
    c.param_sharding = ((".*", "replicate"),)  # or (('.*', 'fsdp'),)
    c.log_every = 50
    c.checkpoint_every = 500
    c.max_to_keep = 3
    c.export_dir = ""  # '' : WORKDIR/encoder
    c.eval_at_end = True
    c.num_eval = 64  # held-out Fashion-MNIST test images (0: all 10k)

    for o in sorted(opts, key=lambda o: o == "tiny"):  # tiny last: it shrinks what others set
        if o == "crg":
            # Paper 003: Adam lr 1e-4, eps 1e-8, batch 16; LR halved after 10 stalled
            # validations, early stop after 20; an "epoch" here is `val.every` steps of G samples.
            c.encoder.kind = "crg"
            c.optim.update(lr=1e-4, b1=0.9, b2=0.999, eps=1e-8)
            c.val.update(every=500, num=512)
        elif o == "w":
            c.encoder.target = "w"
        elif o == "finetune":
            # Paper 000's fine-tuning: lr 0.01 (Adam betas (0, 0.99) kept), 1,500 iterations.
            c.encoder.stage = "finetune"
            c.optim.lr = 0.01
            c.num_train_steps = 1500
            c.checkpoint_every = 250
        elif o == "no_ssim":
            c.loss.w_ssim = 0.0
        elif o == "no_at":
            c.loss.attention = "none"
        elif o in ("strategy1", "strategy2"):
            c.loss.mu = o
        elif o == "gradcam":
            c.loss.attention = "gradcam"
        elif o == "tiny":
            # LPIPS off: compiling VGG16's backward dominates a seconds-long run (the term itself
            # is covered by tests/test_encoders.py).
            c.encoder.width = 0.25 if c.encoder.kind == "adaptive" else 1 / 16
            c.loss.w_lpips = 0.0
            c.batch_size = 8
            c.num_train_steps = 4
            c.log_every = 1
            c.checkpoint_every = 2
            c.val.update(num=16, plateau_patience=1, early_stop=3)
            if c.val.every:
                c.val.every = 2
            c.data.limit = 256
            c.num_eval = 16
        else:
            raise ValueError(f"unknown config option {o!r}")
    return c
