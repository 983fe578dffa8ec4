"""The full-mask sampler: input layout, seeds, guidance, progress, cancel, V1.5 padding."""

from __future__ import annotations

import pytest
import torch

from conftest import random_frames
from comfyui_dwm.errors import DWMCancelled, DWMError
from comfyui_dwm.cogvideox.sampler import SamplerSettings, sample
from comfyui_dwm.cogvideox.scene import encode_scene
from comfyui_dwm.cogvideox.text import encode_prompt


def scene_for(base, frames: int = 9):
    return encode_scene(base.vae, random_frames(frames, seed=1), random_frames(frames, seed=2), 96, 64)


def run(base, scene=None, calls=None, **kw):
    scene = scene or scene_for(base)
    settings = SamplerSettings(**{"steps": 3, **kw})
    hook = None
    if calls is not None:
        hook = base.transformer.register_forward_hook(
            lambda m, args, kwargs, out: calls.append(kwargs["hidden_states"].clone()), with_kwargs=True)
    try:
        return sample(base, scene, encode_prompt(base, "open the drawer"), encode_prompt(base, ""), settings)
    finally:
        if hook is not None:
            hook.remove()


def test_model_input_layout_and_cfg_halves(base11):
    scene = scene_for(base11)
    calls = []
    run(base11, scene, calls, guidance=6.0)
    x = calls[0]
    assert x.shape == (2, 3, 49, 8, 12)  # [uncond, cond] x frames x channels
    assert torch.all(x[:, :, 16] == base11.scaling_factor)
    for half in x:
        assert torch.equal(half[:, 17:33], scene.static[0])
        assert torch.equal(half[:, 33:49], scene.hands[0])
    assert torch.equal(x[0, :, :16], x[1, :, :16])


def test_seeds_reproducible_and_batch_invariant(base11):
    scene = scene_for(base11)
    a, b = run(base11, scene, seed=5), run(base11, scene, seed=5)
    assert torch.equal(a, b)
    assert not torch.allclose(a, run(base11, scene, seed=6))
    batch = run(base11, scene, seed=5, batch=2)
    assert batch.shape[0] == 2
    torch.testing.assert_close(batch[1:], run(base11, scene, seed=6), rtol=1e-4, atol=1e-4)


def test_guidance_one_runs_one_pass_per_step(base11):
    calls = []
    run(base11, calls=calls, guidance=1.0, steps=4)
    assert len(calls) == 4 and all(c.shape[0] == 1 for c in calls)
    calls.clear()
    run(base11, calls=calls, guidance=6.0, steps=4, batch=2)
    assert len(calls) == 4 and all(c.shape[0] == 4 for c in calls)


def test_progress_once_per_step_and_cancel_within_one_step(base11):
    scene, seen = scene_for(base11), []
    pos, neg = encode_prompt(base11, "x"), encode_prompt(base11, "")
    sample(base11, scene, pos, neg, SamplerSettings(steps=5), on_step=lambda i, n, lat: seen.append((i, n)))
    assert seen == [(i, 5) for i in range(5)]
    calls, seen = [], []
    hook = base11.transformer.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(DWMCancelled):
            sample(base11, scene, pos, neg, SamplerSettings(steps=10),
                   on_step=lambda i, n, lat: seen.append(i), cancel=lambda: len(seen) >= 2)
    finally:
        hook.remove()
    assert seen == [0, 1] and len(calls) == 2


def test_v15_odd_latent_count_is_padded_and_dropped(base15):
    scene = scene_for(base15, frames=9)  # 3 latent frames: odd for patch_size_t = 2
    calls = []
    out = run(base15, scene, calls)
    assert calls[0].shape[1] == 4  # one latent frame prepended for the transformer
    assert torch.equal(calls[0][0, 0, 17:], calls[0][0, 1, 17:])  # conditions repeat their first frame
    assert out.shape == scene.static.shape
    assert torch.isfinite(out).all()


def test_v15_even_latent_count_is_not_padded(base15):
    scene = scene_for(base15, frames=13)  # 4 latent frames
    calls = []
    assert run(base15, scene, calls).shape[1] == 4 and calls[0].shape[1] == 4


def test_dpm_scheduler_and_dynamic_cfg(base11):
    scene = scene_for(base11)
    ddim = run(base11, scene)
    dpm = run(base11, scene, scheduler="dpm")
    assert torch.equal(dpm, run(base11, scene, scheduler="dpm"))
    assert not torch.allclose(ddim, dpm)
    assert not torch.allclose(ddim, run(base11, scene, dynamic_cfg=True))


def test_bad_settings_and_nan_are_clear_errors(base11, monkeypatch):
    with pytest.raises(DWMError, match="unknown scheduler 'euler'"):
        run(base11, scheduler="euler")
    with pytest.raises(DWMError, match="steps=0"):
        run(base11, steps=0)
    forward = base11.transformer.forward
    monkeypatch.setattr(base11.transformer, "forward",
                        lambda *a, **k: (forward(*a, **k)[0] * float("nan"),))
    with pytest.raises(DWMError, match="NaN/inf.*bf16"):
        run(base11)
