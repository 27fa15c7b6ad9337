"""Optional test inputs (test extras, third-party fixtures, Debian datasets): a test that needs
one SKIPS where it is missing, except under CI=true, where it FAILS -- `.ci/run` installs all of
them, so a skip there would hide a test that never ran.

Same rule as the `fixtures_path` fixture of conftest.py (whose `fixtures_dir()` this uses), in a
form usable at import time and inside module-scoped fixtures:

    torch = _ci.importorskip("torch")          # module level or inside a test
    path = _ci.fixture_file("nvlabs_ada_32.pkl")
    @_ci.needs_fmnist
    def test_...(): ...
"""

from __future__ import annotations

import importlib
import os

import pytest

try:
    from conftest import fixtures_dir
except ImportError:  # conftest not importable as a module (e.g. --import-mode=importlib)
    import pathlib

    def fixtures_dir() -> pathlib.Path:
        repo = pathlib.Path(__file__).resolve().parents[1]
        return pathlib.Path(os.environ.get("GANINV_FIXTURES", repo.parent / "shared" / "fixtures"))


IN_CI = os.environ.get("CI", "").lower() == "true"
FMNIST_DIR = "/usr/share/datasets/fashion-mnist"


def skip_or_fail(message: str):
    """pytest.skip(message), or pytest.fail(message) under CI=true."""
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def importorskip(modname: str, why: str = "a test extra: pip install -e '.[test]'"):
    """pytest.importorskip that FAILS under CI=true (the import error propagates there)."""
    if IN_CI:
        return importlib.import_module(modname)
    return pytest.importorskip(modname, reason=f"{modname} not installed ({why})")


def fixture_file(name: str) -> str:
    """Path of a third-party parity fixture ($GANINV_FIXTURES or ../shared/fixtures)."""
    path = os.path.join(str(fixtures_dir()), name)
    if not os.path.exists(path):
        skip_or_fail(f"parity fixture {name} not found in {fixtures_dir()} (set GANINV_FIXTURES)")
    return path


HAVE_FMNIST = os.path.isfile(os.path.join(FMNIST_DIR, "t10k-images-idx3-ubyte.gz"))
# Outside CI a missing Debian dataset skips; under CI the test runs and fails on the missing files.
needs_fmnist = pytest.mark.skipif(
    not HAVE_FMNIST and not IN_CI, reason="apt-get install dataset-fashion-mnist"
)
