"""The Wan flow-matching sampler: schedule, model inputs, guidance, seeds, callbacks, failure modes."""

from __future__ import annotations

import contextlib
import math
from types import SimpleNamespace

import pytest
import torch

from comfyui_dwm.errors import DWMCancelled, DWMError
from comfyui_dwm.wan.model import WanBase, load_wan_base
from comfyui_dwm.wan.sampler import WanSettings, pad_text, sample
from comfyui_dwm.wan.scene import WanScene

LATENT = (1, 16, 2, 4, 6)


def stub_velocity(x, t, text):
    """A velocity that depends on the noisy latents, the timestep and the prompt (not the conditions)."""
    return x[:, :16] * 0.5 + text[:, :1, :1, None, None] + t[:, None, None, None, None] / 1000


class Recorder(torch.nn.Module):
    """A stand-in transformer: records every call and answers with ``stub_velocity``."""

    def __init__(self, nan: bool = False):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(image_dim=1280)
        self.calls, self.nan = [], nan

    @property
    def device(self):
        return self.anchor.device

    @property
    def dtype(self):
        return self.anchor.dtype

    def cache_context(self, name):
        return contextlib.nullcontext()

    def forward(self, hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image, return_dict):
        self.calls.append(dict(x=hidden_states, t=timestep, text=encoder_hidden_states,
                               image=encoder_hidden_states_image))
        v = stub_velocity(hidden_states, timestep, encoder_hidden_states)
        return (v * float("nan") if self.nan else v,)


def scene(seed: int = 0) -> WanScene:
    g = torch.Generator().manual_seed(seed)
    return WanScene(static=torch.randn(LATENT, generator=g), hands=torch.randn(LATENT, generator=g),
                    width=48, height=32)


def prompts():
    g = torch.Generator().manual_seed(5)
    return torch.randn(1, 7, 8, generator=g), torch.randn(1, 3, 8, generator=g)


def test_schedule_and_model_inputs_match_the_reference_loop():
    """Hand-written Euler over the reference's shifted sigmas (shift 5, 1000 train steps), CFG u + g (c - u)."""
    rec, sc = Recorder(), scene()
    positive, negative = prompts()
    settings = WanSettings(steps=4, guidance=6.0, seed=3, batch=1)
    out = sample(WanBase(rec, None, None, None, "stub"), sc, positive, negative, settings)

    def shifted(s):
        return 5 * s / (1 + 4 * s)
    # FlowMatchEulerDiscreteScheduler: linspace between the shifted training sigma ends, shifted again
    sigmas = [shifted(s) for s in torch.linspace(1.0, shifted(1 / 1000), 4, dtype=torch.float64).tolist()] + [0.0]
    x = torch.randn(LATENT, generator=torch.Generator().manual_seed(3)).double()
    for i, call in enumerate(rec.calls):
        assert math.isclose(call["t"][0].item(), sigmas[i] * 1000, rel_tol=1e-5) and call["t"].shape == (2,)
        model_in = call["x"]
        assert model_in.shape == (2, 52, *LATENT[2:])
        assert torch.allclose(model_in[:, :16], torch.cat([x, x]).float(), atol=1e-5)
        assert torch.equal(model_in[:, 16:20], torch.ones_like(model_in[:, 16:20]))
        assert torch.equal(model_in[:, 20:36], sc.static.expand(2, -1, -1, -1, -1))
        assert torch.equal(model_in[:, 36:], sc.hands.expand(2, -1, -1, -1, -1))
        assert torch.equal(call["text"], torch.cat([pad_text(negative), pad_text(positive)]))  # [uncond, cond]
        assert torch.equal(call["image"], torch.zeros(2, 257, 1280))
        u, c = stub_velocity(model_in.double(), call["t"].double(), call["text"].double()).chunk(2)
        x = x + (sigmas[i + 1] - sigmas[i]) * (u + 6.0 * (c - u))
    assert len(rec.calls) == 4
    assert torch.allclose(out, x.float(), atol=1e-5)


def test_text_is_zero_padded_to_512_tokens():
    embeds = torch.randn(1, 9, 4)
    padded = pad_text(embeds)
    assert padded.shape == (1, 512, 4) and torch.equal(padded[:, :9], embeds) and not padded[:, 9:].any()
    with pytest.raises(DWMError, match="513 tokens"):
        pad_text(torch.zeros(1, 513, 4))


def test_no_guidance_runs_the_conditional_half_only():
    rec = Recorder()
    positive, _ = prompts()
    sample(WanBase(rec, None, None, None, "stub"), scene(), positive, None, WanSettings(steps=2, guidance=1.0))
    assert [c["x"].shape[0] for c in rec.calls] == [1, 1]


@pytest.fixture(scope="module")
def tiny_base(wan_base_dir):
    return load_wan_base(wan_base_dir, "fp32", with_text_and_vae=False)


def test_batch_item_i_equals_a_single_run_with_seed_plus_i(tiny_base):
    g = torch.Generator().manual_seed(1)
    positive, negative = torch.randn(1, 5, 4096, generator=g), torch.randn(1, 2, 4096, generator=g)
    batch = sample(tiny_base, scene(), positive, negative, WanSettings(steps=2, seed=11, batch=2))
    single = sample(tiny_base, scene(), positive, negative, WanSettings(steps=2, seed=12, batch=1))
    assert batch.shape == (2, *LATENT[1:]) and batch.dtype == torch.float32
    assert torch.allclose(batch[1], single[0], atol=1e-4)
    assert not torch.allclose(batch[0], batch[1], atol=1e-2)


def test_progress_and_cancel_callbacks():
    positive, negative = prompts()
    seen = []
    base = WanBase(Recorder(), None, None, None, "stub")
    sample(base, scene(), positive, negative, WanSettings(steps=3),
           on_step=lambda i, n, latents: seen.append((i, n, tuple(latents.shape))))
    assert seen == [(i, 3, LATENT) for i in range(3)]
    calls = []
    with pytest.raises(DWMCancelled, match="before step 2/3"):
        sample(base, scene(), positive, negative, WanSettings(steps=3),
               cancel=lambda: calls.append(1) or len(calls) > 1)


def test_nan_and_bad_settings_are_user_errors():
    positive, negative = prompts()
    with pytest.raises(DWMError, match="NaN"):
        sample(WanBase(Recorder(nan=True), None, None, None, "s"), scene(), positive, negative, WanSettings(steps=1))
    base = WanBase(Recorder(), None, None, None, "s")
    for settings, match in ((WanSettings(scheduler="ddim"), "scheduler"), (WanSettings(dynamic_cfg=True), "dynamic"),
                            (WanSettings(shift=0), "shift"), (WanSettings(steps=0), "steps=0")):
        with pytest.raises(DWMError, match=match):
            sample(base, scene(), positive, negative, settings)
