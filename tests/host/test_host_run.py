"""Against a real ComfyUI: our node schemas as served, every API workflow run to the end, the
template browser's files, and the batch CLI (python -m comfyui_dwm.queue) including Ctrl-C in a batch."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

from comfyui_dwm.video_io import read_video
from comfyui_dwm.workflow_schema import recorded_entry
from nodes.cogvideox import NODE_FUNCTIONS

from .conftest import (FRAMES, LORA_NAME, MODEL_NAME, REPO, WAN_LORA, WAN_MODEL, api_workflow, own_group,
                       runnable, small_settings)

pytestmark = pytest.mark.host
WORKFLOWS = sorted(p.stem for p in (REPO / "workflows" / "api").glob("*.json"))
WAN_IDS = ("DWMWanModelLoader", "DWMWanLoraLoader", "DWMWanSceneConditioning")
# Each family's nodes as served, recorded for the offline workflow checks (tests/test_workflows.py).
RECORDINGS = {REPO / "workflows" / "schemas" / "dwm_cogvideox_nodes.json": tuple(NODE_FUNCTIONS),
              REPO / "workflows" / "schemas" / "dwm_wan_nodes.json": WAN_IDS}
PACK_MODULE = "custom_nodes.ComfyUI-DWM"  # where the host says a node of this pack comes from
RUN_TIMEOUT_S = 600
# A long Wan run, its steps about 0.1 s each on 2 CPU cores: an interrupt lands within one of them.
CANCEL_STEPS, CANCEL_SIZE = 500, (320, 240)


def test_our_nodes_are_served_as_recorded(comfy):
    """The pack's one entry point gives all ten V3 nodes (7 CogVideoX, 3 Wan), served as the recordings
    CI checks the workflows and the node functions with; the model and LoRA lists hold just the files
    placed. DWM_UPDATE_OBJECT_INFO=1 rewrites the recordings."""
    info = comfy.get("/object_info").json()
    assert {name for name, entry in info.items() if entry["python_module"] == PACK_MODULE} == \
        set(NODE_FUNCTIONS) | set(WAN_IDS)
    for path, names in RECORDINGS.items():
        served = {name: recorded_entry(name, info[name]) for name in names}
        if os.environ.get("DWM_UPDATE_OBJECT_INFO") == "1":
            path.write_text(json.dumps(served, indent=1) + "\n", encoding="utf-8")
        assert served == json.loads(path.read_text(encoding="utf-8")), path.name
    choices = {(node, inp): info[node]["input"]["required"][inp][1]["options"] for node, inp in (
        ("DWMModelLoader", "model"), ("DWMLoraLoader", "lora"), ("DWMWanModelLoader", "model_name"),
        ("DWMWanLoraLoader", "lora_name"))}
    assert list(choices.values()) == [[MODEL_NAME], [LORA_NAME], [WAN_MODEL], [WAN_LORA]]


def test_template_browser_serves_every_ui_workflow(comfy):
    """The editor lists a pack's templates and fetches each from /api/workflow_templates/<pack>/."""
    names = sorted(p.stem for p in (REPO / "example_workflows").glob("*.json"))
    assert sorted(comfy.get("/workflow_templates").json()["ComfyUI-DWM"]) == names
    for name in names:
        served = comfy.get(f"/api/workflow_templates/ComfyUI-DWM/{name}.json").json()
        assert served == json.loads((REPO / "example_workflows" / f"{name}.json").read_text("utf-8"))


def run_prompt(comfy, wf: dict, client_id: str | None = None) -> dict:
    """Queue a prompt and wait for its history entry."""
    res = comfy.post("/prompt", {"prompt": wf, "client_id": client_id or uuid.uuid4().hex})
    assert res.status_code == 200, res.text
    pid = res.json()["prompt_id"]
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        entry = comfy.get(f"/history/{pid}").json().get(pid)
        if entry:
            return entry
        time.sleep(1)
    raise TimeoutError(f"prompt {pid} did not finish in {RUN_TIMEOUT_S}s")


def saved_files(comfy, entry: dict) -> list:
    """Paths of the videos the output nodes wrote (SaveVideo 'images', VHS_VideoCombine 'gifs')."""
    return [comfy.base / item["type"] / item.get("subfolder", "") / item["filename"]
            for ui in entry["outputs"].values() for items in ui.values() if isinstance(items, list)
            for item in items if isinstance(item, dict) and "filename" in item]


