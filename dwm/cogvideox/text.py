"""Prompt conditioning: T5 embeddings the way CogVideoX-Fun was trained.

The tokenizer pads/truncates to 226 tokens with special tokens and the encoder runs **without** an
attention mask (pad tokens attend), as in the reference; the empty prompt is ``</s>`` then pads.
Embeddings are cached per base model, so a prompt is encoded once per process.
"""

from __future__ import annotations

import logging

import torch

from .model import DWMBase

TEXT_TOKENS = 226
CACHE_SIZE = 64
log = logging.getLogger("dwm")


def token_ids(tokenizer, prompt: str, max_length: int = TEXT_TOKENS) -> torch.Tensor:
    """Token ids padded to ``max_length``; warns when the prompt is cut to fit the text window."""
    full = tokenizer(prompt, add_special_tokens=True).input_ids
    if len(full) > max_length:
        kept = tokenizer.decode(full[: max_length - 1], skip_special_tokens=True)
        msg = (f"prompt is {len(full)} tokens, longer than the {max_length}-token text window; "
               f"it was truncated after: ...{kept[-60:]!r}")
        log.warning(msg)
    ids = tokenizer(prompt, padding="max_length", max_length=max_length, truncation=True,
                    add_special_tokens=True, return_tensors="pt").input_ids
    return ids


@torch.no_grad()
def encode_prompt(base: DWMBase, prompt: str) -> torch.Tensor:
    """T5 embedding ``[1, 226, D]`` in the transformer's dtype, on the text encoder's device.

    The text is encoded once per base model and process; repeats come from the cache.
    """
    prompt = prompt or ""
    encoder = base.text_encoder
    cached = base.prompt_cache.get(prompt)
    if cached is None:
        ids = token_ids(base.tokenizer, prompt).to(encoder.device)
        # Kept on the CPU, so the cache holds no GPU memory once the host offloads the encoder.
        cached = encoder(ids)[0].to("cpu", base.dtype)
        if len(base.prompt_cache) >= CACHE_SIZE:
            base.prompt_cache.pop(next(iter(base.prompt_cache)))
        base.prompt_cache[prompt] = cached
    return cached.to(encoder.device)
