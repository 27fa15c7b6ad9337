"""The one atomic-write helper: write a temporary sibling, fsync, rename into place.

A reader (or a resumed job after kill -9) sees either the old file or the complete new one,
never a half-written file; on any error the temporary file is removed. `atomic_open` and
`atomic_dir` are the primitives; `write_text` / `write_json` / `write_npz` the common cases.
(Orbax checkpoints are not wrapped: orbax itself writes to a temporary directory and renames.)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", suffix: str = "", **open_kwargs):
    """`with atomic_open(path, 'wb') as f: ...` replaces `path` only when the block succeeds.

    `suffix` keeps an extension on the temporary name for writers that look at it.
    """
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}{suffix}"
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_dir(out: str, replace: bool = False):
    """`with atomic_dir(out) as tmp: <write files into tmp>` then `tmp` is renamed to `out`.

    The temporary directory is a hidden sibling of `out` (same filesystem, so the rename is
    atomic); on any error it is removed and `out` is untouched. An existing `out` is replaced
    when `replace`, else `FileExistsError`.
    """
    out = os.path.abspath(out)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(out)}.tmp-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    try:
        yield tmp
        if os.path.exists(out):
            if not replace:
                raise FileExistsError(f"{out}: output already exists")
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str, text: str) -> None:
    with atomic_open(path, "w", newline="") as f:
        f.write(text)


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def write_json(path: str, obj: Any, compact: bool = False, indent: int = 1) -> None:
    """`obj` as JSON (numpy scalars/arrays converted, keys sorted, trailing newline)."""
    layout = {"separators": (",", ":")} if compact else {"indent": indent}
    with atomic_open(path, "w") as f:
        json.dump(obj, f, sort_keys=True, default=_json_default, **layout)
        f.write("\n")


def write_npz(path: str, **arrays) -> None:
    with atomic_open(path, "wb", suffix=".npz") as f:
        np.savez(f, **arrays)
