"""`python -m weights_convert --format FMT --src FILE --out DIR [--raw-g] [--no-d]`."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from weights_convert.convert import FORMATS, convert, write_dir
from weights_convert.safe_load import CheckpointError


def _clamp(text: str) -> float:
    if text.lower() == "none":
        return -1.0
    return float(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m weights_convert",
        description="Convert a PyTorch StyleGAN2 checkpoint into a ganinv_jax GAN directory "
        "(orbax params + config.json). The file is read with an allow-list "
        "unpickler: no code from it is executed, and torch is not needed.",
    )
    p.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help="rosinality: stylegan2-pytorch .pt ({g_ema, g, d, latent_avg}); "
        "nvlabs-pkl: stylegan2-ada-pytorch network snapshot .pkl; "
        "nvlabs-state-dict: torch.save(G_ema.state_dict()) .pt",
    )
    p.add_argument("--src", required=True, help="checkpoint file")
    p.add_argument("--out", required=True, help="output directory (must not exist)")
    p.add_argument(
        "--raw-g",
        action="store_true",
        help="also convert the raw (non-EMA) generator, stored as 'G'",
    )
    p.add_argument("--no-d", action="store_true", help="do not convert the discriminator")
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
            with_d=not args.no_d,
            conv_clamp=args.conv_clamp,
        )
        out = write_dir(args.out, converted)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print(f"error: {args.src}: {type(e).__name__}: {e}".splitlines()[0], file=sys.stderr)
        return 1
    cfg = converted.config
    print(
        f"wrote {out}: {', '.join(converted.meta['networks'])}; resolution {cfg.resolution}, "
        f"channels {list(cfg.channels)}, z/w {cfg.z_dim}/{cfg.w_dim}, "
        f"G {cfg.architecture}" + (f", D {cfg.d_architecture}" if "D" in converted.trees else "")
    )
    return 0
