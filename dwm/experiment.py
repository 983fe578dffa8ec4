"""The reference trainer's experiment yaml, which sits beside a release folder's weights.

Both families' release folders carry it (pipeline type, LoRA rank/alpha, base path): beside the
weights, or in the parent of an intermediate ``checkpoint-*`` folder. Read with ``yaml.safe_load``
only, so a config never runs code.
"""

from __future__ import annotations

import glob
import os

import yaml

from .errors import DWMError


def find_config(path: str) -> str | None:
    """The first ``*.yaml``/``*.yml`` by name in the folder, else in the parent of a ``checkpoint-*`` folder."""
    folders = [path]
    if os.path.basename(os.path.normpath(path)).startswith("checkpoint-"):
        folders.append(os.path.dirname(os.path.normpath(path)))
    for folder in folders:
        found = sorted(glob.glob(os.path.join(glob.escape(folder), "*.yaml"))
                       + glob.glob(os.path.join(glob.escape(folder), "*.yml")))
        if found:
            return found[0]
    return None


def read_config(path: str, input_name: str = "checkpoint") -> dict:
    """The experiment yaml of a release folder, {} when there is none."""
    config_path = find_config(path)
    if config_path is None:
        return {}
    try:
        with open(config_path, encoding="utf-8") as fh:
            config = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as err:
        raise DWMError(input_name, f"cannot read the experiment config {config_path}: {err}",
                       "fix or remove the yaml file (the weights load without it)") from err
    return config if isinstance(config, dict) else {}
