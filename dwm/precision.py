"""Precision names shared by the CLI, the nodes and the trainer of both families."""

from __future__ import annotations

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"bf16"`` etc. to a torch dtype; a torch dtype passes through."""
    return DTYPES[dtype] if isinstance(dtype, str) else dtype
