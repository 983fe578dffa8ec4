"""ComfyUI nodes for Dexterous World Models: thin adapters over the ``dwm`` engine.

The engine sits next to this package; the pack folder is put on ``sys.path`` (appended, so nothing
of the host is shadowed) because ComfyUI imports a pack by file path and never installs it.
"""

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

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
