"""Convolutions with a backend switch: XLA's native conv, or explicit patches + matmul.

Why two forms (measured on this project's 2-core CPUs; numbers in
benchmarks/results/profile_tuning_step.md):
  * XLA:CPU computes conv *weight* gradients tens of times slower inside while loops
    (`lax.scan`, `lax.map`, `fori_loop` -- the inversion engine runs every method step in one),
    and per-image kernels under `jax.vmap` become grouped convolutions that run 6-20x slower.
  * The same convolution written as patches (`im2col`: k*k shifted slices concatenated on the
    channel axis) times the reshaped kernel is one GEMM. Its gradients are GEMMs plus pads and
    slices (autodiff of slicing), under any loop; under `vmap` with per-image kernels the GEMM
    becomes a batched GEMM instead of a grouped conv.
  * From ROW_TAPS_MIN_PIXELS output pixels up a stride-1 conv takes the row-tap form: patches
    along the width only (k taps, K = k*C), one GEMM to k output blocks (one per kernel row),
    and the blocks summed with a row shift. The same FLOPs with a k times narrower patch matrix
    and patch gradient: the im2col/col2im copies, not the GEMMs, were the cost at 16x16 and up.
  * The stride-2 transposed conv (StyleGAN2's up-sampling conv) as an lhs-dilated conv wastes
    3/4 of its multiplies on inserted zeros and its weight gradient is slow even outside loops.
    Here it is one GEMM that produces the k*k tap planes, placed on the output grid with
    interior padding (`col2im`): no multiply by an inserted zero, every gradient a GEMM.

  * 'hybrid' (stride-1 convs): the native forward conv, the input gradient written as the native
    *forward* conv of the output gradient with the flipped kernel (autodiff's own transpose form
    is the one that is slow in loops), the weight gradient as the patches GEMM. For shared
    (frozen) weights with few channels -- LPIPS-VGG's first blocks -- it beats the GEMM form,
    which pays for im2col/col2im copies there; under `vmap` with per-image kernels its forward
    would be a grouped conv, so per-image-weight layers use 'matmul'.

On GPU/TPU the native convolutions are fast (cuDNN / the TPU conv unit), so `impl='auto'` picks
'matmul' on CPU and 'native' elsewhere. Both forms compute the same sums (tests check values and
gradients to float32 rounding); only the order of additions differs.

bf16 GEMM operands (`operand_dtype=jnp.bfloat16` on a call, or `use_operand_dtype` around
tracing): every GEMM (forward and both gradients) rounds its two operands to bf16 and accumulates
and returns float32; activations, gradients and weights stay float32 (mixed precision). On CPUs
with AVX512-BF16 XLA runs such GEMMs ~2x float32, while a GEMM whose *result* is bf16 runs at
0.25-0.56x float32 and XLA's native conv gains nothing (0.87-0.97x; bench_gemm_dtypes.py),
so on CPU a bf16 conv always takes the GEMM form. The native form (GPU/TPU) convolves the
bf16-rounded operands in float32: the same values, no speed-up measured (no accelerator lent).

Selecting the form: `impl=` on a call, or `with conv.use_impl('native'): ...` around tracing, or
the environment variable GANINV_CONV_IMPL=native|matmul|auto. The choice is read at trace time:
jit-compiled functions keep the form they were traced with.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import os
from typing import Iterator, Optional, Sequence, Union

import jax
import jax.numpy as jnp
from jax import lax

IMPLS = ("native", "matmul", "hybrid")
_ENV = "GANINV_CONV_IMPL"
_override: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("conv_impl", default=None)
_operand_override: contextvars.ContextVar = contextvars.ContextVar("conv_operand", default=None)

Padding = Union[int, Sequence[tuple[int, int]]]
OperandDtype = Optional[jnp.dtype]  # None: the GEMMs run in the inputs' dtype


def resolve_impl(impl: Optional[str] = None, backend: Optional[str] = None) -> str:
    """'native' | 'matmul' | 'hybrid' for this call: explicit `impl`, else `use_impl`, else the
    env var, else 'auto' (matmul on CPU, native on GPU/TPU)."""
    impl = impl or _override.get() or os.environ.get(_ENV) or "auto"
    if impl == "auto":
        return "matmul" if (backend or jax.default_backend()) == "cpu" else "native"
    if impl not in IMPLS:
        raise ValueError(f"unknown conv impl {impl!r}: expected one of {IMPLS} or 'auto'")
    return impl


def shared_weight_impl(features: int, backend: Optional[str] = None) -> Optional[str]:
    """The form for a stride-1 conv whose weights every image shares (a frozen feature net such
    as LPIPS-VGG): on CPU under 'auto', 'hybrid' up to 128 output channels and 'matmul' above
    (measured fwd + input gradient inside a scan, batch 4: 64 ch at 64x64 85 vs 67 GFLOP/s,
    128 ch at 32x32 150 vs 91; 256 ch at 16x16 108 vs 138, 512 ch at 8x8 79 vs 136).
    None (= the general rule) when a form was chosen explicitly or off CPU."""
    chosen = _override.get() or os.environ.get(_ENV) or "auto"
    if chosen != "auto" or (backend or jax.default_backend()) != "cpu":
        return None
    return "hybrid" if features <= 128 else "matmul"


@contextlib.contextmanager
def use_impl(impl: str) -> Iterator[None]:
    """Context in which every conv traced uses `impl` ('native' | 'matmul' | 'hybrid' | 'auto')."""
    if impl != "auto" and impl not in IMPLS:
        raise ValueError(f"unknown conv impl {impl!r}: expected one of {IMPLS} or 'auto'")
    token = _override.set(impl)
    try:
        yield
    finally:
        _override.reset(token)


@contextlib.contextmanager
def use_operand_dtype(dtype) -> Iterator[None]:
    """Context in which every conv traced without an explicit `operand_dtype` rounds its GEMM
    operands to `dtype` (None / float32: plain float32). Read at trace time, like `use_impl`."""
    token = _operand_override.set(dtype)
    try:
        yield
    finally:
        _operand_override.reset(token)


def _resolve_operand_dtype(operand_dtype) -> OperandDtype:
    """The explicit `operand_dtype`, else `use_operand_dtype`'s; None for float32."""
    d = operand_dtype if operand_dtype is not None else _operand_override.get()
    if d is None or jnp.dtype(d) == jnp.float32:
        return None
    return jnp.dtype(d)


