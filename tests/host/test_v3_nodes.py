"""The V3 nodes against workflows users saved before the move (frozen in saved_workflows/): each API
file runs through /prompt, each UI file loads in the graph editor with no missing node or error dialog
and makes the same prompt, plus the defaults of the inputs added since. And VIDEO in and out: the
frame rate of the loaded videos reaches the saved output and comparison."""
import json
from pathlib import Path

import pytest

from comfyui_dwm.video_io import read_video, write_video

from .conftest import FRAMES, api_workflow, runnable
from .test_browser import LOAD_JS, browser, page, without_editor_inputs  # noqa: F401 (fixtures)
from .test_host_run import run_prompt, saved_files

pytestmark = pytest.mark.host
SAVED = Path(__file__).parent / "saved_workflows"
NAMES = sorted(p.stem for p in (SAVED / "api").glob("*.json"))
# Inputs added since the first release, with the defaults the editor gives them in an old workflow.
ADDED = {"DWMDecode": {"fps": 8}, "DWMCompare": {"fps": 8}, "DWMSceneEncode": {"fps": 8},
         "DWMModelLoader": {"memory_mode": "none"}, "DWMSampler": {"cache": "none", "attention": "sdpa"}}


def saved(name: str, form: str) -> dict:
    return json.loads((SAVED / form / f"{name}.json").read_text(encoding="utf-8"))


def test_the_frozen_workflows_are_the_first_release():
    assert NAMES == ["dwm_basic", "dwm_basic_vhs", "dwm_lora_strength_sweep", "dwm_low_vram"]
    basic = saved("dwm_basic", "api")
    assert basic["4"]["class_type"] == "GetVideoComponents" and "fps" not in basic["11"]["inputs"]


@pytest.mark.parametrize("name", NAMES)
def test_saved_api_workflow_runs(comfy, example_inputs, has_vhs, name):
    wf = runnable(saved(name, "api"))
    if any(n["class_type"].startswith("VHS_") for n in wf.values()) and not has_vhs:
        pytest.skip("VideoHelperSuite is not in the checkout's custom_nodes")
    entry = run_prompt(comfy, wf)
    assert entry["status"]["status_str"] == "success", entry["status"]["messages"]
    files = saved_files(comfy, entry)
    assert len(files) == sum(n["class_type"] in ("SaveVideo", "VHS_VideoCombine") for n in wf.values())
    for path in files:
        assert read_video(str(path))[0].shape[0] == FRAMES, path


@pytest.mark.parametrize("name", NAMES)
def test_saved_ui_workflow_loads_in_the_editor(page, example_inputs, name):  # noqa: F811 (fixture)
    result = page.evaluate(LOAD_JS, saved(name, "ui"))
    assert result["shown"] == [] and result["missing"] == []
    expected = saved(name, "api")
    for node in expected.values():
        node["inputs"].update(ADDED.get(node["class_type"], {}))
    assert without_editor_inputs(result["prompt"]) == expected


def test_video_inputs_keep_their_frame_rate(comfy, example_inputs):
    """dwm_basic wires Load Video straight into the DWM nodes and saves their VIDEO outputs: with Scene
    Encode's fps at 0 (keep) and Compare's at 12, 12 fps videos in give 12 fps output and comparison
    out (resampling to 8 fps is tests/host/test_memory.py's)."""
    for role in ("static", "hands"):
        frames = read_video(str(comfy.input / example_inputs[role]))[0][:FRAMES]
        write_video(str(comfy.input / f"dwm_12fps_{role}.mp4"), frames, fps=12)
    wf = runnable(api_workflow("dwm_basic"))
    loaders = [n for n in wf.values() if n["class_type"] == "LoadVideo"]
    for node, role in zip(loaders, ("static", "hands")):
        assert node["_meta"]["title"] == {"static": "static video", "hands": "hand video"}[role]
        node["inputs"]["file"] = f"dwm_12fps_{role}.mp4"
    assert {n["inputs"]["fps"] for n in wf.values() if "fps" in ADDED.get(n["class_type"], {})} == {8}
    for node in wf.values():
        if node["class_type"] in ("DWMSceneEncode", "DWMCompare"):
            node["inputs"]["fps"] = {"DWMSceneEncode": 0, "DWMCompare": 12}[node["class_type"]]
    entry = run_prompt(comfy, wf)
    assert entry["status"]["status_str"] == "success", entry["status"]["messages"]
    videos = [read_video(str(p)) for p in saved_files(comfy, entry)]
    assert [(v.shape[0], fps) for v, fps in videos] == [(FRAMES, 12)] * 2
    widths = sorted(v.shape[2] for v, _fps in videos)
    assert widths == [96, 3 * 96]  # the output; static | hands | output
