"""Prompt conditioning: 226 tokens, no attention mask, cache, truncation warning."""

from __future__ import annotations

import torch

from conftest import expect_log
from comfyui_dwm.cogvideox.text import TEXT_TOKENS, encode_prompt, token_ids


def test_empty_prompt_is_eos_then_pads(base11):
    ids = token_ids(base11.tokenizer, "")
    assert ids.shape == (1, TEXT_TOKENS)
    assert ids[0, 0].item() == base11.tokenizer.eos_token_id
    assert torch.all(ids[0, 1:] == base11.tokenizer.pad_token_id)


def test_embedding_matches_unmasked_encoder_and_is_cached(base11):
    calls = []
    hook = base11.text_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        first = encode_prompt(base11, "open the drawer")
        again = encode_prompt(base11, "open the drawer")
        other = encode_prompt(base11, "close the drawer")
    finally:
        hook.remove()
    assert len(calls) == 2 and torch.equal(again, first) and not torch.equal(first, other)
    ids = token_ids(base11.tokenizer, "open the drawer")
    with torch.no_grad():
        torch.testing.assert_close(first, base11.text_encoder(ids)[0])  # no attention mask
    assert first.shape == (1, TEXT_TOKENS, 32)


def test_long_prompt_warns_and_truncates(base11, caplog):
    with expect_log(caplog, "longer than the 226-token text window; it was truncated"):
        ids = token_ids(base11.tokenizer, "open the fridge " * 40)
    assert ids.shape == (1, TEXT_TOKENS) and ids[0, -1].item() == base11.tokenizer.eos_token_id
