"""The CogVideoX nodes' work without ComfyUI: the plain functions their V3 classes call (sockets,
LoRA handles, VIDEO frame rates, progress, cancel), their fit to the recorded schemas, and imports."""
import inspect
import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conftest import random_checkpoint, random_frames  # noqa: E402
from comfyui_dwm.cogvideox.checkpoint import save_checkpoint_file, save_reference_folder  # noqa: E402
from comfyui_dwm.errors import DWMError  # noqa: E402
from nodes import host  # noqa: E402
from nodes.cogvideox import NODE_FUNCTIONS, files  # noqa: E402
from nodes.cogvideox.sockets import Conditioning, Latents, ModelHandle, Scene  # noqa: E402

RECORDED = ROOT / "workflows" / "schemas" / "dwm_cogvideox_nodes.json"
SMALL = {"width": 64, "height": 64, "num_frames": 9}
FAST = {"steps": 2}
RETURNS = {"DWMModelLoader": ModelHandle, "DWMLoraLoader": ModelHandle, "DWMTextEncode": Conditioning,
           "DWMSceneEncode": Scene, "DWMSampler": Latents}


class Interrupted(Exception):
    """Stands in for the host's InterruptProcessingException."""


def run(node_id, **inputs):
    """Call a node's work as its V3 class does: the given inputs, the function's defaults for the rest.
    The video nodes give (frames, frame rate); their frames are returned."""
    out = NODE_FUNCTIONS[node_id](**inputs)
    if node_id not in RETURNS:
        frames, rate = out
        assert frames.ndim == 4 and frames.shape[-1] == 3 and frames.dtype == torch.float32
        assert 0 <= frames.min() and frames.max() <= 1
        assert isinstance(rate, Fraction) and rate > 0
        return frames
    assert isinstance(out, RETURNS[node_id]), (node_id, type(out))
    return out


@pytest.fixture(scope="module")
def models_dir(tiny_dir, tmp_path_factory):
    """conftest's tiny bases as models/dwm, beside a folder that only looks like a model, and loras/."""
    bases = Path(tiny_dir["1.1"]).parent
    (bases / "not-a-model" / "transformer").mkdir(parents=True, exist_ok=True)
    (bases / "not-a-model" / "transformer" / "config.json").write_text('{"_class_name": "Other"}')
    return {"dwm": bases, "loras": tmp_path_factory.mktemp("loras")}


@pytest.fixture(scope="module", autouse=True)
def host_folders(models_dir):
    """What ComfyUI's folder_paths would answer, pointed at this module's model folder (undone after it)."""
    def roots(folders):
        return [str(models_dir["dwm" if "dwm" in folders else "loras"])]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(host, "model_roots", roots)
        yield


@pytest.fixture(scope="module")
def model():
    return run("DWMModelLoader", model="tiny-v1.1", precision="fp32")


@pytest.fixture(scope="module")
def lora_names(model, models_dir):
    loras = models_dir["loras"]
    save_checkpoint_file(random_checkpoint(model.base, seed=1), str(loras / "dwm_a.safetensors"))
    save_reference_folder(random_checkpoint(model.base, seed=2), str(loras / "runs" / "dwm_b"))
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(loras / "sd.safetensors"))
    return "dwm_a.safetensors", "runs/dwm_b"


@pytest.fixture(scope="module")
def videos():
    return random_frames(12, 72, 80, seed=0), random_frames(12, 72, 80, seed=1)


@pytest.fixture(scope="module")
def cond(model):
    return run("DWMTextEncode", model=model, prompt="open the drawer")


@pytest.fixture(scope="module")
def scene(model, videos):
    return run("DWMSceneEncode", model=model, static_video=videos[0], hand_video=videos[1], **SMALL)


def sample(model, cond, scene, **settings):
    return run("DWMSampler", model=model, conditioning=cond, scene=scene, **{**FAST, **settings}).samples


def _declared(entry):
    """(name, required, options) of a served entry's inputs, in the order the host shows them."""
    return [(name, sec == "required", entry["input"][sec][name][1])
            for sec in ("required", "optional") for name in entry["input_order"].get(sec, [])]


