"""A real ComfyUI server for the host tests, started once per session in a throwaway base folder.

COMFYUI_DIR names a ComfyUI checkout and COMFYUI_PYTHON its interpreter; without them every test
here is skipped. The server gets its own --base-directory (custom_nodes, models, input, output,
user), so runs never touch the checkout's folders: this pack, the checkout's VideoHelperSuite and
our test-only fixture nodes (tests/host/fixture_nodes) are linked into it, and tiny random models
(CogVideoX and Wan, with a DWM LoRA for each) are written into its models/.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[2]
MODEL_NAME = "tiny-dwm-v1.1"
LORA_NAME = "tiny_dwm_lora.safetensors"
VHS = "ComfyUI-VideoHelperSuite"
FIXTURE_NODES = "dwm-test-fixture-nodes"
WAN_MODEL = "tiny-wan21-fun-inp"  # folder in models/diffusion_models/
WAN_LORA = "tiny-dwm-wan-release"  # release folder in models/loras/
WAN_VAE = "tiny_wan_2.1_vae.pth"  # models/vae/
LIGHTX2V = "tiny_lightx2v_lora.safetensors"  # a LightX2V-format LoRA for the tiny Wan, models/loras/
START_TIMEOUT_S = 240
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_models(models: Path) -> None:
    """The tiny base through the CLI users run, and a LoRA that fits it (random, non-zero)."""
    base_dir = models / "dwm" / MODEL_NAME
    subprocess.run([sys.executable, "-m", "comfyui_dwm", "tiny-model", "--out", str(base_dir)],
                   cwd=REPO, check=True, capture_output=True)
    spec = importlib.util.spec_from_file_location("dwm_test_helpers", REPO / "tests" / "conftest.py")
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    from comfyui_dwm.cogvideox.checkpoint import save_checkpoint_file
    from comfyui_dwm.cogvideox.model import load_base

    (models / "loras").mkdir(parents=True)
    base = load_base(str(base_dir), "fp32")
    save_checkpoint_file(helpers.random_checkpoint(base), str(models / "loras" / LORA_NAME))
    make_wan_models(models)


def make_wan_models(models: Path) -> None:
    """The tiny Wan base and a release that fits it, both through the CLI users run; its VAE where
    VAELoader looks; and a LightX2V-style LoRA (``diffusion_model.`` keys) for the core LoRA loader."""
    wan = models / "diffusion_models" / WAN_MODEL
    subprocess.run([sys.executable, "-m", "comfyui_dwm", "tiny-model", "--family", "wan", "--out", str(wan),
                    "--release", str(models / "loras" / WAN_LORA)], cwd=REPO, check=True, capture_output=True)
    (models / "vae").mkdir()
    shutil.copy(wan / "Wan2.1_VAE.pth", models / "vae" / WAN_VAE)
    g, lora = torch.Generator().manual_seed(3), {}
    for name, weight in load_file(str(wan / "diffusion_pytorch_model.safetensors")).items():
        if name.startswith("blocks.") and name.endswith(".weight") and weight.dim() == 2:
            key = "diffusion_model." + name[:-len(".weight")]
            lora[key + ".lora_down.weight"] = torch.randn(4, weight.shape[1], generator=g) * 0.05
            lora[key + ".lora_up.weight"] = torch.randn(weight.shape[0], 4, generator=g) * 0.05
            lora[key + ".alpha"] = torch.tensor(4.0)
    save_file(lora, str(models / "loras" / LIGHTX2V))


def own_group() -> dict:
    """Popen arguments for a child in its own session that takes SIGINT as Ctrl-C, even when this
    pytest runs as a background job (whose SIGINT is ignored, and that would be inherited)."""
    return {"start_new_session": True,
            "preexec_fn": lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)}


class Server:
    """Base URL, folders and the log of the running server."""

    def __init__(self, base: Path, port: int, proc: subprocess.Popen, log: Path):
        self.base, self.proc, self.log = base, proc, log
        self.url = f"http://127.0.0.1:{port}"
        self.input = base / "input"
        self.output = base / "output"

    def get(self, path: str, **params) -> requests.Response:
        r = requests.get(self.url + path, params=params, timeout=60)
        r.raise_for_status()
        return r

    def post(self, path: str, body: dict) -> requests.Response:
        return requests.post(self.url + path, json=body, timeout=60)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if requests.get(self.url + "/object_info/DWMSampler", timeout=5).ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(1)
        raise RuntimeError(f"ComfyUI did not answer in {START_TIMEOUT_S}s:\n{self.log.read_text()[-3000:]}")


def _host() -> tuple[Path, str]:
    comfy, python = os.environ.get("COMFYUI_DIR"), os.environ.get("COMFYUI_PYTHON")
    if not comfy or not python:
        pytest.skip("host tests need COMFYUI_DIR (a ComfyUI checkout) and COMFYUI_PYTHON (its interpreter)")
    if not (Path(comfy) / "main.py").is_file():
        pytest.skip(f"COMFYUI_DIR={comfy} has no main.py")
    return Path(comfy), python


def start_server(base: Path, models: Path | None = None) -> Server:
    """A running server in the empty folder ``base``; ``models`` is another server's models/ to share
    (else the tiny models are written). Stop it with ``stop()``."""
    checkout, python = _host()
    nodes_dir = base / "custom_nodes"
    nodes_dir.mkdir()
    (nodes_dir / "ComfyUI-DWM").symlink_to(REPO, target_is_directory=True)
    if (checkout / "custom_nodes" / VHS).is_dir():
        (nodes_dir / VHS).symlink_to(checkout / "custom_nodes" / VHS, target_is_directory=True)
    (nodes_dir / FIXTURE_NODES).symlink_to(REPO / "tests" / "host" / "fixture_nodes", target_is_directory=True)
    if models:
        (base / "models").symlink_to(models, target_is_directory=True)
    else:
        make_models(base / "models")
    for sub in ("input", "output", "user/default"):
        (base / sub).mkdir(parents=True)
    # A new user gets the template browser on first load; mark the tour done so no dialog hides the
    # graph, and hide the minimap, which would cover part of the screenshot.
    settings = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False}
    (base / "user" / "default" / "comfy.settings.json").write_text(json.dumps(settings))
    port = free_port()
    log = base / "comfyui.log"
    cmd = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--base-directory", str(base), "--disable-auto-launch"]
    # glibc raises its mmap threshold after large frees and then keeps freed tensors in the heap; a fixed
    # threshold returns them to the system at once, so RSS (tests/host/test_memory.py) shows live memory.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=checkout, stdout=fh, stderr=subprocess.STDOUT, env=env, **own_group())
    server = Server(base, port, proc, log)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    """The running server; stopped (and its folders removed by pytest's tmp cleanup) at session end."""
    server = start_server(tmp_path_factory.mktemp("comfy_base"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def has_vhs(comfy) -> bool:
    return "VHS_LoadVideo" in comfy.get("/object_info/VHS_LoadVideo").json()


@pytest.fixture(scope="session")
def example_inputs(comfy) -> dict[str, str]:
    """The bundled sample copied into the server's input folder under the names the workflows use."""
    names = {"static": "dwm_example_static.mp4", "hands": "dwm_example_hands.mp4",
             "ground_truth": "dwm_example_ground_truth.mp4"}
    for src, name in names.items():
        shutil.copy(REPO / "examples" / "00055" / f"{src}.mp4", comfy.input / name)
    return names


def api_workflow(name: str) -> dict:
    return json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text(encoding="utf-8"))


# Inputs that make a run fast on the CPU with the tiny models: (class_type, input) -> value.
SMALL = {("DWMModelLoader", "model"): MODEL_NAME, ("DWMModelLoader", "precision"): "fp32",
         ("DWMLoraLoader", "lora"): LORA_NAME, ("DWMSceneEncode", "width"): 96,
         ("DWMSceneEncode", "height"): 64, ("DWMSceneEncode", "num_frames"): 9, ("DWMSampler", "steps"): 2,
         ("DWMWanModelLoader", "model_name"): WAN_MODEL, ("DWMWanLoraLoader", "lora_name"): WAN_LORA,
         ("LoraLoaderModelOnly", "lora_name"): LIGHTX2V, ("VAELoader", "vae_name"): WAN_VAE,
         ("DWMWanSceneConditioning", "width"): 64, ("DWMWanSceneConditioning", "height"): 48,
         ("DWMWanSceneConditioning", "length"): 9, ("KSampler", "steps"): 2}
FRAMES = 9


def small_settings(wf: dict) -> list[tuple[str, str, object]]:
    """(node id, input, value) for every input of SMALL present in the workflow."""
    return [(nid, inp, value) for nid, node in wf.items() for (cls, inp), value in SMALL.items()
            if node["class_type"] == cls]


def stub_text_encoder(wf: dict) -> dict:
    """The workflow with each CLIPTextEncode replaced by the fixture node (same id, title and text)
    and the CLIPLoader dropped: no tiny umT5 loads through the host's CLIPLoader."""
    out = {}
    for nid, node in wf.items():
        if node["class_type"] == "CLIPTextEncode":
            node = {**node, "class_type": "DWMTestTextConditioning", "inputs": {"text": node["inputs"]["text"]}}
        if node["class_type"] != "CLIPLoader":
            out[nid] = node
    return out


def runnable(wf: dict) -> dict:
    """A shipped API workflow made small and runnable on the test server."""
    wf = stub_text_encoder(json.loads(json.dumps(wf)))
    for nid, inp, value in small_settings(wf):
        wf[nid]["inputs"][inp] = value
    return wf
