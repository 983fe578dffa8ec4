"""Speed options for the CogVideoX DWM transformer, all off by default (each changes the output a little,
except compile and the native attention backend; docs/benchmarks.md lists each one's time and drift).

* Step caches: diffusers' hooks, enabled for one generation by :func:`step_cache` and removed after, with
  their state reset at the start (a cache's state from a run with another batch size would not fit).
  TaylorSeer's default module pattern hooks nothing on CogVideoX (it misses ``attn1``); ours names the
  blocks' ``attn1`` and ``ff``. PAB and FasterCache skip by timestep: a forward pre-hook reads the
  sampler's ``timestep`` argument, so no sampler state leaks in here.
* :func:`compile_blocks`: ``torch.compile`` of each transformer block (``compile_repeated_blocks`` finds no
  repeated blocks on CogVideoX). Modules keep their identity, so LoRA and hooks still apply.
* :class:`DispatchAttnProcessor`: CogVideoX's joint attention through diffusers' attention dispatcher, so
  ``set_attention_backend`` (flash, sage, ...) reaches it; diffusers' own processor calls SDPA directly.
  q, k and v stay separate projections, so LoRA on them keeps working (fused QKV would drop it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ..errors import DWMError

CACHES = ("none", "first-block", "taylorseer", "magcache", "fastercache", "pab")
CACHE_HELP = {
    "first-block": "FirstBlockCache: skip the other blocks while the first block's residual barely changes",
    "taylorseer": "TaylorSeer: predict attn1/ff outputs by Taylor expansion between full steps (memory heavy)",
    "magcache": "MagCache: skip steps by calibrated residual magnitudes (needs calibrate-magcache ratios)",
    "fastercache": "FasterCache: reuse attention and approximate the unconditional pass from the conditional",
    "pab": "Pyramid Attention Broadcast: reuse attention outputs every other step in mid timesteps",
}
TAYLORSEER_MODULES = (r"transformer_blocks\.\d+\.attn1", r"transformer_blocks\.\d+\.ff")
ATTENTION_BACKENDS = ("sdpa", "native", "flash", "flash_hub", "_flash_3", "sage", "sage_hub", "flex", "xformers",
                      "_native_flash", "_native_efficient", "_native_cudnn")


class TimestepClock:
    """The timestep of the transformer call in progress, read by PAB and FasterCache."""

    def __init__(self, transformer):
        self.value = 1000
        self.handle = transformer.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs) -> None:
        self.value = int(kwargs["timestep"].reshape(-1)[0])

    def __call__(self) -> int:
        return self.value


def cache_config(name: str, transformer, clock: TimestepClock, steps: int, cfg: bool, **params):
    """The diffusers cache config of ``name`` with DWM's defaults, overridden by ``params``."""
    from diffusers.hooks import (FasterCacheConfig, FirstBlockCacheConfig, MagCacheConfig,
                                 PyramidAttentionBroadcastConfig, TaylorSeerCacheConfig)

    if name == "first-block":
        return FirstBlockCacheConfig(**{"threshold": 0.05, **params})
    if name == "taylorseer":
        return TaylorSeerCacheConfig(**{"cache_interval": 4, "disable_cache_before_step": 3, "max_order": 1,
                                        "taylor_factors_dtype": transformer.dtype,
                                        "cache_identifiers": list(TAYLORSEER_MODULES), **params})
    if name == "magcache":
        if params.get("mag_ratios") is None:
            raise DWMError("magcache", "no calibrated ratios given",
                           "run python -m comfyui_dwm calibrate-magcache --out ratios.json and pass "
                           "--magcache-ratios ratios.json")
        return MagCacheConfig(**{"threshold": 0.06, "max_skip_steps": 3, "retention_ratio": 0.2,
                                 "num_inference_steps": steps, **params})
    if name == "fastercache":
        return FasterCacheConfig(**{"spatial_attention_block_skip_range": 2,
                                    "spatial_attention_timestep_skip_range": (-1, 681),
                                    "unconditional_batch_skip_range": 5,
                                    "unconditional_batch_timestep_skip_range": (-1, 641),
                                    "attention_weight_callback": lambda _: 0.3, "tensor_format": "BFCHW",
                                    "is_guidance_distilled": not cfg, "current_timestep_callback": clock, **params})
    if name == "pab":
        return PyramidAttentionBroadcastConfig(**{"spatial_attention_block_skip_range": 2,
                                                  "spatial_attention_timestep_skip_range": (100, 800),
                                                  "current_timestep_callback": clock, **params})
    raise DWMError("cache", f"unknown step cache {name!r}", f"choose one of {', '.join(CACHES)}")


