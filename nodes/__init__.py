"""ComfyUI nodes for Dexterous World Models: thin adapters over the engine, ``comfyui_dwm``.

ComfyUI imports a pack by file path and never installs it, so the engine folder beside this package
(``dwm/``) is registered under its installed name, ``comfyui_dwm``, unless that is already imported.
Nothing is put on ``sys.path``: no module of the host, or of another pack, can be shadowed.

Every node uses the host's V3 schema (``comfy_api.latest``) and registers through one path,
``comfy_entrypoint`` (the host ignores it when a pack also has NODE_CLASS_MAPPINGS). It exists only
inside a ComfyUI that has that schema; elsewhere (tests, headless tools) this package imports no
ComfyUI module, and the CogVideoX nodes' work is reachable as plain functions
(``nodes.cogvideox.NODE_FUNCTIONS``).
"""

import importlib.util
import os
import sys

ENGINE = "comfyui_dwm"


def _register_engine() -> None:
    """Import the engine shipped with this pack as ``comfyui_dwm`` (an installed copy may be older)."""
    if ENGINE in sys.modules:
        return
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dwm")
    spec = importlib.util.spec_from_file_location(ENGINE, os.path.join(folder, "__init__.py"),
                                                  submodule_search_locations=[folder])
    module = importlib.util.module_from_spec(spec)
    sys.modules[ENGINE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[ENGINE]
        raise


_register_engine()


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
