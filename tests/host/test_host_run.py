"""Against a real ComfyUI: our node schemas as served, every API workflow run to the end, and the
batch CLI (python -m dwm.queue) including Ctrl-C in the middle of a batch."""
import json
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

import nodes
from dwm.video_io import read_video

from dwm.workflow_schema import kind

from .conftest import FRAMES, LORA_NAME, MODEL_NAME, REPO, api_workflow, own_group, small_settings

pytestmark = pytest.mark.host
WORKFLOWS = sorted(p.stem for p in (REPO / "workflows" / "api").glob("*.json"))
RUN_TIMEOUT_S = 600


def test_object_info_lists_our_nodes_as_defined(comfy):
    """Same inputs, types and outputs as the definitions; the model lists hold the files we placed."""
    info = comfy.get("/object_info").json()
    for name, cls in nodes.NODE_CLASS_MAPPINGS.items():
        served, declared = info[name], cls.INPUT_TYPES()
        for sec in ("required", "optional"):
            got = {k: kind(v) for k, v in served["input"].get(sec, {}).items()}
            assert got == {k: kind(v) for k, v in declared.get(sec, {}).items()}, f"{name} {sec}"
        assert served["output"] == list(cls.RETURN_TYPES)
        assert served["display_name"] == nodes.NODE_DISPLAY_NAME_MAPPINGS[name]
    assert info["DWMModelLoader"]["input"]["required"]["model"][0] == [MODEL_NAME]
    assert info["DWMLoraLoader"]["input"]["required"]["lora"][0] == [LORA_NAME]


def run_prompt(comfy, wf: dict) -> dict:
    """Queue a prompt and wait for its history entry."""
    res = comfy.post("/prompt", {"prompt": wf, "client_id": uuid.uuid4().hex})
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
    wf = api_workflow(name)
    if any(n["class_type"].startswith("VHS_") for n in wf.values()) and "VHS_LoadVideo" not in \
            comfy.get("/object_info").json():
        pytest.skip("VideoHelperSuite is not in the checkout's custom_nodes")
    for nid, inp, value in small_settings(wf):
        wf[nid]["inputs"][inp] = value
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
    return [sys.executable, "-m", "dwm.queue", "--server", comfy.url, "--workflow",
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