def _pad_pairs(padding: Padding) -> tuple[tuple[int, int], tuple[int, int]]:
    if isinstance(padding, int):
        return (padding, padding), (padding, padding)
    (a, b), (c, d) = padding
    return (int(a), int(b)), (int(c), int(d))


def _shifted(t: jax.Array, di: int, dj: int, out_h: int, out_w: int) -> jax.Array:
    """out[:, i, j] = t[:, i + di, j + dj] where that is inside t, else 0; out is [N,out_h,out_w,C].

    One slice and one pad: the zero border of a 'same' conv is added per tap, so neither the
    padded input (forward) nor a padded copy of the whole patch gradient (backward) is built."""
    n, h, w, c = t.shape
    i0, i1 = max(-di, 0), min(out_h, h - di)
    j0, j1 = max(-dj, 0), min(out_w, w - dj)
    if i1 <= i0 or j1 <= j0:
        return jnp.zeros((n, out_h, out_w, c), t.dtype)
    part = lax.slice(t, (0, i0 + di, j0 + dj, 0), (n, i1 + di, j1 + dj, c))
    return jnp.pad(part, ((0, 0), (i0, out_h - i1), (j0, out_w - j1), (0, 0)))


def _sum_shifted_blocks(t: jax.Array, shifts, out_h: int, out_w: int) -> jax.Array:
    """sum_i _shifted(block i of t's last axis, *shifts[i], out_h, out_w): the channel blocks of
    a GEMM output, each laid on the output grid at its own offset (col2im as a gather)."""
    c = t.shape[-1] // len(shifts)
    parts = [
        _shifted(t[..., i * c : (i + 1) * c], di, dj, out_h, out_w)
        for i, (di, dj) in enumerate(shifts)
    ]
    return functools.reduce(jnp.add, parts)


