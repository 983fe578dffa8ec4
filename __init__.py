"""ComfyUI entry point of the DWM pack: registers the nodes (see docs/nodes.md).

ComfyUI imports this folder as a package. pytest also imports this file while collecting the tests,
as a lone module when the folder name is not a Python identifier (``ComfyUI-DWM``): then there is
no package to import the nodes from, and nothing to register.
"""

if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    __all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
