"""What `pip install .` ships: every package of ours, the bundled sample and the training configs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def setuptools_config() -> dict:
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as fh:
        return tomllib.load(fh)["tool"]["setuptools"]


def test_every_package_folder_is_installed_under_one_name():
    cfg = setuptools_config()
    folders = {folder: name for name, folder in cfg["package-dir"].items()}
    found = set()
    for top in folders:
        for folder, _dirs, files in os.walk(os.path.join(REPO, top)):
            if "__init__.py" in files:
                rel = os.path.relpath(folder, os.path.join(REPO, top))
                found.add(folders[top] + ("" if rel == "." else "." + rel.replace(os.sep, ".")))
    listed = set(cfg["packages"])
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"
    assert {name.split(".")[0] for name in listed} == {"comfyui_dwm"}  # one top-level name of ours
    assert "nodes" not in listed  # it would shadow ComfyUI's own nodes module


def test_the_sample_and_the_configs_are_package_data():
    cfg = setuptools_config()
    sample = os.path.join(REPO, cfg["package-dir"]["comfyui_dwm.examples"], "00055")
    assert {"static.mp4", "hands.mp4", "ground_truth.mp4", "prompt.txt"} <= set(os.listdir(sample))
    assert cfg["package-data"]["comfyui_dwm.examples"] == ["NOTICE", "00055/*"]
    for pattern in cfg["package-data"]["comfyui_dwm.training"]:
        folder = os.path.join(REPO, "training", os.path.dirname(pattern))
        assert any(f.endswith(".yaml") for f in os.listdir(folder)), pattern


def test_a_plain_install_has_one_top_level_name_and_carries_the_sample(tmp_path):
    """`pip install .` (not editable) puts only comfyui_dwm into site-packages, trainer and sample included."""
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), REPO], check=True, capture_output=True)
    assert {name for name in os.listdir(site) if not name.endswith(".dist-info")} == {"comfyui_dwm"}
    code = "from comfyui_dwm.cli_generate import examples_dir; import comfyui_dwm.training.train; print(examples_dir())"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(site)})
    assert out.stdout.strip() == str(site / "comfyui_dwm" / "examples"), out.stderr
    assert {"static.mp4", "hands.mp4", "prompt.txt"} <= set(os.listdir(site / "comfyui_dwm" / "examples" / "00055"))
    trainer = site / "comfyui_dwm" / "training"
    assert os.listdir(trainer / "configs") and os.listdir(trainer / "accelerate")
