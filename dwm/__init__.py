"""Dexterous World Models engine: model assembly, checkpoints, conditioning, sampling, video IO.

Importable without ComfyUI; the nodes in ``nodes/`` and the trainer in ``training/`` stand on it.
"""

from .errors import DWMCancelled, DWMError

__all__ = ["DWMError", "DWMCancelled"]
