"""`python -m weights_convert --format FMT --src PATH --out DIR [--raw-g] [--no-d]`."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from weights_convert.convert import FORMATS, convert, summary_line, write_dir
from weights_convert.safe_load import CheckpointError


def _clamp(text: str) -> float:
    if text.lower() == "none":
        return -1.0
    return float(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m weights_convert",
        description="Convert a PyTorch StyleGAN2, PGGAN (pytorch_GAN_zoo) or BigGAN "
        "(pytorch-pretrained-biggan) checkpoint into a ganinv_jax GAN directory "
        "(orbax params + config.json) that `ganinv_jax.pretrained.load` reads. The file is "
        "read with an allow-list unpickler: no code from it is executed, and torch is not "
        "needed.",
    )
    p.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help="rosinality: stylegan2-pytorch .pt ({g_ema, g, d, latent_avg}); "
        "nvlabs-pkl: stylegan2-ada-pytorch network snapshot .pkl; "
        "nvlabs-state-dict: torch.save(G_ema.state_dict()) .pt; "
        "pggan-zoo: pytorch_GAN_zoo BaseGAN.save() .pth ({config, netG, netD, avgG}; avgG "
        "becomes G_ema, netG the raw G); "
        "biggan-hf: a pytorch-pretrained-biggan model FOLDER (config.json + "
        "pytorch_model.bin; one generator, no discriminator)",
    )
    p.add_argument(
        "--src", required=True, help="checkpoint file (--format biggan-hf: the model folder)"
    )
    p.add_argument("--out", required=True, help="output directory (must not exist)")
    p.add_argument(
        "--raw-g",
        action="store_true",
        help="also convert the raw (non-EMA) generator, stored as 'G' (not biggan-hf)",
    )
    p.add_argument(
        "--no-d", action="store_true", help="do not convert the discriminator (not biggan-hf)"
    )
    p.add_argument(
        "--conv-clamp",
        type=_clamp,
        default=None,
        metavar="VALUE|none",
        help="nvlabs-state-dict only: conv_clamp (a state_dict does not record "
        "it; default 256 as NVlabs train.py uses)",
    )
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        converted = convert(
            args.src,
            args.format,
            raw_g=args.raw_g,
            with_d=False if args.no_d else None,
            conv_clamp=args.conv_clamp,
        )
        out = write_dir(args.out, converted)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print(f"error: {args.src}: {type(e).__name__}: {e}".splitlines()[0], file=sys.stderr)
        return 1
    print(summary_line(out, converted))
    return 0
