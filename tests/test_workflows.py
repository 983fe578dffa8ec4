"""The shipped workflows, and those saved with the first release, against the node schemas: ours from
their recorded /object_info entries (workflows/schemas/, kept equal to the live host by a host test),
core and VideoHelperSuite nodes from a recorded /object_info of a real ComfyUI 0.8.0 host."""
import copy
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conftest import CORE_OBJECT_INFO, SHARED_OBJECT_INFO, extras  # noqa: E402
from comfyui_dwm.queue_jobs import find_targets  # noqa: E402
from comfyui_dwm.workflow_schema import (FRONTEND_ONLY, check_api, check_pair, load_schemas, recorded_entry,  # noqa: E402
                                 ui_to_api, ui_widget_slots)

# The full recording of the host (shared/, optional) when present, else the shipped copy trimmed to the node
# types our workflows use.
FULL = extras(SHARED_OBJECT_INFO)
OBJECT_INFO = Path((FULL or [CORE_OBJECT_INFO])[0])
TRIM = ROOT / "tests" / "fixtures" / "trim_object_info.py"
OUR_NODES = [ROOT / "workflows" / "schemas" / f"dwm_{family}_nodes.json" for family in ("cogvideox", "wan")]
SAVED = ROOT / "tests" / "host" / "saved_workflows"  # the first release's CogVideoX workflows, frozen
UI_FILES = sorted((ROOT / "example_workflows").glob("*.json"))
NAMES = [p.stem for p in UI_FILES]
WAN = ["dwm_wan_basic", "dwm_wan_lightx2v", "dwm_wan_low_vram"]
EXPECTED = {"dwm_basic", "dwm_basic_vhs", "dwm_low_vram", "dwm_lora_strength_sweep", *WAN}


@pytest.fixture(scope="module")
def schemas():
    return load_schemas([str(OBJECT_INFO), *map(str, OUR_NODES)])


def _trimmer():
    spec = importlib.util.spec_from_file_location("trim_object_info", TRIM)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_core_schemas_cover_every_node_type_of_the_workflows():
    trimmer = _trimmer()
    core = json.loads(Path(CORE_OBJECT_INFO).read_text("utf-8"))
    ours = {name for path in OUR_NODES for name in json.loads(path.read_text("utf-8"))}
    assert trimmer.used_node_types() - ours - FRONTEND_ONLY == set(core)


@pytest.mark.parametrize("recording", [CORE_OBJECT_INFO, *FULL])
def test_shipped_core_schemas_are_the_recording_trimmed(recording):
    """Trimming gives the shipped copy back: from itself (nothing stale in it) and from the full recording
    when present. Refresh with: python tests/fixtures/trim_object_info.py --full <object_info.json>."""
    trimmer = _trimmer()
    expected = trimmer.dumps(trimmer.trim(json.loads(Path(recording).read_text("utf-8"))))
    assert Path(CORE_OBJECT_INFO).read_text("utf-8") == expected


def load(name, api=False):
    folder = ROOT / "workflows" / "api" if api else ROOT / "example_workflows"
    return json.loads((folder / f"{name}.json").read_text("utf-8"))


def test_every_example_has_both_formats():
    assert EXPECTED <= set(NAMES)
    assert {p.stem for p in (ROOT / "workflows" / "api").glob("*.json")} == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_workflow_fits_schemas_and_its_api_twin(name, schemas):
    assert check_pair(load(name), load(name, api=True), schemas) == []


@pytest.mark.parametrize("name", NAMES)
def test_api_workflow_has_queue_targets(name):
    """comfyui_dwm.queue finds the videos, the prompt and the seed (a sampler, or a shared seed node) by title."""
    wf = load(name, api=True)
    targets = find_targets(wf, [])
    assert {"static_video", "hand_video", "prompt", "sampler"} <= set(targets)
    node, inp = targets["sampler"]
    assert isinstance(wf[node]["inputs"][inp], int)


