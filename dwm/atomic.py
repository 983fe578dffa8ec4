"""Atomic writes: a crash or a full disk never leaves a half-written output behind.

Files are written next to their destination under a temporary name, flushed to disk, then renamed
into place with ``os.replace`` (atomic on POSIX and Windows within one filesystem). Only SIGKILL (or a
power cut) can leave a temporary file behind; its name (``.tmp-dwm-*``) tells ours from anyone else's,
so :func:`clean_stale_temporaries` can remove it on the next run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile

TEMP_PREFIX = ".tmp-dwm-"
STALE_NAME = r"\.tmp-(dwm-[A-Za-z0-9_]+|[a-z0-9_]{8})"  # ours, and the bare mkstemp names of earlier versions


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = ""):
    """Yield a temporary file path beside ``path``; on success it replaces ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=suffix or os.path.splitext(path)[1], dir=folder)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_dir(path: str):
    """Yield a temporary folder beside ``path``; on success it is renamed to ``path``.

    An existing ``path`` is replaced only after the new folder is complete.
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=parent)
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if os.path.exists(path):
            old = tmp + ".old"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def clean_stale_temporaries(folder: str, before: float, suffix: str | None = ".mp4") -> list[str]:
    """Remove the temporary files :func:`atomic_path` left in ``folder`` (a killed run) last modified
    before ``before`` (the current run's start, so a concurrent writer's file in flight is kept);
    ``suffix`` None: whatever their extension."""
    pattern = re.compile(STALE_NAME + (re.escape(suffix) if suffix is not None else r"\.[^.]+") + "$")
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            with contextlib.suppress(OSError):
                if pattern.match(entry.name) and entry.is_file(follow_symlinks=False) \
                        and entry.stat(follow_symlinks=False).st_mtime < before:
                    os.remove(entry.path)
                    removed.append(entry.path)
    return removed

