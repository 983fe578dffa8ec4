"""A DWM-Wan release on the host's own Wan model: a widened patch embedding plus host LoRA patches.

The host model stays stock (its loader detects the 36-channel Wan 2.1 i2v base; a merged 52-channel
model would not be detected). A clone gets:

* an object patch replacing ``diffusion_model.patch_embedding`` by a 52-channel Conv3d holding
  ``blend_patch_embedding(base, release, strength)``. It is a ``comfy.ops.manual_cast`` Conv3d, so
  at each call its fp32 weights are cast to the input's device and dtype (the host calls it on fp32
  input): it works whether the host loaded the model fully, partially (lowvram) or in fp8;
* the LoRA as host weight patches (``comfy.lora``; scale alpha / rank x strength), so it merges,
  offloads and chains with core LoRA loaders like any other LoRA.

Changing the strength builds a new clone from the same base: the base is never reloaded.
"""

from __future__ import annotations

import os
import weakref

import comfy.lora
import comfy.model_base
import comfy.ops
import torch
from comfy.quant_ops import QuantizedTensor
from comfyui_dwm.errors import DWMError
from comfyui_dwm.wan.checkpoint import NON_LORA_FILE, WAN_LORA_FILE, WanRelease, blend_patch_embedding, load_wan_release

PATCH_EMBEDDING = "diffusion_model.patch_embedding"
_FIX_MODEL = "load Wan2.1-Fun InP with the DWM-Wan Model Loader (or a Fun InP file with Load Diffusion Model)"
# (path, file mtimes) -> release, weakly: the patched models hold their release (an attachment), so it
# lives as long as the host keeps one of them, and "Free model and node cache" frees it.
_releases: weakref.WeakValueDictionary[tuple[str, tuple], WanRelease] = weakref.WeakValueDictionary()


def get_release(path: str) -> WanRelease:
    """The release at ``path``, read once per change of its files (strength sweeps reuse it)."""
    stamp = tuple(os.path.getmtime(os.path.join(path, f)) if os.path.isfile(os.path.join(path, f)) else None
                  for f in (WAN_LORA_FILE, NON_LORA_FILE))
    release = _releases.get((path, stamp))
    if release is None:
        release = _releases[(path, stamp)] = load_wan_release(path)
    return release


def _dense(weight: torch.Tensor) -> torch.Tensor:
    if isinstance(weight, QuantizedTensor):
        weight = weight.dequantize()
    return weight.detach().to("cpu", torch.float32)


def base_patch_embedding(model) -> tuple[torch.nn.Module, dict]:
    """The model's own patch embedding module and its weights in fp32 on the CPU; DWMError if not Wan i2v."""
    if not isinstance(model.model, comfy.model_base.WAN21):
        raise DWMError("model", f"the model is a {type(model.model).__name__}, not a Wan 2.1 model", _FIX_MODEL)
    conv = model.get_model_object(PATCH_EMBEDDING)
    return conv, {"weight": _dense(conv.weight), "bias": _dense(conv.bias)}


def widened_conv(like: torch.nn.Module, weights: dict) -> torch.nn.Module:
    """A host Conv3d (casting its weights at each call) with ``like``'s geometry and the given weights."""
    weight = weights["weight"]
    conv = comfy.ops.manual_cast.Conv3d(weight.shape[1], weight.shape[0], kernel_size=like.kernel_size,
                                        stride=like.stride, padding=like.padding, dilation=like.dilation,
                                        bias="bias" in weights, device="cpu", dtype=torch.float32)
    conv.weight = torch.nn.Parameter(weight, requires_grad=False)
    if "bias" in weights:
        conv.bias = torch.nn.Parameter(weights["bias"], requires_grad=False)
    return conv


def lora_patches(model, release: WanRelease) -> dict:
    """Host patches for every LoRA module of the release; DWMError if one has no place in the model."""
    state = {}
    for module, (down, up, alpha) in release.lora.items():
        key = f"diffusion_model.{module}"
        try:
            weight = model.get_model_object(key).weight
        except AttributeError:
            weight = None
        if weight is None or tuple(weight.shape) != (up.shape[0], down.shape[1]):
            have = "no such module" if weight is None else f"weight {list(weight.shape)}"
            raise DWMError("lora_name", f"{release.source}: {module} needs [{up.shape[0]}, {down.shape[1]}] "
                           f"but the model has {have}",
                           "load the base model this release was trained on (e.g. Wan2.1-Fun-14B-InP for "
                           "DWM-Wan2.1-Fun-14b-LoRA)")
        state.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                      f"{key}.alpha": torch.tensor(alpha)})
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    patches = comfy.lora.load_lora(state, key_map, log_missing=False)
    if len(patches) != len(release.lora):
        raise DWMError("lora_name", f"{release.source}: the host mapped {len(patches)} of {len(release.lora)} "
                       "LoRA modules", "report this with the model and release used")
    return patches


def apply_release(model, release: WanRelease, strength: float):
    """A clone of ``model`` running the release at ``strength`` (0 gives the base back exactly)."""
    conv, base = base_patch_embedding(model)
    if base["weight"].ndim == 5 and base["weight"].shape[1] >= release.in_channels:
        raise DWMError("model", f"the model's patch embedding already takes {base['weight'].shape[1]} channels "
                       "(a DWM-Wan LoRA Loader is already in the chain)",
                       "use one DWM-Wan LoRA Loader per model; chain other LoRAs with LoraLoaderModelOnly")
    widened = widened_conv(conv, blend_patch_embedding(base, release, strength))
    patches = lora_patches(model, release)
    clone = model.clone()
    clone.add_object_patch(PATCH_EMBEDDING, widened)
    clone.add_patches(patches, strength)
    clone.set_attachments("dwm_release", release)  # keeps get_release's weak cache entry alive
    return clone