def _note(name):
    return next(n["widgets_values"][0] for n in load(name)["nodes"] if n["type"] == "Note")


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_has_a_model_note(name):
    """Where each file goes; a Wan note also names the base the released LoRA needs."""
    note = _note(name)
    assert "models/loras/" in note
    if name in WAN:
        for folder in ("diffusion_models/", "text_encoders/", "vae/"):
            assert "models/" + folder in note
        assert "DWM-Wan2.1-Fun-14b-LoRA" in note and "needs the base Wan2.1-Fun-V1.1-14B-InP" in note
    else:
        assert "models/dwm/" in note


def _by_class(wf, cls):
    return [n["inputs"] for n in wf.values() if n["class_type"] == cls]


@pytest.mark.parametrize("name", WAN)
def test_wan_workflow_samples_like_the_reference(name):
    """Shift 5, euler / normal, seed 42, 720x480x49; 50 steps at cfg 6, or 4 at cfg 1 with LightX2V."""
    wf = load(name, api=True)
    [sampler], [shift], [scene] = (_by_class(wf, c) for c in ("KSampler", "ModelSamplingSD3",
                                                               "DWMWanSceneConditioning"))
    steps, cfg = (4, 1.0) if name == "dwm_wan_lightx2v" else (50, 6.0)
    assert {k: sampler[k] for k in ("seed", "steps", "cfg", "sampler_name", "scheduler", "denoise")} == \
        {"seed": 42, "steps": steps, "cfg": cfg, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}
    assert shift["shift"] == 5.0
    assert (scene["width"], scene["height"], scene["length"]) == (720, 480, 49)
    assert [t["text"] for t in _by_class(wf, "CLIPTextEncode") if t["text"] == "bad detailed"]
    assert _by_class(wf, "CLIPLoader") == [{"clip_name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
                                            "type": "wan", "device": "default"}]


def test_wan_model_chain_per_variant():
    """Base -> DWM LoRA (-> LightX2V) -> shift; fp8 weights and a tiled decode for 24 GB cards."""
    def chain(wf):
        nid, seen = next(k for k, n in wf.items() if n["class_type"] == "KSampler"), []
        while "model" in wf[nid]["inputs"]:
            nid = wf[nid]["inputs"]["model"][0]
            seen.append(wf[nid]["class_type"])
        return seen[::-1], wf[nid]["inputs"]["weight_dtype"]
    base = ["DWMWanModelLoader", "DWMWanLoraLoader"]
    assert chain(load("dwm_wan_basic", api=True)) == (base + ["ModelSamplingSD3"], "default")
    assert chain(load("dwm_wan_lightx2v", api=True)) == (base + ["LoraLoaderModelOnly", "ModelSamplingSD3"],
                                                         "default")
    low = load("dwm_wan_low_vram", api=True)
    assert chain(low) == (base + ["ModelSamplingSD3"], "fp8_e4m3fn")
    assert _by_class(low, "VAEDecodeTiled") and not _by_class(low, "VAEDecode")


@pytest.mark.parametrize("name", WAN)
def test_wan_prompt_fits_the_umt5_window(name):
    """umT5 reads 512 tokens; its sentencepiece vocabulary stays well under 3 tokens per English word."""
    [prompt] = [n["inputs"]["text"] for n in load(name, api=True).values() if n["_meta"]["title"] == "prompt"]
    assert prompt and len(prompt.split()) * 3 < 512


def test_recorded_entry_opens_file_lists_and_drops_the_module_path():
    served = {"input": {"required": {
        "model_name": ["COMBO", {"options": ["tiny-wan"], "multiselect": False}],
        "weight_dtype": ["COMBO", {"options": ["default", "fp8_e4m3fn"]}]}},
        "python_module": "custom_nodes.ComfyUI-DWM", "display_name": "DWM-Wan Model Loader"}
    entry = recorded_entry("DWMWanModelLoader", served)
    assert entry["input"]["required"]["model_name"] == ["COMBO", {"options": [], "multiselect": False}]
    assert entry["input"]["required"]["weight_dtype"][1]["options"] == ["default", "fp8_e4m3fn"]
    assert "python_module" not in entry and served["python_module"]  # the served entry is left alone
    vae = recorded_entry("VAELoader", {"input": {"required": {"vae_name": [["pixel_space"]]}}})
    assert vae["input"]["required"]["vae_name"] == [[]]