@contextlib.contextmanager
def step_cache(transformer, name: str | None, *, steps: int = 50, cfg: bool = True, **params) -> Iterator[None]:
    """Enable cache ``name`` (one of :data:`CACHES`; None/"none" = off) for one generation of ``steps``
    steps (``cfg``: the batch holds [uncond, cond] halves); removed on exit, whatever happens."""
    if name in (None, "none"):
        yield
        return
    if transformer.is_cache_enabled:
        transformer.disable_cache()  # one left by an interrupted run
    clock = TimestepClock(transformer)
    try:
        transformer.enable_cache(cache_config(name, transformer, clock, steps, cfg, **params))
        transformer._reset_stateful_cache()
        yield
    finally:
        clock.handle.remove()
        if transformer.is_cache_enabled:
            transformer.disable_cache()


def reset_step_cache(transformer) -> None:
    """Start a run with a clean cache state (a previous run may have had another batch size)."""
    if getattr(transformer, "is_cache_enabled", False):
        transformer._reset_stateful_cache()


def compile_blocks(transformer, **options) -> None:
    """``torch.compile`` each transformer block in place (``options`` go to ``torch.compile``)."""
    for block in transformer.transformer_blocks:
        block.compile(**options)


class DispatchAttnProcessor:
    """CogVideoX attention (text tokens first, RoPE on the video tokens) computed by the dispatcher.

    ``_attention_backend`` is set by ``transformer.set_attention_backend``; None = the active default.
    """

    _attention_backend = None
    _parallel_config = None

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb=None):
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.embeddings import apply_rotary_emb

        text = encoder_hidden_states.shape[1]
        tokens = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch, length, _ = tokens.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, length, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        # [B, H, N, D] as CogVideoX's norms and RoPE expect; the dispatcher takes [B, N, H, D].
        q, k, v = (proj(tokens).unflatten(-1, (attn.heads, -1)).transpose(1, 2)
                   for proj in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if image_rotary_emb is not None:
            q[:, :, text:] = apply_rotary_emb(q[:, :, text:], image_rotary_emb)
            if not attn.is_cross_attention:
                k[:, :, text:] = apply_rotary_emb(k[:, :, text:], image_rotary_emb)
        out = dispatch_attention_fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attention_mask,
                                    backend=self._attention_backend, parallel_config=self._parallel_config)
        out = attn.to_out[1](attn.to_out[0](out.flatten(2, 3)))
        return out[:, text:], out[:, :text]


def set_attention(transformer, backend: str) -> None:
    """``sdpa``: diffusers' own CogVideoX processor; any other name: ours on that dispatcher backend."""
    from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0

    if backend not in ATTENTION_BACKENDS:
        raise DWMError("attention", f"unknown attention backend {backend!r}",
                       f"choose one of {', '.join(ATTENTION_BACKENDS)}")
    if backend == "sdpa":  # diffusers' processor, put back only where ours replaced it
        if any(isinstance(p, DispatchAttnProcessor) for p in transformer.attn_processors.values()):
            transformer.set_attn_processor(CogVideoXAttnProcessor2_0())
        return
    transformer.set_attn_processor(DispatchAttnProcessor())
    try:
        transformer.set_attention_backend(backend)
    except (RuntimeError, ImportError, ValueError) as err:
        transformer.set_attn_processor(CogVideoXAttnProcessor2_0())
        raise DWMError("attention", f"backend {backend!r} is not usable here ({str(err).splitlines()[0]})",
                       "install its package (flash-attn, sageattention, ...) or use --attention sdpa") from err