def test_recorded_schemas_fit_the_functions():
    """The recording of the live nodes (kept equal to the host by a host test) against the functions
    their classes call: the same inputs in the same order, with the same defaults."""
    recorded = json.loads(RECORDED.read_text("utf-8"))
    assert set(recorded) == set(NODE_FUNCTIONS)
    for node_id, fn in NODE_FUNCTIONS.items():
        entry, params = recorded[node_id], inspect.signature(fn).parameters
        declared = _declared(entry)
        assert [name for name, _r, _o in declared] == list(params), node_id
        for name, required, opts in declared:
            default = params[name].default
            if "default" in opts:
                assert default == opts["default"], (node_id, name)
            else:
                assert (default is inspect.Parameter.empty) == required, (node_id, name)
        assert entry["category"] == "DWM"


def test_all_ten_nodes_are_documented():
    """Both families' recorded nodes: a display name, a description, a tooltip on every input and output."""
    recorded = {}
    for family in ("cogvideox", "wan"):
        recorded.update(json.loads((RECORDED.parent / f"dwm_{family}_nodes.json").read_text("utf-8")))
    assert len(recorded) == 10
    for node_id, entry in recorded.items():
        assert entry["display_name"].startswith("DWM") and len(entry["description"]) > 40, node_id
        assert all(opts.get("tooltip") for _n, _r, opts in _declared(entry)), node_id
        assert len(entry["output_tooltips"]) == len(entry["output"]) and all(entry["output_tooltips"]), node_id


def test_recorded_schemas_keep_the_first_release_api():
    """Node ids, input names (and which are sockets), output order: what saved workflows refer to."""
    recorded = json.loads(RECORDED.read_text("utf-8"))
    first = {"DWMModelLoader": ["model", "precision", "device"], "DWMLoraLoader": ["model", "lora", "strength"],
             "DWMTextEncode": ["model", "prompt", "negative_prompt"],
             "DWMSceneEncode": ["model", "static_video", "hand_video", "width", "height", "num_frames",
                                "tiled_vae", "seed"],
             "DWMSampler": ["model", "conditioning", "scene", "steps", "cfg", "scheduler", "seed", "batch_size",
                            "dynamic_cfg"],
             "DWMDecode": ["model", "latents", "tiled_vae"],
             "DWMCompare": ["static_video", "hand_video", "output", "ground_truth"]}
    for node_id, names in first.items():
        assert [n for n, _r, _o in _declared(recorded[node_id])][:len(names)] == names
    outputs = {n: recorded[n]["output"][0] for n in first}
    assert outputs == {"DWMModelLoader": "DWM_MODEL", "DWMLoraLoader": "DWM_MODEL", "DWMTextEncode":
                       "DWM_CONDITIONING", "DWMSceneEncode": "DWM_SCENE", "DWMSampler": "DWM_LATENTS",
                       "DWMDecode": "IMAGE", "DWMCompare": "IMAGE"}
    for node_id in ("DWMDecode", "DWMCompare"):
        assert recorded[node_id]["output"] == ["IMAGE", "VIDEO"]
        assert recorded[node_id]["input"]["optional"]["fps"][1]["default"] == 8.0
    for name in ("static_video", "hand_video"):
        assert recorded["DWMSceneEncode"]["input"]["required"][name][0] == "IMAGE,VIDEO"


def test_choices_are_found_by_content(lora_names):
    assert files.base_choices() == ["tiny-v1.1", "tiny-v1.5"]
    assert files.lora_choices() == sorted(lora_names)


