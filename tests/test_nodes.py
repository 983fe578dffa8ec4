"""The ComfyUI nodes without ComfyUI: sockets round-trip, LoRA handles, progress, cancel, imports."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import nodes  # noqa: E402
from conftest import random_checkpoint, random_frames  # noqa: E402
from dwm.cogvideox.checkpoint import save_checkpoint_file, save_reference_folder  # noqa: E402
from dwm.errors import DWMError  # noqa: E402
from dwm.cogvideox.scene import SceneLatents  # noqa: E402
from nodes import host  # noqa: E402
from nodes.cogvideox.sockets import Conditioning, Latents, ModelHandle  # noqa: E402

NODES = nodes.NODE_CLASS_MAPPINGS
SMALL = {"width": 64, "height": 64, "num_frames": 9}
FAST = {"steps": 2}
SOCKET_CLASSES = {"DWM_MODEL": ModelHandle, "DWM_CONDITIONING": Conditioning, "DWM_SCENE": SceneLatents,
                  "DWM_LATENTS": Latents}


class Interrupted(Exception):
    """Stands in for the host's InterruptProcessingException."""


def run(node_id, **inputs):
    """Call a node the way the host does: widget defaults from INPUT_TYPES, then the given inputs."""
    cls = NODES[node_id]
    spec = cls.INPUT_TYPES()
    kwargs = {}
    for section in ("required", "optional"):
        for name, (kind, *opts) in spec.get(section, {}).items():
            opts = opts[0] if opts else {}
            if name in inputs:
                kwargs[name] = inputs[name]
            elif "default" in opts:
                kwargs[name] = opts["default"]
            elif isinstance(kind, list):
                kwargs[name] = kind[0]
            elif section == "required":
                raise AssertionError(f"{node_id}.{name} ({kind}) needs an upstream value")
    outputs = getattr(cls(), cls.FUNCTION)(**kwargs)
    assert isinstance(outputs, tuple) and len(outputs) == len(cls.RETURN_TYPES)
    for value, kind in zip(outputs, cls.RETURN_TYPES):
        if kind == "IMAGE":
            assert value.ndim == 4 and value.shape[-1] == 3 and value.dtype == torch.float32
            assert 0 <= value.min() and value.max() <= 1
        else:
            assert isinstance(value, SOCKET_CLASSES[kind]), (node_id, kind, type(value))
    return outputs[0]


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


def test_registration():
    assert set(NODES) == {"DWMModelLoader", "DWMLoraLoader", "DWMTextEncode", "DWMSceneEncode",
                          "DWMSampler", "DWMDecode", "DWMCompare"}
    assert set(nodes.NODE_DISPLAY_NAME_MAPPINGS) == set(NODES)
    for cls in NODES.values():
        assert cls.CATEGORY == "DWM" and callable(getattr(cls, cls.FUNCTION))


def test_choices_are_found_by_content(lora_names):
    assert NODES["DWMModelLoader"].INPUT_TYPES()["required"]["model"][0] == ["tiny-v1.1", "tiny-v1.5"]
    assert NODES["DWMLoraLoader"].INPUT_TYPES()["required"]["lora"][0] == sorted(lora_names)


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
    from dwm.cogvideox.pipeline import generate
    from dwm.cogvideox.sampler import SamplerSettings

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


IMPORT_CHECK = """
import importlib.util, sys
sys.path = [p for p in sys.path if p not in ('', {root!r})]
spec = importlib.util.spec_from_file_location("/opt/custom_nodes/Any-Pack_x_Name", {init!r},
                                              submodule_search_locations=[{root!r}])
pack = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = pack
spec.loader.exec_module(pack)
assert len(pack.NODE_CLASS_MAPPINGS) == 7 and "comfy" not in sys.modules
assert not any(name == "nodes" for name in sys.modules)
print("ok")
"""


def test_pack_imports_without_comfyui_under_any_folder_name(tmp_path):
    code = IMPORT_CHECK.format(root=str(ROOT), init=str(ROOT / "__init__.py"))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr
    out = subprocess.run([sys.executable, "-c", "import nodes, sys; assert 'comfy' not in sys.modules; "
                          "print(len(nodes.NODE_CLASS_MAPPINGS))"], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "7", out.stderr
