"""The main job on a StyleGAN2 generator (default: the embedded InvGAN Fashion-MNIST model).

  python -m ganinv_jax.main --config=configs/stylegan2.py --workdir=/tmp/ganinv
  python -m ganinv_jax.main --config=configs/stylegan2.py:tiny --workdir=/tmp/ganinv_tiny
  python -m ganinv_jax.main --config=configs/stylegan2.py --workdir=W \
      --config.generator=/path/to/converted_dir --config.method=pti --config.steps=500

Contract keys (README): `task`, `method`, `steps`, `batch_size`, `seed`, `generator`,
`data.path`, `data.tfds_name`, `data.split`, `data.limit`.
"""
import ml_collections


def get_config(variant: str = ""):
    config = ml_collections.ConfigDict()
    config.task = "sample"
    config.generator = "default"   # a converted DIR (python -m weights_convert) or 'default'
    config.seed = 0

    # Inversion (task 'invert').
    config.method = "latent_opt"   # latent_opt | pti | clone | gmm
    config.steps = 200             # max iterations per image
    config.batch_size = 8          # images per device step

    config.data = ml_collections.ConfigDict()
    config.data.path = ""          # folder of images, or an .npz/.npy array
    config.data.tfds_name = ""     # or a TFDS dataset name + split
    config.data.split = "test"
    config.data.limit = 0          # first N images (0: all)

    # Sampling (task 'sample').
    config.sample = ml_collections.ConfigDict()
    config.sample.num = 16
    config.sample.truncation_psi = 1.0
    config.sample.noise_mode = "const"

    if variant == "tiny":
        config.steps = 5
        config.batch_size = 2
        config.data.limit = 4
        config.sample.num = 4
    elif variant:
        raise ValueError(f"unknown variant {variant!r} (known: 'tiny')")
    return config
