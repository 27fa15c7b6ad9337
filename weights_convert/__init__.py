"""Torch StyleGAN2, PGGAN (pytorch_GAN_zoo) and BigGAN (pytorch-pretrained-biggan) checkpoints ->
ganinv_jax GAN directories, without torch and without executing anything from the file. See the
README ("Bringing your own GAN") and `python -m weights_convert -h`."""

from weights_convert.convert import FORMATS, Converted, convert, write_dir  # noqa: F401
from weights_convert.safe_load import CheckpointError, UnsafeCheckpointError  # noqa: F401
