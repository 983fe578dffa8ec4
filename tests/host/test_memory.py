"""Memory in a real ComfyUI: "Unload models" / POST /free gives back the RAM of a DWM base (one copy per
base, whatever the precisions loaded), a 1080p phone clip through the shipped workflow's video path
(Load Video -> DWM nodes) is streamed at 8 fps, never decoded whole, and dwm_low_vram's memory mode runs
under the host's model management (unloaded by "Unload models" and run again)."""
import os
import shutil
import time

import psutil
import pytest
import torch

from comfyui_dwm.video_io import read_video

from .conftest import api_workflow, runnable
from .test_host_run import run_prompt, saved_files

pytestmark = pytest.mark.host
BIG = "random-dwm-base"  # models/dwm/<BIG>: a CogVideoX-shaped base of a few hundred MB
GB = 1 << 30
FREE_TRIES = 15


def make_big_base(folder) -> int:
    """The tiny base with a wider, deeper random transformer (diffusers layout); its fp32 size in bytes."""
    from diffusers import CogVideoXTransformer3DModel

    from comfyui_dwm.cogvideox.tiny import make_tiny_model

    make_tiny_model(str(folder))
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=16, attention_head_dim=64, in_channels=33, out_channels=16, time_embed_dim=32,
        text_embed_dim=32, num_layers=6, sample_width=90, sample_height=60, sample_frames=49, patch_size=2,
        use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False)
    shutil.rmtree(folder / "transformer")
    transformer.save_pretrained(str(folder / "transformer"))
    return sum(p.numel() for p in transformer.parameters()) * 4


@pytest.fixture(scope="module")
def big_base(comfy):
    """The base in the server's models/dwm for this module only (the other tests list one base)."""
    folder = comfy.base / "models" / "dwm" / BIG
    size = make_big_base(folder)
    assert size > 250e6
    yield size
    free(comfy)
    shutil.rmtree(folder)


def rss(comfy) -> int:
    return psutil.Process(comfy.proc.pid).memory_info().rss


def free(comfy) -> int:
    """POST /free as "Unload models" + "Free model and node cache" do; the RSS once it has settled.

    The host reads these flags when its worker wakes from waiting for a prompt; a /free that comes while
    it still cleans up after a run is read only after the next prompt. So it is posted again until the
    RSS stops moving (posting it twice does no more than once).
    """
    last = None
    for _ in range(FREE_TRIES):
        assert comfy.post("/free", {"unload_models": True, "free_memory": True}).status_code == 200
        time.sleep(2)
        now = rss(comfy)
        if last is not None and abs(now - last) < 20e6:
            return now
        last = now
    return now


def load_graph(precision: str, static: str, hands: str) -> dict:
    """Load Video x2 -> DWM Model Loader (the big base) -> Text / Scene Encode -> Sampler (1 step): every
    component goes through the host's model management; the fixture node reports what it holds."""
    model = ["3", 0]
    nodes = {"1": ("LoadVideo", {"file": static}), "2": ("LoadVideo", {"file": hands}),
             "3": ("DWMModelLoader", {"model": BIG, "precision": precision, "device": "auto"}),
             "4": ("DWMTextEncode", {"model": model, "prompt": "open the fridge"}),
             "5": ("DWMSceneEncode", {"model": model, "static_video": ["1", 0], "hand_video": ["2", 0], "width": 96,
                                      "height": 64, "num_frames": 9, "tiled_vae": True, "seed": 0}),
             "6": ("DWMSampler", {"model": model, "conditioning": ["4", 0], "scene": ["5", 0], "steps": 1, "cfg": 1.0,
                                  "scheduler": "ddim", "seed": 0, "batch_size": 1, "dynamic_cfg": False}),
             "7": ("DWMTestLoadedModels", {"after": ["6", 0]})}
    return {nid: {"class_type": cls, "inputs": inputs} for nid, (cls, inputs) in nodes.items()}


def run_ok(comfy, wf: dict) -> dict:
    entry = run_prompt(comfy, wf)
    assert entry["status"]["status_str"] == "success", entry["status"]["messages"]
    return entry


@pytest.fixture(scope="module")
def graph(example_inputs):
    return lambda precision: load_graph(precision, example_inputs["static"], example_inputs["hands"])


def test_free_gives_back_the_ram_of_a_loaded_base(comfy, graph, big_base):
    run_ok(comfy, graph("fp32"))  # warm up: code and buffers that stay whatever the model
    baseline = free(comfy)
    entry = run_ok(comfy, graph("fp32"))
    held = [m["model"] for m in entry["outputs"]["7"]["loaded"]]
    assert held.count("DWMComponent") == 3, held  # transformer, VAE, text encoder under the host's care
    loaded = rss(comfy)
    assert loaded - baseline > 0.8 * big_base, (baseline, loaded)
    after = free(comfy)
    assert loaded - after > 0.7 * big_base, (baseline, loaded, after)


HOST_GC_S = 10  # ComfyUI's worker collects garbage at most this often, after a prompt (main.py)


