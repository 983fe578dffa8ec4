"""ComfyUI nodes for Dexterous World Models: thin adapters over the ``dwm`` engine.

The engine sits next to this package; the pack folder is put on ``sys.path`` (appended, so nothing
of the host is shadowed) because ComfyUI imports a pack by file path and never installs it.
"""

import importlib.util
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

from .cogvideox.conditioning import DWMSceneEncode, DWMTextEncode  # noqa: E402
from .cogvideox.loaders import DWMLoraLoader, DWMModelLoader  # noqa: E402
from .cogvideox.sampling import DWMSampler  # noqa: E402
from .cogvideox.video import DWMCompare, DWMDecode  # noqa: E402

NODE_CLASS_MAPPINGS = {cls.__name__: cls for cls in (
    DWMModelLoader, DWMLoraLoader, DWMTextEncode, DWMSceneEncode, DWMSampler, DWMDecode, DWMCompare)}

NODE_DISPLAY_NAME_MAPPINGS = {
    "DWMModelLoader": "DWM Model Loader",
    "DWMLoraLoader": "DWM LoRA Loader",
    "DWMTextEncode": "DWM Text Encode",
    "DWMSceneEncode": "DWM Scene Encode (static + hands)",
    "DWMSampler": "DWM Sampler",
    "DWMDecode": "DWM Decode",
    "DWMCompare": "DWM Compare (side by side)",
}

# The Wan nodes use the host's V3 schema (comfy_api.latest), so they register only inside a ComfyUI that
# has it; the host serves V3 classes listed here (it ignores comfy_entrypoint when NODE_CLASS_MAPPINGS exists).
if importlib.util.find_spec("comfy_api") is not None and importlib.util.find_spec("comfy_api.latest") is not None:
    from .wan import WAN_DISPLAY_NAMES, WAN_NODES

    NODE_CLASS_MAPPINGS.update({cls.__name__: cls for cls in WAN_NODES})
    NODE_DISPLAY_NAME_MAPPINGS.update(WAN_DISPLAY_NAMES)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
