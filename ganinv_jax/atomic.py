"""Atomic file writes: write a temporary sibling, fsync, rename into place.

A reader (or a resumed job after kill -9) sees either the old file or the complete new one,
never a half-written file; on any error the temporary file is removed.
"""
from __future__ import annotations

import contextlib
import os
import uuid


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
