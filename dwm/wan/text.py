"""umT5 prompt embeddings for Wan, on transformers' ``UMT5EncoderModel``.

A VideoX-Fun folder ships the umT5-XXL encoder in Wan's own layout (``models_t5_umt5-xxl-enc-bf16.pth``:
``token_embedding``, ``blocks.N.{norm1, attn, norm2, ffn, pos_embedding}``, ``norm``) and the
``google/umt5-xxl`` tokenizer beside it. The same weights fit ``UMT5EncoderModel`` under other names
(one relative-position table per layer in both); the config is read from the tensor shapes, so a tiny
encoder loads the same way. A transformers-format umT5 folder loads as is.

Like the reference, a prompt is tokenized with its end token and truncated to 512 tokens, encoded
with its padding masked out and trimmed to its real length (the transformer pads to 512 itself).
Encoding the unpadded tokens is the same computation (relative positions only, masked keys get zero
weight) without 512-token cost, so that is what runs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import weakref

import torch
from accelerate import init_empty_weights
from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

from ..errors import DWMError
from ..precision import resolve_dtype
from .weights import find_weights, read_weights

TEXT_LEN = 512
CACHE_SIZE = 64
log = logging.getLogger("dwm")

# Wan's umT5 names <-> transformers' UMT5EncoderModel names ({n} = block index).
KEY_PAIRS = (
    ("token_embedding.weight", "shared.weight"),
    ("blocks.{n}.norm1.weight", "encoder.block.{n}.layer.0.layer_norm.weight"),
    ("blocks.{n}.attn.q.weight", "encoder.block.{n}.layer.0.SelfAttention.q.weight"),
    ("blocks.{n}.attn.k.weight", "encoder.block.{n}.layer.0.SelfAttention.k.weight"),
    ("blocks.{n}.attn.v.weight", "encoder.block.{n}.layer.0.SelfAttention.v.weight"),
    ("blocks.{n}.attn.o.weight", "encoder.block.{n}.layer.0.SelfAttention.o.weight"),
    ("blocks.{n}.pos_embedding.embedding.weight",
     "encoder.block.{n}.layer.0.SelfAttention.relative_attention_bias.weight"),
    ("blocks.{n}.norm2.weight", "encoder.block.{n}.layer.1.layer_norm.weight"),
    ("blocks.{n}.ffn.gate.0.weight", "encoder.block.{n}.layer.1.DenseReluDense.wi_0.weight"),  # GELU branch
    ("blocks.{n}.ffn.fc1.weight", "encoder.block.{n}.layer.1.DenseReluDense.wi_1.weight"),
    ("blocks.{n}.ffn.fc2.weight", "encoder.block.{n}.layer.1.DenseReluDense.wo.weight"),
    ("norm.weight", "encoder.final_layer_norm.weight"),
)
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "spiece.model")
UMT5_KEYS = ("token_embedding.weight", "blocks.0.attn.q.weight", "blocks.0.pos_embedding.embedding.weight")
_FIX = ("point at a Wan VideoX-Fun folder holding models_t5_umt5-xxl-enc-bf16.pth and the google/umt5-xxl "
        "tokenizer folder, or at a transformers-format umT5 folder")
_caches: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _pattern(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(re.escape("{n}"), r"(?P<n>\d+)") + "$")


_TO_HF = [(_pattern(wan), hf) for wan, hf in KEY_PAIRS]
_TO_WAN = [(_pattern(hf), wan) for wan, hf in KEY_PAIRS]


def _rename(state: dict, rules) -> dict:
    out = {}
    for key, value in state.items():
        for pattern, template in rules:
            match = pattern.match(key)
            if match:
                out[template.replace("{n}", match.groupdict().get("n") or "")] = value
                break
        else:
            raise DWMError("text encoder", f"unexpected tensor {key!r} in the umT5 weights", _FIX)
    return out


def wan_to_umt5(state: dict) -> dict:
    """Wan-layout umT5 tensors -> ``UMT5EncoderModel`` names (the tied input embedding included)."""
    out = _rename(state, _TO_HF)
    out["encoder.embed_tokens.weight"] = out["shared.weight"]
    return out


def umt5_to_wan(state: dict) -> dict:
    """``UMT5EncoderModel`` tensors -> Wan's umT5 layout (the inverse of :func:`wan_to_umt5`)."""
    return _rename({k: v for k, v in state.items() if k != "encoder.embed_tokens.weight"}, _TO_WAN)


def umt5_config(state: dict):
    """The ``UMT5Config`` of Wan-layout umT5 weights, every size read from the tensor shapes."""

    vocab, d_model = state["token_embedding.weight"].shape
    buckets, heads = state["blocks.0.pos_embedding.embedding.weight"].shape
    layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    return UMT5Config(vocab_size=vocab, d_model=d_model, d_kv=state["blocks.0.attn.q.weight"].shape[0] // heads,
                      d_ff=state["blocks.0.ffn.fc1.weight"].shape[0], num_layers=layers, num_heads=heads,
                      relative_attention_num_buckets=buckets, feed_forward_proj="gated-gelu", dropout_rate=0.0)