def test_every_node_round_trips(model, cond, scene, videos, lora_names):
    assert cond.positive.shape == (1, 226, 32) and cond.negative.shape == (1, 226, 32)
    assert scene.static.shape == (1, 3, 16, 8, 8) and scene.num_frames == 9
    for name in lora_names:
        lora_model = run("DWMLoraLoader", model=model, lora=name)
        assert lora_model.loras[0][1] == 1.0
    latents = run("DWMSampler", model=lora_model, conditioning=cond, scene=scene, **FAST)
    assert latents.samples.shape == (1, 3, 16, 8, 8)
    frames = run("DWMDecode", model=model, latents=latents)
    assert frames.shape == (9, 64, 64, 3)
    side = run("DWMCompare", static_video=videos[0], hand_video=videos[1], output=frames)
    assert side.shape[:2] == (9, 64) and side.shape[2] > 3 * 64
    assert run("DWMCompare", static_video=videos[0], hand_video=videos[1], output=frames,
               ground_truth=videos[0]).shape[2] > side.shape[2]


def test_batch_frames_are_concatenated(model, cond, scene):
    latents = run("DWMSampler", model=model, conditioning=cond, scene=scene, batch_size=2, steps=1)
    single = run("DWMSampler", model=model, conditioning=cond, scene=scene, seed=43, steps=1)
    assert torch.allclose(latents.samples[1], single.samples[0], atol=1e-5)
    frames = run("DWMDecode", model=model, latents=latents)
    assert frames.shape == (18, 64, 64, 3)
    static = random_frames(9, 64, 64, seed=5)
    side = run("DWMCompare", static_video=static, hand_video=static, output=frames)
    assert side.shape[0] == 18 and torch.equal(side[9, :, :64], side[0, :, :64])  # inputs shown per video


def test_nodes_and_headless_pipeline_give_the_same_video(model, cond, scene, videos, lora_names):
    from comfyui_dwm.cogvideox.pipeline import generate
    from comfyui_dwm.cogvideox.sampler import SamplerSettings

    lora_model = run("DWMLoraLoader", model=model, lora=lora_names[0], strength=0.7)
    latents = run("DWMSampler", model=lora_model, conditioning=cond, scene=scene, steps=2, seed=7)
    via_nodes = run("DWMDecode", model=model, latents=latents)
    headless = generate(model.base, videos[0], videos[1], "open the drawer", loras=lora_model.loras,
                        settings=SamplerSettings(steps=2, seed=7), **SMALL)
    torch.testing.assert_close(via_nodes, headless[0], rtol=0, atol=1e-5)


def test_model_loader_caches(model):
    assert run("DWMModelLoader", model="tiny-v1.1", precision="fp32").base is model.base


def test_lora_handles_and_strength(model, cond, scene, lora_names):
    half = run("DWMLoraLoader", model=model, lora=lora_names[0], strength=0.5)
    full = run("DWMLoraLoader", model=model, lora=lora_names[0], strength=1.0)
    off = run("DWMLoraLoader", model=model, lora=lora_names[0], strength=0.0)
    assert model.loras == () and half.base is model.base and full.loras[0][0] is half.loras[0][0]
    stacked = run("DWMLoraLoader", model=half, lora=lora_names[1], strength=1.0)
    assert len(half.loras) == 1 and len(stacked.loras) == 2
    plain = sample(model, cond, scene)
    assert not torch.allclose(sample(half, cond, scene), sample(full, cond, scene))
    assert torch.equal(sample(off, cond, scene), plain)
    assert torch.equal(sample(model, cond, scene), plain)  # the base comes back after a LoRA run


def test_wrong_base_lora_is_refused(lora_names):
    other = run("DWMModelLoader", model="tiny-v1.5", precision="fp32")
    with pytest.raises(DWMError) as err:
        run("DWMLoraLoader", model=other, lora=lora_names[0])
    message = str(err.value)
    assert "dwm_a.safetensors" in message and "V1.1" in message and "V1.5" in message
    assert "\n" not in message


class FakeBar:
    def __init__(self, total, fail_at=None):
        self.total, self.fail_at, self.updates = total, fail_at, []

    def update_absolute(self, value, total=None, preview=None):
        self.updates.append((value, total, preview))
        if value == self.fail_at:
            raise Interrupted


def count_forwards(model):
    calls = []
    handle = model.base.transformer.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


