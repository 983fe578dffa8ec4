"""ComfyUI nodes for Dexterous World Models: thin adapters over the ``dwm`` engine.

The engine sits next to this package; the pack folder is put on ``sys.path`` (appended, so nothing
of the host is shadowed) because ComfyUI imports a pack by file path and never installs it.

Every node uses the host's V3 schema (``comfy_api.latest``) and registers through one path,
``comfy_entrypoint`` (the host ignores it when a pack also has NODE_CLASS_MAPPINGS). It exists only
inside a ComfyUI that has that schema; elsewhere (tests, headless tools) this package imports no
ComfyUI module, and the CogVideoX nodes' work is reachable as plain functions
(``nodes.cogvideox.NODE_FUNCTIONS``).
"""

import importlib.util
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.append(_ROOT)


def _has_v3_schema() -> bool:
    return importlib.util.find_spec("comfy_api") is not None and \
        importlib.util.find_spec("comfy_api.latest") is not None


if _has_v3_schema():
    from comfy_api.latest import ComfyExtension

    from .cogvideox.v3 import COGVIDEOX_NODES
    from .wan import WAN_NODES

    NODES = (*COGVIDEOX_NODES, *WAN_NODES)

    class DWMExtension(ComfyExtension):
        async def get_node_list(self) -> list:
            return list(NODES)

    async def comfy_entrypoint() -> DWMExtension:
        return DWMExtension()

    __all__ = ["NODES", "comfy_entrypoint"]