@pytest.mark.parametrize("name", WORKFLOWS)
def test_api_workflow_runs(comfy, example_inputs, name):
    wf = runnable(api_workflow(name))
    if any(n["class_type"].startswith("VHS_") for n in wf.values()) and "VHS_LoadVideo" not in \
            comfy.get("/object_info").json():
        pytest.skip("VideoHelperSuite is not in the checkout's custom_nodes")
    entry = run_prompt(comfy, wf)
    assert entry["status"]["status_str"] == "success", entry["status"]["messages"]
    saves = [n for n in wf.values() if n["class_type"] in ("SaveVideo", "VHS_VideoCombine")]
    files = saved_files(comfy, entry)
    assert len(files) == len(saves)
    for path in files:
        frames, _fps = read_video(str(path))
        assert frames.shape[0] == FRAMES, path


@pytest.fixture
def data_root(tmp_path):
    """The bundled sample in the dataset layout dwm.queue reads."""
    for folder, src in (("videos_static", "static.mp4"), ("videos_hands", "hands.mp4"),
                        ("prompts", "prompt.txt")):
        (tmp_path / "data" / folder).mkdir(parents=True)
        shutil.copy(REPO / "examples" / "00055" / src, tmp_path / "data" / folder / f"00055{src[-4:]}")
    (tmp_path / "ids.txt").write_text("00055\n")
    return tmp_path


def queue_cmd(comfy, root, seeds: str, steps: int) -> list[str]:
    wf = api_workflow("dwm_basic")
    sets = [f"{nid}.{inp}={json.dumps(v) if not isinstance(v, str) else v}"
            for nid, inp, v in small_settings(wf) if inp != "steps"]
    sampler = next(nid for nid, n in wf.items() if n["class_type"] == "DWMSampler")
    sets.append(f"{sampler}.steps={steps}")
    return [sys.executable, "-m", "comfyui_dwm.queue", "--server", comfy.url, "--workflow",
            str(REPO / "workflows" / "api" / "dwm_basic.json"), "--data-root", str(root / "data"),
            "--list", str(root / "ids.txt"), "--seeds", seeds, "--out", str(root / "out")] + \
        [arg for s in sets for arg in ("--set", s)]


def manifest(root) -> list[dict]:
    path = root / "out" / "manifest.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_queue_cli_runs_three_jobs(comfy, data_root):
    done = subprocess.run(queue_cmd(comfy, data_root, "1,2,3", steps=2), cwd=REPO, capture_output=True,
                          text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-2000:]
    jobs = manifest(data_root)
    assert [(j["sample"], j["seed"], j["status"]) for j in jobs] == [("00055", s, "done") for s in (1, 2, 3)]
    for job in jobs:
        assert len(job["outputs"]) == 2  # the output video and the comparison
        for out in job["outputs"]:
            assert read_video(str(data_root / "out" / out))[0].shape[0] == FRAMES


def server_queue(comfy) -> set:
    queue = comfy.get("/queue").json()
    return {item[1] for item in queue["queue_running"] + queue["queue_pending"]}


def test_queue_cli_ctrl_c_leaves_nothing_of_ours_queued(comfy, data_root):
    proc = subprocess.Popen(queue_cmd(comfy, data_root, "1,2,3,4,5,6", steps=40), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **own_group())
    deadline = time.monotonic() + 120
    while not any(j["status"] == "queued" for j in manifest(data_root)) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(2)  # into the first job's sampling
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    ours = {j["prompt_id"] for j in manifest(data_root) if j["prompt_id"]}
    assert ours, "no job was queued before Ctrl-C"
    deadline = time.monotonic() + 60  # the running one stops at its next step
    while ours & server_queue(comfy) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ours & server_queue(comfy)
    cancelled = [j["prompt_id"] for j in manifest(data_root) if j["status"] == "cancelled"]
    assert cancelled
    for pid in cancelled:  # deleted before it ran, or stopped while running: never a result
        entry = comfy.get(f"/history/{pid}").json().get(pid)
        assert entry is None or entry["status"]["status_str"] == "error"


