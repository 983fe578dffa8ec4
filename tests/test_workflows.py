"""The shipped workflows against the node schemas: ours from their definitions, core and
VideoHelperSuite nodes from a recorded /object_info of a real ComfyUI 0.8.0 host."""
import copy
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import nodes  # noqa: E402
from dwm.queue_jobs import find_targets  # noqa: E402
from dwm.workflow_schema import check_api, check_pair, load_schemas, ui_to_api, ui_widget_slots  # noqa: E402

OBJECT_INFO = ROOT.parent / "shared" / "comfyui" / "object_info.json"
UI_FILES = sorted((ROOT / "workflows").glob("*.json"))
NAMES = [p.stem for p in UI_FILES]
EXPECTED = {"dwm_basic", "dwm_basic_vhs", "dwm_low_vram", "dwm_lora_strength_sweep"}


@pytest.fixture(scope="module")
def schemas():
    if not OBJECT_INFO.is_file():
        pytest.skip(f"{OBJECT_INFO} is missing (the recorded host schemas in shared/)")
    return load_schemas(str(OBJECT_INFO), nodes.NODE_CLASS_MAPPINGS, nodes.NODE_DISPLAY_NAME_MAPPINGS)


def load(name, api=False):
    return json.loads((ROOT / "workflows" / ("api" if api else "") / f"{name}.json").read_text("utf-8"))


def test_every_example_has_both_formats():
    assert EXPECTED <= set(NAMES)
    assert {p.stem for p in (ROOT / "workflows" / "api").glob("*.json")} == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_workflow_fits_schemas_and_its_api_twin(name, schemas):
    assert check_pair(load(name), load(name, api=True), schemas) == []


@pytest.mark.parametrize("name", NAMES)
def test_api_workflow_has_queue_targets(name):
    """dwm.queue finds the videos, the prompt and the seed (a sampler, or a shared seed node) by title."""
    wf = load(name, api=True)
    targets = find_targets(wf, [])
    assert {"static_video", "hand_video", "prompt", "sampler"} <= set(targets)
    node, inp = targets["sampler"]
    assert isinstance(wf[node]["inputs"][inp], int)


def _note(name):
    return next(n["widgets_values"][0] for n in load(name)["nodes"] if n["type"] == "Note")


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_has_a_model_note(name):
    assert "models/dwm/" in _note(name) and "models/loras/" in _note(name)


def test_seed_widgets_carry_the_editor_control_value(schemas):
    slots = ui_widget_slots(schemas["DWMSampler"])
    assert slots == ["steps", "cfg", "scheduler", "seed", None, "batch_size", "dynamic_cfg"]
    assert ui_widget_slots(schemas["LoadVideo"]) == ["file", None]


def _problems_after(name, schemas, edit):
    api = copy.deepcopy(load(name, api=True))
    edit(api)
    return check_api(api, schemas)


def test_unknown_node_is_rejected(schemas):
    problems = _problems_after("dwm_basic", schemas, lambda wf: wf["10"].update(class_type="DWMSampelr"))
    assert problems == ["node 10 (DWMSampelr): unknown node type 'DWMSampelr'"]


def test_bad_link_type_is_rejected(schemas):
    # the sampler's scene socket fed from the text encoder
    problems = _problems_after("dwm_basic", schemas,
                               lambda wf: wf["10"]["inputs"].update(scene=["8", 0]))
    assert problems == ["node 10 (DWMSampler): scene takes DWM_SCENE but is linked to node 8 output 0 "
                        "(DWM_CONDITIONING)"]


def test_out_of_range_and_unknown_choice_are_rejected(schemas):
    def edit(wf):
        wf["10"]["inputs"].update(steps=0, scheduler="euler")
        del wf["10"]["inputs"]["cfg"]
    problems = _problems_after("dwm_basic", schemas, edit)
    assert "node 10 (DWMSampler): steps=0 is below its minimum 1" in problems
    assert any(p.startswith("node 10 (DWMSampler): scheduler='euler' is not one of") for p in problems)
    assert "node 10 (DWMSampler): required input 'cfg' is neither linked nor set" in problems


def test_file_lists_accept_any_name_but_combos_do_not(schemas):
    def edit(wf):
        wf["2"]["inputs"]["file"] = "my_own_video.mp4"
        wf["13"]["inputs"]["format"] = "webm"
    assert _problems_after("dwm_basic", schemas, edit) == [
        "node 13 (SaveVideo): format='webm' is not one of ['auto', 'mp4']"]


def test_ui_and_api_drift_is_reported(schemas):
    ui = copy.deepcopy(load("dwm_basic"))
    sampler = next(n for n in ui["nodes"] if n["id"] == 10)
    sampler["widgets_values"][0] = 20  # steps, in the UI file only
    problems = check_pair(ui, load("dwm_basic", api=True), schemas)
    assert len(problems) == 1 and problems[0].startswith("UI vs API: node 10 inputs: {")
    assert "'steps': 20" in problems[0] and "'steps': 50" in problems[0]


def test_ui_link_mismatch_is_reported(schemas):
    ui = copy.deepcopy(load("dwm_basic"))
    ui["links"][0][2] = 5  # claims an output slot the source node does not have
    _api, problems = ui_to_api(ui, schemas)
    assert problems and problems[0].startswith(f"link {ui['links'][0][0]}: node")


def test_misplaced_widget_values_are_reported(schemas):
    ui = copy.deepcopy(load("dwm_basic"))
    sampler = next(n for n in ui["nodes"] if n["id"] == 10)
    del sampler["widgets_values"][4]  # the control_after_generate slot after the seed
    problems = check_pair(ui, load("dwm_basic", api=True), schemas)
    assert "UI: node 10 (DWMSampler): 6 widget values for 7 widget slots" in problems
