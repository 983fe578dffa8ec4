"""What `pip install .` ships: every package of ours, the bundled sample and the training configs."""

from __future__ import annotations

import os
import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def setuptools_config() -> dict:
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as fh:
        return tomllib.load(fh)["tool"]["setuptools"]


def test_every_package_folder_is_installed():
    found = {os.path.relpath(folder, REPO).replace(os.sep, ".")
             for top in ("dwm", "training") for folder, _dirs, files in os.walk(os.path.join(REPO, top))
             if "__init__.py" in files}
    listed = set(setuptools_config()["packages"])
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"
    assert "nodes" not in listed  # it would shadow ComfyUI's own nodes module


def test_the_sample_and_the_configs_are_package_data():
    cfg = setuptools_config()
    sample = os.path.join(REPO, cfg["package-dir"]["dwm.examples"], "00055")
    assert {"static.mp4", "hands.mp4", "ground_truth.mp4", "prompt.txt"} <= set(os.listdir(sample))
    assert cfg["package-data"]["dwm.examples"] == ["NOTICE", "00055/*"]
    for pattern in cfg["package-data"]["training"]:
        folder = os.path.join(REPO, "training", os.path.dirname(pattern))
        assert any(f.endswith(".yaml") for f in os.listdir(folder)), pattern
