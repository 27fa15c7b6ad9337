"""Test-wide setup: 8 fake CPU devices (set before JAX initializes a backend), fixtures dir.

Optional inputs (test extras, fixtures, Debian datasets) go through `_ci.py`: they skip
locally and fail under CI=true."""

import os

# Tests are compile-bound (XLA:CPU compiles each tiny program in seconds and runs it in
# milliseconds): LLVM's optimization level 0 cuts compile time ~40% (the inversion engine's
# strategy fixture: 85 -> 55 s) and changes no value beyond float rounding. Benchmarks never
# import this file. GANINV_TEST_XLA_OPT=1 keeps XLA's default level.
if os.environ.get("GANINV_TEST_XLA_OPT") != "1":
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()
# The conv form: XLA's native convolutions, not the CPU default's GEMM forms (ops/conv.py), which
# trace more ops and compile slower (a tiny G's gradient 5.3 vs 3.9 s), while the tests' tiny
# programs run in milliseconds either way (the default run: 26m11s -> 20m03s on 2 cores, README
# "Set-up"). tests/test_conv_ops.py checks the GEMM forms against
# the native ones (values, input and weight gradients; jit, vmap, lax.map, lax.scan, 8 devices;
# G, D and LPIPS end to end) under explicit `use_impl`. GANINV_CONV_IMPL=auto runs every test
# on the CPU default.
os.environ.setdefault("GANINV_CONV_IMPL", "native")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", "cpu")

import pathlib  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


def fixtures_dir() -> pathlib.Path:
    """Third-party checkpoint fixtures: $GANINV_FIXTURES or ../shared/fixtures beside the repo."""
    return pathlib.Path(os.environ.get("GANINV_FIXTURES", REPO.parent / "shared" / "fixtures"))