def _is_wan_umt5(keys: set) -> bool:
    return all(k in keys for k in UMT5_KEYS)


def _t5_tokenizer(folder: str):
    """The folder's tokenizer when it has T5's special-token ids (pad 0, end 1), which tell umT5's
    tokenizer from e.g. the CLIP's XLM-R one; else None."""

    if not any(os.path.isfile(os.path.join(folder, f)) for f in TOKENIZER_FILES):
        return None
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError):
        return None
    return tokenizer if (tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1) else None


def find_tokenizer(folder: str):
    """The umT5 tokenizer of ``folder`` itself or of a sub-folder up to two levels down (loaded once)."""
    folder = os.path.normpath(folder)
    for root, dirs, _ in os.walk(folder):
        dirs.sort()
        if root[len(folder):].count(os.sep) >= 2:
            dirs.clear()
        tokenizer = _t5_tokenizer(root)
        if tokenizer is not None:
            return tokenizer
    raise DWMError("text encoder", f"no umT5 tokenizer (e.g. google/umt5-xxl/) found in {folder}", _FIX)


def _model_type(folder: str) -> str | None:
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as fh:
            return json.load(fh).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def _from_wan_weights(path: str, dtype: torch.dtype):

    state = read_weights(path)
    config = umt5_config(state)
    with init_empty_weights():  # no random init of a 5.7B-parameter encoder
        model = UMT5EncoderModel(config)
    converted = {k: v.to(dtype) for k, v in wan_to_umt5(state).items()}
    try:
        model.load_state_dict(converted, strict=True, assign=True)
    except RuntimeError as err:
        raise DWMError("text encoder", f"{path} is not a complete umT5 encoder ({str(err).splitlines()[0]})",
                       _FIX) from err
    model.set_attn_implementation("eager")  # the reference's plain softmax attention
    return model


def find_text_encoder(folder: str) -> tuple[str | None, str]:
    """(Wan-layout umT5 weight file, or None for a transformers-format umT5 folder; the tokenizer)."""
    if not os.path.isdir(folder):
        raise DWMError("text encoder", f"{folder} is not a folder", _FIX)
    weights = None
    if _model_type(folder) != "umt5":
        weights = find_weights(folder, _is_wan_umt5)
        if weights is None:
            raise DWMError("text encoder", f"no umT5 weights (Wan layout: token_embedding, blocks.N.attn, "
                           f"blocks.N.pos_embedding) found in {folder}", _FIX)
    return weights, find_tokenizer(folder)


def load_wan_text_encoder(folder: str, dtype: str | torch.dtype = "bf16", device: str | torch.device = "cpu"):
    """``(UMT5EncoderModel, tokenizer)`` from a VideoX-Fun folder or a transformers-format umT5 folder."""

    torch_dtype = resolve_dtype(dtype)
    weights, tokenizer = find_text_encoder(folder)
    if weights is None:
        model = UMT5EncoderModel.from_pretrained(folder, dtype=torch_dtype, attn_implementation="eager")
    else:
        model = _from_wan_weights(weights, torch_dtype)
    return model.requires_grad_(False).eval().to(device), tokenizer


def prompt_ids(tokenizer, prompt: str, max_length: int = TEXT_LEN) -> torch.Tensor:
    """Token ids ``[1, L]`` with the end token, no padding; warns when the prompt is cut to fit."""
    full = tokenizer(prompt, add_special_tokens=True).input_ids
    if len(full) > max_length:
        kept = tokenizer.decode(full[: max_length - 1], skip_special_tokens=True)
        log.warning(f"prompt is {len(full)} tokens, longer than the {max_length}-token text window; "
                    f"it was truncated after: ...{kept[-60:]!r}")
    return tokenizer(prompt, truncation=True, max_length=max_length, add_special_tokens=True,
                     return_tensors="pt").input_ids


@torch.no_grad()
def encode_wan_prompt(text_encoder, tokenizer, prompt: str, device: str | torch.device | None = None,
                      cache: dict | None = None) -> torch.Tensor:
    """umT5 embedding ``[1, L, d_model]`` trimmed to the prompt's real length, fp32 on the CPU.

    Runs on ``device`` (where the encoder must be; default: its own device). Each prompt is encoded
    once per encoder and process (or per ``cache`` dict when given); repeats come from the cache.
    """
    prompt = prompt or ""
    if cache is None:
        cache = _caches.setdefault(text_encoder, {})
    cached = cache.get(prompt)
    if cached is None:
        device = device or next(text_encoder.parameters()).device
        ids = prompt_ids(tokenizer, prompt).to(device)
        cached = text_encoder(input_ids=ids).last_hidden_state.to("cpu", torch.float32)
        if len(cache) >= CACHE_SIZE:
            cache.pop(next(iter(cache)))
        cache[prompt] = cached
    return cached.clone()
