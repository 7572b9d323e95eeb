"""Leftovers of killed runs on a worker's scratch and cache directories.

Everything tailsynth writes locally is first written under a hidden temporary name and
renamed into place when complete: checkpoints (``.tmp-checkpoint-…``, replaced ones
renamed aside as ``.old-…``), checkpoints and classifiers downloaded into the cache
(``.tmp-<name>-…``). A worker killed mid-write leaves such an entry behind, and nothing
else ever renames or deletes it.

A live task keeps writing to its leftover-looking entries, so their newest modification
time stays recent; an entry untouched for longer than a job's lease belongs to no live
task (a task that stopped writing that long ago has lost its lease). Only those are
deleted: a run in progress, on this worker or another sharing the directory, is never
touched.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from shared.settings import Settings

log = logging.getLogger(__name__)

LEFTOVER_PREFIXES = (".tmp-", ".old-")


def newest_mtime(path: Path) -> float:
    """The newest modification time (seconds since the epoch) of ``path`` and, for a
    directory, of everything under it."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                try:
                    newest = max(newest, (Path(root) / name).lstat().st_mtime)
                except FileNotFoundError:  # deleted while we looked: not ours to judge
                    continue
    return newest


def sweep_leftovers(root: Path, older_than_s: float, *, now: float | None = None) -> list[Path]:
    """Delete every ``.tmp-*`` / ``.old-*`` entry under ``root`` whose newest modification
    is older than ``older_than_s`` seconds; the deleted paths. Complete entries (any other
    name) are never looked into beyond their names, nor deleted."""
    if not root.is_dir():
        return []
    cutoff = (time.time() if now is None else now) - older_than_s
    deleted: list[Path] = []
    for current, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            if not name.startswith(LEFTOVER_PREFIXES):
                continue
            path = Path(current) / name
            try:
                if newest_mtime(path) >= cutoff:
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except FileNotFoundError:  # another worker's sweep took it first
                continue
            deleted.append(path)
        dirs[:] = [d for d in dirs if not d.startswith(LEFTOVER_PREFIXES)]
    return deleted


def sweep_scratch(settings: Settings) -> list[Path]:
    """Delete the leftovers of killed runs from this worker's scratch and cache
    directories (``data_dir/scratch``, ``data_dir/cache``): those untouched for longer
    than ``settings.job_lease_s``. Run at the start of a task; the deleted paths."""
    deleted: list[Path] = []
    for root in (settings.data_dir / "scratch", settings.data_dir / "cache"):
        deleted.extend(sweep_leftovers(root, settings.job_lease_s))
    if deleted:
        log.info(
            "deleted %d leftovers of killed runs: %s",
            len(deleted),
            ", ".join(str(p) for p in deleted[:10]),
        )
    return deleted
