"""File names that are safe on every platform, for outputs named after things we do not control
(workflow node ids, names a server sends back, sample ids from a list file)."""

from __future__ import annotations

import re

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
MAX_PART = 120


def safe_part(text: str) -> str:
    """One path component: no separators (``/`` or ``\\``), no ``..``, no Windows device name,
    no leading dot or trailing dot/space; never empty."""
    name = _UNSAFE.sub("-", str(text)).strip(". -")[:MAX_PART] or "_"
    if name.split(".")[0].upper() in _RESERVED:
        name = "_" + name
    return name


def base_name(path: str) -> str:
    """The last component of a path written with either separator, made safe."""
    return safe_part(re.split(r"[\\/]", str(path))[-1])
