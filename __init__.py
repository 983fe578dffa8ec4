"""ComfyUI entry point of the DWM pack: ``comfy_entrypoint`` registers the nodes (see docs/nodes.md).

ComfyUI imports this folder as a package. pytest also imports this file while collecting the tests,
as a lone module when the folder name is not a Python identifier (``ComfyUI-DWM``): then there is
no package to import the nodes from, and nothing to register. There is deliberately no
NODE_CLASS_MAPPINGS: with it, the host would ignore ``comfy_entrypoint``.
"""

if __package__:
    from . import nodes as _nodes

    if hasattr(_nodes, "comfy_entrypoint"):  # inside a ComfyUI with the V3 schema
        comfy_entrypoint = _nodes.comfy_entrypoint
        __all__ = ["comfy_entrypoint"]