def im2col(
    x: jax.Array, kh: int, kw: int, stride: int = 1, pads: tuple = ((0, 0), (0, 0))
) -> jax.Array:
    """[N,H,W,C] zero-padded by `pads` ((top, bottom), (left, right)) -> [N,Ho,Wo,kh*kw*C],
    patch order (kh, kw, C) = HWIO's. At stride 1 each tap is built from x itself (`_shifted`),
    so no padded copy of x is made; strided patches are slices of the padded x."""
    (pt, pb), (pl, pr) = pads
    n, h, w, c = x.shape
    ho, wo = (h + pt + pb - kh) // stride + 1, (w + pl + pr - kw) // stride + 1
    if stride == 1:
        cols = [_shifted(x, a - pt, b - pl, ho, wo) for a in range(kh) for b in range(kw)]
    else:
        if (pt, pb, pl, pr) != (0, 0, 0, 0):
            x = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
        cols = [
            lax.slice(
                x,
                (0, i, j, 0),
                (n, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, c),
                (1, stride, stride, 1),
            )
            for i in range(kh)
            for j in range(kw)
        ]
    return cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)


def _dot(a: jax.Array, b: jax.Array, dims, operand_dtype: OperandDtype = None) -> jax.Array:
    """lax.dot_general; with `operand_dtype` both operands are rounded to it and the product is
    accumulated and returned in float32."""
    if operand_dtype is None:
        return lax.dot_general(a, b.astype(a.dtype), dims)
    return lax.dot_general(
        a.astype(operand_dtype),
        b.astype(operand_dtype),
        dims,
        preferred_element_type=jnp.float32,
    )


def _matmul_last(x: jax.Array, w2d: jax.Array, operand_dtype: OperandDtype = None) -> jax.Array:
    """x [..., K] @ w2d [K, O] as one dot_general (a batched GEMM when vmapped over w)."""
    if operand_dtype is None:
        return _dot(x, w2d, (((x.ndim - 1,), (0,)), ((), ())))
    return _matmul_last_rounded(x, w2d, operand_dtype)


# With rounded operands autodiff's transposes would return the gradients in the operands' dtype
# (bf16-rounded, and a bf16-result GEMM is slow on CPU): both gradients are float32-result GEMMs.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul_last_rounded(x: jax.Array, w2d: jax.Array, operand_dtype) -> jax.Array:
    return _dot(x, w2d, (((x.ndim - 1,), (0,)), ((), ())), operand_dtype)


def _matmul_last_rounded_fwd(x, w2d, operand_dtype):
    return _matmul_last_rounded(x, w2d, operand_dtype), (x, w2d)


def _matmul_last_rounded_bwd(operand_dtype, res, dy):
    x, w2d = res
    dx = _dot(dy, w2d, (((dy.ndim - 1,), (1,)), ((), ())), operand_dtype)
    k, o = w2d.shape
    dw = _dot(x.reshape(-1, k), dy.reshape(-1, o), (((0,), (0,)), ((), ())), operand_dtype)
    return dx, dw


