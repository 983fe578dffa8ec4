"""DWM-Wan nodes (V3 schema) on the host's native Wan 2.1 model: loaders and the scene conditioning.

Sampling uses core nodes: ModelSamplingSD3 (shift 5) -> KSampler (euler, normal, 50 steps, cfg 6).
Importing this package needs ComfyUI (``comfy_api``); ``nodes/__init__.py`` checks first.
"""

from .conditioning import DWMWanSceneConditioning
from .loaders import DWMWanLoraLoader, DWMWanModelLoader

WAN_NODES = (DWMWanModelLoader, DWMWanLoraLoader, DWMWanSceneConditioning)
