"""The CogVideoX nodes' memory modes and speed options without ComfyUI (the plain functions their V3
classes call): each mode runs and stays close to "none", caching off is the exact loop, a cache fits any
batch, out of memory is one line naming memory_mode; and who moves what under the host (a fake one)."""
from types import SimpleNamespace

import pytest
import torch
from comfyui_dwm.cogvideox import memory
from comfyui_dwm.errors import DWMError
from test_nodes import SMALL, host_folders, lora_names, model, models_dir, run, videos  # noqa: F401 (fixtures)

from nodes import host
from nodes.cogvideox import placement

STEPS = 3


def generate(videos, mode="none", lora=None, tiled_vae=False, **sampler):  # noqa: F811 (fixtures)
    """Loader (+ LoRA) -> text -> scene -> sampler in ``mode``: the handle and its latents."""
    handle = run("DWMModelLoader", model="tiny-v1.1", precision="fp32", memory_mode=mode)
    if lora:
        handle = run("DWMLoraLoader", model=handle, lora=lora, strength=0.8)
    cond = run("DWMTextEncode", model=handle, prompt="open the drawer")
    scene = run("DWMSceneEncode", model=handle, static_video=videos[0], hand_video=videos[1], tiled_vae=tiled_vae,
                **SMALL)
    return handle, run("DWMSampler", model=handle, conditioning=cond, scene=scene, **{"steps": STEPS, **sampler})


def drift(a, b) -> float:
    return float((a.samples - b.samples).norm() / b.samples.norm())


def test_memory_modes_run_close_to_none(videos, lora_names):  # noqa: F811 (fixtures)
    """fp8 and 24gb (fp8 + VAE tiling on a CPU) with a LoRA added after the cast: close to "none", on a base
    of their own (the fp8 cast is lossy); offload is exact. "none" afterwards is still the exact loop."""
    plain, reference = generate(videos, lora=lora_names[0])
    assert memory.memory_state(plain.base) is None and not plain.base.vae.use_tiling
    for mode in ("fp8", "24gb", "offload"):
        handle, latents = generate(videos, mode, lora=lora_names[0])
        assert memory.memory_state(handle.base).mode == mode
        if mode == "offload":
            assert handle.base is plain.base and torch.equal(latents.samples, reference.samples)
        else:
            assert handle.base is not plain.base and 0 < drift(latents, reference) < 0.02, mode
        assert handle.base.vae.use_tiling == (mode == "24gb")  # tiled_vae=False, forced by 24gb only
    again, latents = generate(videos, lora=lora_names[0])
    assert memory.memory_state(again.base) is None and torch.equal(latents.samples, reference.samples)


def test_caching_off_is_the_exact_loop_and_a_cache_fits_any_batch(videos):  # noqa: F811 (fixtures)
    """Each cache runs with batch 1 then 2 (its state reset between runs) and is removed after; then the
    plain loop gives exactly what it gave before any cache. A dispatcher attention backend is close."""
    handle, reference = generate(videos, steps=6)
    for cache in ("first-block", "taylorseer", "pab"):
        for batch in (1, 2):
            _h, latents = generate(videos, steps=6, cache=cache, batch_size=batch)
            assert latents.samples.shape[0] == batch and torch.isfinite(latents.samples).all()
            assert not handle.base.transformer.is_cache_enabled
    _h, native = generate(videos, steps=6, attention="native")
    torch.testing.assert_close(native.samples, reference.samples, rtol=0, atol=1e-4)
    _h, latents = generate(videos, steps=6, cache="none")
    assert torch.equal(latents.samples, reference.samples)


def test_out_of_memory_is_one_line_naming_memory_mode(videos, monkeypatch):  # noqa: F811 (fixtures)
    handle, latents = generate(videos)

    def out_of_memory(*_args, **_kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore details")

    monkeypatch.setattr("nodes.cogvideox.video.decode_latents", out_of_memory)
    with pytest.raises(DWMError) as err:
        run("DWMDecode", model=handle, latents=latents)
    message = str(err.value)
    assert "memory_mode" in message and "'24gb'" in message and "Tried to allocate" in message
    assert "\n" not in message
    with pytest.raises(DWMError, match="memory_mode"):
        run("DWMModelLoader", model="tiny-v1.1", precision="fp32", memory_mode="12gb")


class FakePatcher:
    def __init__(self, holder, load_device, offload_device):
        self.model, self.load_device, self.offload_device = holder, load_device, offload_device


def test_one_mover_under_a_host(monkeypatch):
    """Under offload the host gets a transformer patcher that loads to the CPU only (it evicts a device
    copy but never moves the weights: diffusers' hooks do); the others keep the host's devices."""
    gpu, cpu = torch.device("cuda"), torch.device("cpu")  # devices named only: nothing is moved to cuda
    loads = []
    fake_mm = SimpleNamespace(
        get_torch_device=lambda: gpu, unet_offload_device=lambda: cpu, vae_device=lambda: gpu,
        vae_offload_device=lambda: cpu, text_encoder_device=lambda: gpu, text_encoder_offload_device=lambda: cpu,
        load_models_gpu=lambda patchers, force_full_load: loads.append(patchers), soft_empty_cache=lambda: None)
    monkeypatch.setattr(host, "mm", fake_mm)
    monkeypatch.setattr(host, "comfy", SimpleNamespace(model_patcher=SimpleNamespace(ModelPatcher=FakePatcher)),
                        raising=False)
    handle = run("DWMModelLoader", model="tiny-v1.1", precision="bf16", memory_mode="offload")  # a fresh base
    with placement.placed(handle, "vae") as plan:
        assert plan.offload and not plan.text_offload
    patchers = {p.model: p for p in loads[-1]}
    transformer, vae = (patchers[handle.loaded.holders[n]] for n in ("transformer", "vae"))
    assert (transformer.load_device, transformer.offload_device) == (cpu, cpu)
    assert (vae.load_device, vae.offload_device) == (gpu, cpu)