_matmul_last_rounded.defvjp(_matmul_last_rounded_fwd, _matmul_last_rounded_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _round_operand(a: jax.Array, dtype) -> jax.Array:
    """`a` rounded to `dtype` and back, with an identity gradient (the float32 cotangent)."""
    return a.astype(dtype).astype(a.dtype)


_round_operand.defvjp(lambda a, dtype: (_round_operand(a, dtype), None), lambda _d, _r, g: (g,))


def conv2d(
    x: jax.Array,
    w: jax.Array,
    *,
    stride: int = 1,
    padding: Padding = 0,
    impl: Optional[str] = None,
    operand_dtype: OperandDtype = None,
) -> jax.Array:
    """NHWC x HWIO correlation (torch's conv2d), zero padding ((top, bottom), (left, right)).

    operand_dtype: e.g. jnp.bfloat16: GEMM operands rounded to it, float32 accumulation and
    result (see the module docstring); float32: plain; None: `use_operand_dtype`'s, else plain."""
    (pt, pb), (pl, pr) = _pad_pairs(padding)
    impl = resolve_impl(impl)
    operand_dtype = _resolve_operand_dtype(operand_dtype)
    if operand_dtype is None:
        w = w.astype(x.dtype)
    elif impl == "hybrid":  # its native forward conv gains nothing from bf16 on CPU
        impl = "matmul"
    if impl == "hybrid" and stride == 1:
        return _conv_hybrid(x, w, ((pt, pb), (pl, pr)))
    if impl == "native":
        return _native(x, w, stride, ((pt, pb), (pl, pr)), operand_dtype)
    kh, kw, cin, cout = w.shape
    pads = ((pt, pb), (pl, pr))
    if stride == 1 and kh == kw and kh > 1:
        ho, wo = x.shape[1] + pt + pb - kh + 1, x.shape[2] + pl + pr - kw + 1
        if ho * wo >= ROW_TAPS_MIN_PIXELS:
            return _conv_row_taps(x, w, pads, operand_dtype)
        return _conv_gemm(x, w, pads, operand_dtype)
    if kh == kw == 1:
        if (pt, pb, pl, pr) != (0, 0, 0, 0):
            x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
        return _matmul_last(x[:, ::stride, ::stride, :], w.reshape(cin, cout), operand_dtype)
    cols = im2col(x, kh, kw, stride, pads)
    return _matmul_last(cols, w.reshape(kh * kw * cin, cout), operand_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_gemm(x: jax.Array, w: jax.Array, pads, operand_dtype: OperandDtype = None) -> jax.Array:
    """Stride-1 correlation of x, zero-padded by `pads`, with a k x k kernel, as im2col + GEMM."""
    return _conv_gemm_fwd(x, w, pads, operand_dtype)[0]


def _conv_gemm_fwd(x, w, pads, operand_dtype):
    k, _, cin, cout = w.shape
    cols = im2col(x, k, k, pads=pads)
    return _matmul_last(cols, w.reshape(k * k * cin, cout), operand_dtype), (cols, w)


def _conv_gemm_bwd(pads, operand_dtype, res, dy):
    cols, w = res
    k, _, cin, cout = w.shape
    dw = _dot(
        cols.reshape(-1, k * k * cin),
        dy.reshape(-1, cout),
        (((0,), (0,)), ((), ())),
        operand_dtype,
    ).reshape(w.shape)
    dcols = _dot(dy, w.reshape(k * k * cin, cout), (((3,), (1,)), ((), ())), operand_dtype)
    # x[r] fed output r + pt - a through tap a: dx[r] = sum_a dcols[r + pt - a, tap a] (the
    # gather form of col2im: autodiff's transpose of im2col pads k*k copies of the whole map).
    (pt, pb), (pl, pr) = pads
    h, wd = dy.shape[1] - pt - pb + k - 1, dy.shape[2] - pl - pr + k - 1
    dx = _sum_shifted_blocks(dcols, [(pt - a, pl - b) for a in range(k) for b in range(k)], h, wd)
    return dx, dw


_conv_gemm.defvjp(_conv_gemm_fwd, _conv_gemm_bwd)


# The row-tap form from this many output pixels up, the full im2col GEMM below. Measured by
# benchmarks/bench_conv_forms.py (a 3x3 'same' conv, 8 images, 10 steps in a scan; 2-core CPU,
# benchmarks/results/bench_conv_forms_cpu.json): with per-image kernels (forward and both
# gradients under vmap) im2col / row-taps time 1.30 at 64x64 x 64 ch, 1.32 at 32x32 x 128,
# 1.30 at 16x16 x 128, 1.13 at 16x16 x 256, 1.02-1.24 at 16-32 px x 32 ch, but 0.93-0.96 at
# 8x8 (128-512 ch); with a shared kernel (forward + input gradient) 1.05-1.43 at 16x16 and up.
ROW_TAPS_MIN_PIXELS = 256


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_row_taps(x: jax.Array, w: jax.Array, pads, operand_dtype: OperandDtype = None):
    """The stride-1 k x k correlation with k-wide patches along the width only.

    t = im2col_w(x) @ W3, W3[(b, c), (a, o)] = w[a, b, c, o]: one GEMM whose k output blocks are
    kernel row a's contribution at each input row; y[i] = sum_a t[i + a - pt, block a]. Against
    the full im2col GEMM (same FLOPs) the patch matrix and the patch gradient are k times
    narrower (k*C instead of k*k*C): a third of the patch data at k = 3."""
    return _conv_row_taps_fwd(x, w, pads, operand_dtype)[0]


def _conv_row_taps_fwd(x, w, pads, operand_dtype):
    k, _, cin, cout = w.shape
    (pt, pb), (pl, pr) = pads
    ho = x.shape[1] + pt + pb - k + 1
    xw = im2col(x, 1, k, pads=((0, 0), (pl, pr)))  # [N, H, Wo, (b, C)]
    w3 = jnp.transpose(w, (1, 2, 0, 3)).reshape(k * cin, k * cout)
    t = _dot(xw, w3, (((3,), (0,)), ((), ())), operand_dtype)  # [N, H, Wo, (a, O)]
    y = _sum_shifted_blocks(t, [(a - pt, 0) for a in range(k)], ho, xw.shape[2])
    return y, (xw, w3)


def _conv_row_taps_bwd(pads, operand_dtype, res, dy):
    xw, w3 = res
    (pt, pb), (pl, pr) = pads
    _, h, wo, kcin = xw.shape
    cout = dy.shape[-1]
    k = w3.shape[1] // cout
    cin = kcin // k
    # t's gradient: block a at input row r is dy[r + pt - a] (zero outside dy).
    dt = jnp.concatenate([_shifted(dy, pt - a, 0, h, wo) for a in range(k)], axis=-1)
    dw3 = _dot(
        xw.reshape(-1, kcin), dt.reshape(-1, k * cout), (((0,), (0,)), ((), ())), operand_dtype
    )
    dw = jnp.transpose(dw3.reshape(k, cin, k, cout), (2, 0, 1, 3))
    dxw = _dot(dt, w3, (((3,), (1,)), ((), ())), operand_dtype)  # [N, H, Wo, (b, C)]
    # x[:, j] fed output column j + pl - b through tap b (the width col2im, as a gather).
    dx = _sum_shifted_blocks(dxw, [(0, pl - b) for b in range(k)], h, wo - pl - pr + k - 1)
    return dx, dw


_conv_row_taps.defvjp(_conv_row_taps_fwd, _conv_row_taps_bwd)


def _native(x, w, stride, pads, operand_dtype: OperandDtype = None):
    if operand_dtype is not None:  # the same values as bf16 operands with float32 results
        x, w = _round_operand(x, operand_dtype), _round_operand(w, operand_dtype)
    return lax.conv_general_dilated(
        x, w, (stride, stride), pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_hybrid(x: jax.Array, w: jax.Array, pads) -> jax.Array:
    return _native(x, w, 1, pads)


def _conv_hybrid_fwd(x, w, pads):
    return _native(x, w, 1, pads), (x, w)


def _conv_hybrid_bwd(pads, res, dy):
    x, w = res
    kh, kw, cin, cout = w.shape
    (pt, pb), (pl, pr) = pads
    # y[i] = sum_a x[i + a - pt] w[a]  =>  dx[j] = sum_b dy[j + b - (k-1-pt)] w[k-1-b]:
    # a correlation of dy with the flipped, in/out-swapped kernel, padded (k-1-pt, k-1-pb).
    w_t = jnp.swapaxes(w[::-1, ::-1], 2, 3)
    dx = _native(dy, w_t, 1, ((kh - 1 - pt, kh - 1 - pb), (kw - 1 - pl, kw - 1 - pr)))
    cols = im2col(x, kh, kw, pads=pads)
    dw = lax.dot_general(
        cols.reshape(-1, kh * kw * cin), dy.reshape(-1, cout), (((0,), (0,)), ((), ()))
    ).reshape(w.shape)
    return dx, dw


_conv_hybrid.defvjp(_conv_hybrid_fwd, _conv_hybrid_bwd)


def conv_transpose2x(
    x: jax.Array, w: jax.Array, *, impl: Optional[str] = None, operand_dtype: OperandDtype = None
) -> jax.Array:
    """torch `conv_transpose2d(x, W', stride=2, padding=0)` for a HWIO kernel `w`.

    Both StyleGAN2 lineages hand the conv weight to conv_transpose2d with in/out swapped and
    not flipped. Output size 2H + k - 2. Each input pixel i adds x[i] * w[a] to output 2i + a:
      native: a correlation of the zero-dilated input with the flipped kernel, padded by k - 1;
      matmul: taps = x @ w (one GEMM, [N,H,W,k,k,O]), then tap (a, b) is laid on the output
              grid with interior padding 1 and edge padding (a, k-1-a) x (b, k-1-b), and summed.
    operand_dtype: as `conv2d`'s.
    """
    k = w.shape[0]
    operand_dtype = _resolve_operand_dtype(operand_dtype)
    if operand_dtype is None:
        w = w.astype(x.dtype)
    if resolve_impl(impl) == "native":
        if operand_dtype is not None:
            x, w = _round_operand(x, operand_dtype), _round_operand(w, operand_dtype)
        return lax.conv_general_dilated(
            x,
            w[::-1, ::-1],
            window_strides=(1, 1),
            padding=((k - 1, k - 1), (k - 1, k - 1)),
            lhs_dilation=(2, 2),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
    return _conv_transpose2x_gemm(x, w, operand_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_transpose2x_gemm(
    x: jax.Array, w: jax.Array, operand_dtype: OperandDtype = None
) -> jax.Array:
    return _conv_transpose2x_gemm_fwd(x, w, operand_dtype)[0]


def _conv_transpose2x_gemm_fwd(x, w, operand_dtype):
    k, _, cin, cout = w.shape
    n, h, wd, _ = x.shape
    w2d = jnp.transpose(w, (2, 0, 1, 3)).reshape(cin, k * k * cout)  # [C, (a, b, O)]
    taps = _matmul_last(x, w2d, operand_dtype).reshape(n, h, wd, k, k, cout)
    zero = jnp.zeros((), taps.dtype)
    out = None
    for a in range(k):
        for b in range(k):
            placed = lax.pad(
                taps[:, :, :, a, b, :],
                zero,
                ((0, 0, 0), (a, k - 1 - a, 1), (b, k - 1 - b, 1), (0, 0, 0)),
            )
            out = placed if out is None else out + placed
    return out, (x, w2d)


def _conv_transpose2x_gemm_bwd(operand_dtype, res, dy):
    x, w2d = res
    cin = x.shape[-1]
    k = int(round(math.sqrt(w2d.shape[1] // dy.shape[-1])))
    cout = dy.shape[-1]
    # Tap (a, b) of input pixel (i, j) landed on output (2i + a, 2j + b): its gradient is the
    # stride-2 slice of dy starting at (a, b); all k*k of them side by side = [N,H,W,(a,b,O)],
    # which is im2col of dy with stride 2 (dy is 2H + k - 2 wide: H windows).
    dtaps = im2col(dy, k, k, 2)
    dx = _dot(dtaps, w2d, (((3,), (1,)), ((), ())), operand_dtype)
    dw2d = _dot(
        x.reshape(-1, cin), dtaps.reshape(-1, k * k * cout), (((0,), (0,)), ((), ())), operand_dtype
    )
    dw = jnp.transpose(dw2d.reshape(cin, k, k, cout), (1, 2, 0, 3))
    return dx, dw


_conv_transpose2x_gemm.defvjp(_conv_transpose2x_gemm_fwd, _conv_transpose2x_gemm_bwd)


def max_pool2x2(x: jax.Array, *, impl: Optional[str] = None) -> jax.Array:
    """2x2 / stride-2 max pool (floor), NHWC. Off 'native' it is a reshape + max, whose gradient
    is a mask multiply (shared equally between exact ties, where select-and-scatter picks one);
    the native `reduce_window` gradient is XLA's select-and-scatter."""
    if resolve_impl(impl) == "native":
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2, :]
    return jnp.max(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))
