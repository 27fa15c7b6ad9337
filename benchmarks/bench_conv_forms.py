"""The two GEMM forms of a stride-1 3x3 'same' conv, timed side by side -> one JSON object.

    python benchmarks/bench_conv_forms.py                  # the shapes behind ROW_TAPS_MIN_PIXELS
    python benchmarks/bench_conv_forms.py --shapes 64x64,32x128 --repeats 9

`ops.conv` takes the row-tap form (width-only patches, one GEMM to k row blocks) from
`ROW_TAPS_MIN_PIXELS` output pixels up and the full im2col GEMM below. Per shape (H=W, C in =
C out) this times both on what the engine runs: the forward and both gradients, 8 images with
per-image kernels under vmap, 10 steps in a `lax.scan` (`per_image`), and the forward and input
gradient of a kernel every image shares (`shared`, LPIPS-like; no weight gradient). Repeats
alternate the two forms; reported: best ms per image-step and `im2col_over_row_taps` (> 1: the
row taps are faster).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from ganinv_jax.ops import conv  # noqa: E402

SAME = ((1, 1), (1, 1))
FORMS = {
    "im2col": lambda x, w: conv._conv_gemm(x, w, SAME),
    "row_taps": lambda x, w: conv._conv_row_taps(x, w, SAME),
}
IMAGES, STEPS = 8, 10


def _program(form, per_image: bool):
    f = FORMS[form]

    def grads(x, w):
        y, vjp = jax.vjp(f, x, w)
        return vjp(jnp.tanh(y))

    def run(x, w):
        def body(c, _):
            dx, dw = jax.vmap(grads)(x + c, w) if per_image else grads(x + c, w)
            keep_dw = 1e-9 * jnp.sum(dw) if per_image else 0.0  # shared: dw is dead code
            return c + 1e-3 * dx + keep_dw, None

        return lax.scan(body, jnp.zeros_like(x), None, length=STEPS)[0]

    return jax.jit(run)


def measure(hw: int, ch: int, per_image: bool, repeats: int) -> dict:
    kx, kw = jax.random.split(jax.random.key(0))
    lead = (IMAGES, 1) if per_image else (IMAGES,)
    x = jax.random.normal(kx, (*lead, hw, hw, ch))
    w = jax.random.normal(kw, ((IMAGES,) if per_image else ()) + (3, 3, ch, ch)) / np.sqrt(9 * ch)
    programs = {form: _program(form, per_image) for form in FORMS}
    for p in programs.values():
        jax.block_until_ready(p(x, w))
    best = {form: float("inf") for form in FORMS}
    for _ in range(repeats):
        for form, p in programs.items():
            t = time.perf_counter()
            jax.block_until_ready(p(x, w))
            best[form] = min(best[form], time.perf_counter() - t)
    ms = {form: 1e3 * t / (IMAGES * STEPS) for form, t in best.items()}
    return dict(
        hw=hw,
        channels=ch,
        weights="per_image" if per_image else "shared",
        ms_per_img_step={k: round(v, 4) for k, v in ms.items()},
        im2col_over_row_taps=round(ms["im2col"] / ms["row_taps"], 3),
        row_taps_chosen=hw * hw >= conv.ROW_TAPS_MIN_PIXELS,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="64x64,32x128,16x128,16x256,8x128,8x512,32x32,16x32")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--shared", action=argparse.BooleanOptionalAction, default=True)
    a = ap.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    rows = [measure(hw, ch, True, a.repeats) for hw, ch in shapes]
    if a.shared:
        rows += [measure(hw, ch, False, a.repeats) for hw, ch in shapes]
    print(
        json.dumps(
            dict(
                benchmark="conv_forms",
                backend=jax.default_backend(),
                row_taps_min_pixels=conv.ROW_TAPS_MIN_PIXELS,
                images=IMAGES,
                steps=STEPS,
                rows=rows,
                loadavg=os.getloadavg(),
            ),
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
