"""Test-only nodes for the host tests; linked into the TEST server's custom_nodes, never shipped.

- DWMTestTextConditioning stands in for CLIPLoader + CLIPTextEncode in the Wan workflows: the host's
  CLIPLoader only loads a full-size umT5-XXL, so a tiny model has no text encoder there. It gives a
  CONDITIONING of the shape umT5 gives ([1, L, 4096], L = the word count), seeded from the text.
- DWMTestLoadedModels reports what ComfyUI's model management holds right now (it always re-runs).
  Put it in the same prompt as the graph under test, after its sampler: a prompt of another graph
  would make the host drop that graph's cached outputs, and with them the models they hold.
"""

import zlib

import torch

import comfy.model_management as mm

TEXT_WIDTH = 4096  # umT5-XXL's width, which ComfyUI's Wan models expect


class DWMTestTextConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"multiline": True})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "testing"

    def encode(self, text):
        tokens = max(1, min(len(text.split()), 512))
        g = torch.Generator().manual_seed(zlib.crc32(text.encode("utf-8")))
        return ([[torch.randn(1, tokens, TEXT_WIDTH, generator=g) * 0.1, {}]],)


class DWMTestLoadedModels:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}, "optional": {"after": ("*", {"tooltip": "Any output to run after."})}}

    @classmethod
    def IS_CHANGED(cls, **_inputs):
        return float("nan")  # never cached: every run reports the state of that moment

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "report"
    CATEGORY = "testing"

    def report(self, after=None):
        loaded = []
        for lm in mm.current_loaded_models:
            patcher = lm.model  # held by a weak reference: None once its owner is gone
            if patcher is None:
                continue
            loaded.append({"model": type(patcher.model).__name__, "patches": len(patcher.patches),
                           "object_patches": sorted(patcher.object_patches),
                           "loaded_bytes": lm.model_loaded_memory()})
        return {"ui": {"loaded": loaded}}


NODE_CLASS_MAPPINGS = {"DWMTestTextConditioning": DWMTestTextConditioning,
                       "DWMTestLoadedModels": DWMTestLoadedModels}