def test_queue_cli_runs_a_wan_job(comfy, data_root):
    """The Wan workflow through python -m comfyui_dwm.queue: videos into LoadVideo, the prompt into the text
    node (the test's stand-in for CLIPTextEncode, so named with --target), the seed into KSampler."""
    wf = runnable(api_workflow("dwm_wan_basic"))
    (data_root / "wan.json").write_text(json.dumps(wf))
    prompt = next(nid for nid, n in wf.items() if n["_meta"]["title"] == "prompt")
    cmd = [sys.executable, "-m", "comfyui_dwm.queue", "--server", comfy.url, "--workflow", str(data_root / "wan.json"),
           "--data-root", str(data_root / "data"), "--list", str(data_root / "ids.txt"), "--seeds", "5",
           "--out", str(data_root / "out"), "--target", f"prompt={prompt}.text"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-2000:]
    [job] = manifest(data_root)
    assert (job["seed"], job["status"], len(job["outputs"])) == (5, "done", 2)
    for out in job["outputs"]:
        assert read_video(str(data_root / "out" / out))[0].shape[0] == FRAMES


def node_of(wf: dict, cls: str) -> str:
    return next(nid for nid, n in wf.items() if n["class_type"] == cls)


def wan_run(seed: int, steps: int = 2, size=(64, 48)) -> dict:
    """dwm_wan_basic on the tiny model; a new seed makes the sampler (and so the model load) run again."""
    wf = runnable(api_workflow("dwm_wan_basic"))
    wf[node_of(wf, "KSampler")]["inputs"].update(seed=seed, steps=steps)
    wf[node_of(wf, "DWMWanSceneConditioning")]["inputs"].update(width=size[0], height=size[1])
    return wf


def test_cancel_stops_a_wan_run_within_one_step(comfy, example_inputs):
    """POST /interrupt during sampling: the run ends interrupted in KSampler, at most one step later."""
    websocket = pytest.importorskip("websocket")
    wf, client = wan_run(seed=11, steps=CANCEL_STEPS, size=CANCEL_SIZE), uuid.uuid4().hex
    sampler = node_of(wf, "KSampler")
    ws = websocket.create_connection(f"ws{comfy.url[4:]}/ws?clientId={client}", timeout=RUN_TIMEOUT_S)
    try:
        res = comfy.post("/prompt", {"prompt": wf, "client_id": client})
        assert res.status_code == 200, res.text
        pid, steps, asked_at = res.json()["prompt_id"], [], None
        while True:
            raw = ws.recv()
            msg = json.loads(raw) if isinstance(raw, str) else {}
            data = msg.get("data") or {}
            if data.get("prompt_id") != pid:
                continue
            if msg["type"] == "progress" and data["node"] == sampler:
                steps.append(data["value"])
                if asked_at is None and data["value"] >= 3:
                    asked_at = data["value"]
                    comfy.post("/interrupt", {"prompt_id": pid})
            if msg["type"] in ("execution_interrupted", "execution_error", "execution_success"):
                break
    finally:
        ws.close()
    assert msg["type"] == "execution_interrupted", msg
    assert data["node_type"] == "KSampler"
    assert asked_at is not None and max(steps) <= asked_at + 1, (asked_at, steps[-5:])


def loaded_models(comfy, wf: dict) -> list[dict]:
    """Run wf with the fixture node reporting, after its sampler, what ComfyUI's model management
    holds; rerunning the same wf keeps its cached outputs (and models) and only reports."""
    wf = {**wf, "report": {"class_type": "DWMTestLoadedModels",
                           "inputs": {"after": [node_of(wf, "KSampler"), 0]}}}
    entry = run_prompt(comfy, wf)
    assert entry["status"]["status_str"] == "success", entry["status"]["messages"]
    return entry["outputs"]["report"]["loaded"]


def wan_loaded(comfy, wf: dict) -> list[dict]:
    return [m for m in loaded_models(comfy, wf) if m["model"] == "WAN21"]


def test_unload_models_frees_our_patched_wan_model(comfy, example_inputs):
    """After a Wan run our patched model stays loaded (held by the cached outputs); POST /free
    {unload_models} (the editor's "Unload models") unloads it, and the next run loads it again."""
    wf = wan_run(seed=21)
    ours = wan_loaded(comfy, wf)
    assert ours and ours[0]["patches"] > 0, ours  # the DWM LoRA, as host weight patches
    assert "diffusion_model.patch_embedding" in ours[0]["object_patches"]  # the 52-channel input
    assert comfy.post("/free", {"unload_models": True}).status_code == 200
    deadline = time.monotonic() + 30  # the server acts on it between prompts
    while wan_loaded(comfy, wf) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert wan_loaded(comfy, wf) == []
    assert wan_loaded(comfy, wan_run(seed=22))
