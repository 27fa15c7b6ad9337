"""The workdir's manifest: which chunks are finished, and with which settings.

`manifest.json` is the single source of truth for resume. It is only ever replaced whole
(write a temporary file, fsync, rename), and a chunk is added to it only after every output of
that chunk is on disk, so a kill -9 at any moment leaves either the old or the new manifest and,
at worst, orphan outputs of the chunk in flight (which the rerun recomputes and overwrites).

Chunks are fixed-size groups of the not-yet-finished ids in id order. With an unchanged chunk
size that reproduces the original chunks exactly (finished chunks are whole), so a resumed
run computes every image in the same batch it would have had without the interruption.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

from ganinv_jax import atomic
from ganinv_jax.errors import UserError

MANIFEST = "manifest.json"
VERSION = 1


class ResumeMismatch(UserError, ValueError):
    """The workdir holds a run with different settings or inputs."""


def ranges(ids: Iterable[int]) -> list[list[int]]:
    """Sorted ids -> [[start, stop), ...] runs (compact for contiguous chunks)."""
    out: list[list[int]] = []
    for i in sorted(int(i) for i in ids):
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return out


def expand(runs: Sequence[Sequence[int]]) -> list[int]:
    return [i for a, b in runs for i in range(a, b)]


def plan_chunks(total: int, done: set, chunk_size: int) -> list[list[int]]:
    """Groups of `chunk_size` ids (the last may be shorter) over ids not in `done`."""
    if chunk_size <= 0:
        raise ValueError(f"chunk size must be positive, got {chunk_size}")
    todo = [i for i in range(total) if i not in done]
    return [todo[k : k + chunk_size] for k in range(0, len(todo), chunk_size)]


def chunk_name(ids: Sequence[int]) -> str:
    """A chunk is named by its first id: unique, since chunks never overlap."""
    return f"chunk_{int(ids[0]):08d}"


class Manifest:
    """In-memory manifest; `commit_chunk` rewrites the file atomically."""

    def __init__(self, workdir: str, run: dict):
        self.path = os.path.join(workdir, MANIFEST)
        self.run = run
        self.chunks: list[dict] = []

    @classmethod
    def open(cls, workdir: str, run: dict) -> "Manifest":
        """Load the workdir's manifest (checking it was made with the same `run` settings) or
        start an empty one."""
        m = cls(workdir, run)
        if not os.path.exists(m.path):
            return m
        try:
            with open(m.path) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise ResumeMismatch(
                f"{m.path}: unreadable manifest ({e}); use a new --workdir"
            ) from None
        if data.get("version") != VERSION:
            raise ResumeMismatch(f"{m.path}: manifest version {data.get('version')} != {VERSION}")
        old = data.get("run", {})
        diff = sorted(k for k in set(old) | set(run) if old.get(k) != run.get(k))
        if diff:
            k = diff[0]
            raise ResumeMismatch(
                f"workdir already holds a run with different {', '.join(diff)} "
                f"({k}: {old.get(k)!r} -> {run.get(k)!r}); use a new --workdir or the old settings"
            )
        m.chunks = data.get("chunks", [])
        return m

    def done_ids(self) -> set:
        return {i for c in self.chunks for i in expand(c["ids"])}

    def to_json(self) -> dict:
        return {"version": VERSION, "run": self.run, "chunks": self.chunks}

    def commit_chunk(self, entry: dict) -> None:
        """Record one finished chunk (its outputs must already be on disk)."""
        self.chunks.append(entry)
        try:  # compact: the file is rewritten once per chunk
            atomic.write_json(self.path, self.to_json(), compact=True)
        except BaseException:
            self.chunks.pop()  # the file still holds the previous, consistent manifest
            raise
