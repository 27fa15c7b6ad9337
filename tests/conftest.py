"""Test-wide setup: 8 fake CPU devices (set before JAX initializes a backend), fixtures dir."""
import os

os.environ.setdefault("XLA_FLAGS", "")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", "cpu")

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


def fixtures_dir() -> pathlib.Path:
    """Third-party checkpoint fixtures: $GANINV_FIXTURES or ../shared/fixtures beside the repo."""
    return pathlib.Path(os.environ.get("GANINV_FIXTURES", REPO.parent / "shared" / "fixtures"))


@pytest.fixture(scope="session")
def fixtures_path() -> pathlib.Path:
    path = fixtures_dir()
    if not path.is_dir():
        message = f"third-party fixtures not found at {path} (set GANINV_FIXTURES)"
        if os.environ.get("CI") == "true":   # CI must run the parity tests, not skip them
            pytest.fail(message)
        pytest.skip(message)
    return path