def test_progress_once_per_step_with_preview(model, cond, scene, monkeypatch):
    bars = []
    monkeypatch.setattr(host, "progress_bar", lambda total: bars.append(FakeBar(total)) or bars[-1])
    monkeypatch.setattr(host, "preview_size", lambda: 48)
    sample(model, cond, scene, steps=3)
    (bar,) = bars
    assert bar.total == 3 and [(v, t) for v, t, _ in bar.updates] == [(1, 3), (2, 3), (3, 3)]
    kind, image, size = bar.updates[-1][2]
    assert kind == "JPEG" and isinstance(image, Image.Image) and image.size == (8, 8) and size == 48


def test_cancel_from_progress_hook_stops_within_one_step(model, cond, scene, monkeypatch):
    monkeypatch.setattr(host, "progress_bar", lambda total: FakeBar(total, fail_at=1))
    calls, handle = count_forwards(model)
    try:
        with pytest.raises(Interrupted):
            sample(model, cond, scene, steps=5, cfg=1.0)
    finally:
        handle.remove()
    assert len(calls) == 1


def test_cancel_check_stops_before_next_step(model, cond, scene, monkeypatch):
    checks = []

    def interrupted():
        checks.append(1)
        if len(checks) > 1:
            raise Interrupted

    monkeypatch.setattr(host, "check_interrupted", interrupted)
    calls, handle = count_forwards(model)
    try:
        with pytest.raises(Interrupted):
            sample(model, cond, scene, steps=5, cfg=1.0)
    finally:
        handle.remove()
    assert len(calls) == 1


def test_bad_input_is_one_clear_line(model, videos):
    with pytest.raises(DWMError) as err:
        run("DWMSceneEncode", model=model, static_video=videos[0], hand_video=videos[1],
            width=72, height=64, num_frames=9)
    assert str(err.value).startswith("width: 72") and "\n" not in str(err.value)


def test_a_base_lives_only_as_long_as_its_handles():
    """The loader caches weakly: handles share one base; once the host drops them, it is freed."""
    import gc
    import weakref

    first = run("DWMModelLoader", model="tiny-v1.5", precision="fp32")
    again = run("DWMModelLoader", model="tiny-v1.5", precision="fp32", device="cpu")
    assert again.base is first.base and again.loaded is first.loaded
    other = run("DWMModelLoader", model="tiny-v1.5", precision="bf16")
    assert other.base is not first.base
    bases = [weakref.ref(first.base), weakref.ref(other.base)]
    del first, again, other
    gc.collect()
    assert [ref() for ref in bases] == [None, None]


IMPORT_CHECK = """
import importlib.util, sys
sys.path = [p for p in sys.path if p not in ('', {root!r})]
spec = importlib.util.spec_from_file_location("/opt/custom_nodes/Any-Pack_x_Name", {init!r},
                                              submodule_search_locations=[{root!r}])
pack = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = pack
spec.loader.exec_module(pack)
assert not hasattr(pack, "NODE_CLASS_MAPPINGS") and not hasattr(pack, "comfy_entrypoint")
HOST = {{"comfy", "comfy_api", "comfy_extras", "comfy_execution", "nodes"}}
assert not any(name.split(".")[0] in HOST or name.endswith(".v3") for name in sys.modules)
assert sys.modules["comfyui_dwm"].__file__ == {engine!r} and {root!r} not in sys.path  # the pack's own engine
print("ok")
"""


def test_pack_imports_without_comfyui_under_any_folder_name(tmp_path):
    """Without ComfyUI the pack imports (no host module, no V3 class) and registers nothing."""
    code = IMPORT_CHECK.format(root=str(ROOT), init=str(ROOT / "__init__.py"), engine=str(ROOT / "dwm" / "__init__.py"))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr
    out = subprocess.run([sys.executable, "-c", "import nodes.cogvideox as c, sys; "
                          "assert not any(m.split('.')[0] in ('comfy', 'comfy_api') for m in sys.modules); print(len(c.NODE_FUNCTIONS))"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "7", out.stderr
