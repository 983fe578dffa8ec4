"""CFG-parallel (``--cfg-parallel``): the two guidance passes of one sample on two processes.

Both samplers call the transformer once per step on the batch ``[uncond, cond]``. Under two processes,
hooks on the transformer give each process its half of that batch (the first process the conditional pass,
the second the unconditional one), run it, and all-gather the halves back into the whole ``[uncond, cond]``
output. Both processes then hold the same prediction and step identical latents in lockstep, so the video
is the one-process video up to the rounding of a half-size batch; each transformer call costs half the
work per GPU. The samplers and the transformer are unchanged (torch module hooks, for both families).
"""

from __future__ import annotations

import torch

from .errors import DWMError

# The transformers' batched inputs (diffusers' CogVideoX and Wan names); the others (RoPE) are shared.
BATCHED = ("hidden_states", "encoder_hidden_states", "encoder_hidden_states_image", "timestep")


def check(processes: int, guidance: float) -> None:
    """``--cfg-parallel`` needs exactly two processes and a guidance that runs two passes."""
    if guidance <= 1.0:
        raise DWMError("--cfg-parallel", f"splits the two guidance passes, but --guidance {guidance:g} runs one",
                       "set --guidance above 1, or drop --cfg-parallel")
    if processes != 2:
        raise DWMError("--cfg-parallel", f"needs exactly 2 processes, this run has {processes}",
                       "start it with: accelerate launch --multi_gpu --num_processes 2 -m comfyui_dwm generate "
                       "... --cfg-parallel (or drop --cfg-parallel)")


def _half(rank: int, n: int) -> slice:
    if n % 2:
        raise DWMError("--cfg-parallel", f"the transformer got an odd batch of {n}", "drop --cfg-parallel")
    return slice(n // 2, n) if rank == 0 else slice(0, n // 2)  # rank 0: cond, rank 1: uncond


def split_guidance(transformer: torch.nn.Module, rank: int) -> list:
    """Hook ``transformer`` so each call runs this process's half and returns the gathered whole; the
    handles (``.remove()`` undoes it). Needs torch.distributed initialised with two processes."""

    def take_half(_module, args, kwargs):
        part = _half(rank, kwargs["hidden_states"].shape[0])
        return args, {k: v[part] if k in BATCHED and torch.is_tensor(v) and v.ndim else v
                      for k, v in kwargs.items()}

    def gather(_module, _args, _kwargs, output):
        mine = output[0] if isinstance(output, tuple) else output.sample
        parts = [torch.empty_like(mine) for _ in range(2)]
        torch.distributed.all_gather(parts, mine.contiguous())
        whole = torch.cat([parts[1], parts[0]])  # [uncond (rank 1), cond (rank 0)], the samplers' order
        if isinstance(output, tuple):
            return (whole, *output[1:])
        output.sample = whole
        return output

    return [transformer.register_forward_pre_hook(take_half, with_kwargs=True),
            transformer.register_forward_hook(gather, with_kwargs=True)]


def attach(base, processes) -> None:
    """Split the guidance passes of ``base.transformer`` (either family) when ``processes``
    (dwm/sharding.py) asks for it."""
    if processes.cfg_parallel:
        split_guidance(base.transformer, processes.rank)