@pytest.mark.parametrize("name", sorted(p.stem for p in (SAVED / "api").glob("*.json")))
def test_workflows_saved_with_the_first_release_still_fit(name, schemas):
    """Their API files are valid as they are; their UI files only lack the widgets added since
    (the editor gives those their defaults: tests/host/test_v3_nodes.py)."""
    api = json.loads((SAVED / "api" / f"{name}.json").read_text("utf-8"))
    ui = json.loads((SAVED / "ui" / f"{name}.json").read_text("utf-8"))
    assert check_api(api, schemas) == []
    from_ui, problems = ui_to_api(ui, schemas)
    # fps (Decode, Compare, SceneEncode), memory_mode (ModelLoader), cache + attention (Sampler)
    added = {"Decode": "1 widget values for 2", "Compare": "0 widget values for 1",
             "SceneEncode": "6 widget values for 7", "ModelLoader": "3 widget values for 4",
             "Sampler": "7 widget values for 9"}
    for problem in problems:
        found = re.fullmatch(r"node \d+ \(DWM(\w+)\): (.*) widget slots", problem)
        assert found and added.get(found[1]) == found[2], problem
    assert sorted(from_ui) == sorted(api) and all(from_ui[n]["class_type"] == api[n]["class_type"] for n in api)


def test_video_nodes_take_and_give_videos(schemas):
    """The CogVideoX workflows load videos straight into the DWM nodes and save the nodes' VIDEOs:
    no frame rate to retype."""
    for name in ("dwm_basic", "dwm_low_vram"):
        wf = load(name, api=True)
        assert not _by_class(wf, "GetVideoComponents") and not _by_class(wf, "CreateVideo")
        for save in _by_class(wf, "SaveVideo"):
            assert wf[save["video"][0]]["class_type"] in ("DWMDecode", "DWMCompare") and save["video"][1] == 1
    assert schemas["DWMSceneEncode"]["input"]["required"]["static_video"][0] == "IMAGE,VIDEO"
    broken = _problems_after("dwm_basic", schemas, lambda wf: wf["13"]["inputs"].update(video=["11", 0]))
    assert broken == ["node 13 (SaveVideo): video takes VIDEO but is linked to node 11 output 0 (IMAGE)"]


def test_wan_nodes_are_checked_from_their_recording(schemas):
    problems = _problems_after("dwm_wan_basic", schemas, lambda wf: wf["11"]["inputs"].update(
        length=2000, hand_video=["8", 0], vae="oops"))
    assert sorted(problems) == [
        "node 11 (DWMWanSceneConditioning): hand_video takes VIDEO but is linked to node 8 output 0 (VAE)",
        "node 11 (DWMWanSceneConditioning): length=2000 is above its maximum 1025",
        "node 11 (DWMWanSceneConditioning): vae takes a VAE link, not a value"]
    weights = _problems_after("dwm_wan_basic", schemas,
                              lambda wf: wf["4"]["inputs"].update(weight_dtype="int4", model_name="mine"))
    assert weights == ["node 4 (DWMWanModelLoader): weight_dtype='int4' is not one of "
                       "['default', 'fp8_e4m3fn', 'fp8_e4m3fn_fast', 'fp8_e5m2']"]


def test_seed_widgets_carry_the_editor_control_value(schemas):
    slots = ui_widget_slots(schemas["DWMSampler"])
    assert slots == ["steps", "cfg", "scheduler", "seed", None, "batch_size", "dynamic_cfg", "cache", "attention"]
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
    assert "UI: node 10 (DWMSampler): 8 widget values for 9 widget slots" in problems