def test_a_second_precision_does_not_keep_the_first(comfy, graph, big_base):
    """fp32 then bf16 of one base: the replaced fp32 copy goes with the host's next garbage collection
    (the worker's, after a prompt, at most every 10 s), not at a restart; /free gives everything back."""
    run_ok(comfy, graph("bf16"))  # warm up: code and buffers that stay whatever the model
    baseline = free(comfy)
    run_ok(comfy, graph("bf16"))
    bf16_only = rss(comfy)
    assert free(comfy) - baseline < 0.2 * big_base
    run_ok(comfy, graph("fp32"))
    run_ok(comfy, graph("bf16"))
    time.sleep(HOST_GC_S + 1)
    again = graph("bf16")
    again["6"]["inputs"]["seed"] = 1  # a new prompt, after which the worker collects
    run_ok(comfy, again)
    time.sleep(2)
    both = rss(comfy)
    assert both - bf16_only < 0.5 * big_base, (baseline, bf16_only, both)
    after = free(comfy)
    assert after - baseline < 0.2 * big_base, (baseline, both, after)


PHONE_FRAMES = 190


def write_phone_clip(path) -> None:
    """1080p at 30 fps, 190 frames (6.3 s): grey levels and a moving bar, cheap to encode."""
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 1920, 1080, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "30"}
        image = np.zeros((1080, 1920, 3), np.uint8)
        for i in range(PHONE_FRAMES):
            image[:] = i
            image[:, i * 10:i * 10 + 8] = 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def peak_reset(pid: int) -> None:
    """Start the kernel's peak-RSS count (VmHWM) from now."""
    with open(f"/proc/{pid}/clear_refs", "w") as fh:
        fh.write("5")


def peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        line = next(l for l in fh if l.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def test_a_1080p_phone_clip_is_streamed_at_8_fps(comfy, example_inputs):
    """dwm_basic as shipped (Load Video -> Scene Encode and Compare) on two 1080p 30 fps clips: 49 frames
    covering 6 s at 8 fps come out, with the warning, and the run's peak RAM stays far below the 9.4 GB the
    two clips take decoded whole as float frames."""
    write_phone_clip(comfy.input / "phone_static.mp4")
    shutil.copy(comfy.input / "phone_static.mp4", comfy.input / "phone_hands.mp4")
    wf = runnable(api_workflow("dwm_basic"))
    loaders = [n for n in wf.values() if n["class_type"] == "LoadVideo"]
    for node, role in zip(loaders, ("static", "hands")):
        node["inputs"]["file"] = f"phone_{role}.mp4"
    for node in wf.values():
        if node["class_type"] == "DWMSceneEncode":
            node["inputs"]["num_frames"] = 49
        if node["class_type"] == "DWMSampler":
            node["inputs"].update(steps=1, cfg=1.0)
    free(comfy)
    before = rss(comfy)
    peak_reset(comfy.proc.pid)
    entry = run_ok(comfy, wf)
    assert peak_rss(comfy.proc.pid) - before < 3 * GB
    videos = [read_video(str(p)) for p in saved_files(comfy, entry)]
    assert [(v.shape[0], fps) for v, fps in videos] == [(49, 8), (49, 8)]  # output and comparison
    log = comfy.log.read_text(errors="replace")
    assert "static_video: resampled 30 fps -> 8 fps, took 49 frames = 6.0 s of 190 (6.3 s), " \
        "scaled 1920x1080 -> 96x64 (centre-cropped)" in log
    for role in ("static", "hands"):
        os.remove(comfy.input / f"phone_{role}.mp4")


def test_low_vram_workflow_survives_unload_models(comfy, example_inputs):
    """dwm_low_vram as shipped (memory_mode 24gb: fp8 weight storage, VAE tiling forced; on a CPU nothing
    is offloaded) runs; "Unload models" then makes the host detach every DWM component (fp8 weights and
    their casting hooks included), and fp8, which shares the 24gb base, runs again to the same video; so
    does fp8+offload, where diffusers' hooks, not the host, move the transformer."""
    wf = runnable(api_workflow("dwm_low_vram"))
    loader = next(n for n in wf.values() if n["class_type"] == "DWMModelLoader")
    assert loader["inputs"]["memory_mode"] == "24gb"
    decode = next(nid for nid, n in wf.items() if n["class_type"] == "DWMDecode")
    wf["report"] = {"class_type": "DWMTestLoadedModels", "inputs": {"after": [decode, 0]}}
    first = run_ok(comfy, wf)
    assert [m["model"] for m in first["outputs"]["report"]["loaded"]].count("DWMComponent") == 3
    assert comfy.post("/free", {"unload_models": True}).status_code == 200
    for _ in range(FREE_TRIES):  # read by the worker when it next wakes
        time.sleep(1)
        held = run_ok(comfy, {"report": {"class_type": "DWMTestLoadedModels", "inputs": {}}})
        if not held["outputs"]["report"]["loaded"]:
            break
    assert held["outputs"]["report"]["loaded"] == []
    runs = [first]
    for mode in ("fp8", "fp8+offload"):  # the same base: the offload hooks take over from the host's patcher
        loader["inputs"]["memory_mode"] = mode
        runs.append(run_ok(comfy, wf))
    videos = [read_video(str(p))[0] for entry in runs for p in saved_files(comfy, entry)]
    assert len(videos) == 3 and videos[0].shape[0] == 9
    assert torch.equal(videos[0], videos[1]) and torch.equal(videos[0], videos[2])
