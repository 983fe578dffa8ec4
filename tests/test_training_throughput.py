"""Training throughput: encoders off the accelerator when steps do not need them, fused AdamW on CUDA only,
samples/s and MFU logged, and the model-FLOP formula (``comfyui_dwm.flops``) against torch's counter."""

from __future__ import annotations

import os
import shutil
import time
from types import SimpleNamespace

import pytest
import torch

from comfyui_dwm import flops
from comfyui_dwm.dataset import read_list
from comfyui_dwm.training import throughput
from comfyui_dwm.training.data import COGVIDEOX_LAYOUT

from test_training_fixtures import (FRAMES, HEIGHT, WIDTH, config, prepared_data, raw_data,  # noqa: F401
                                    tiny_v11)


class FakeModule:
    """Records where it was moved (a stand-in for an encoder, so "cuda" needs no GPU)."""

    def __init__(self):
        self.where = torch.device("cpu")

    def to(self, device):
        self.where = torch.device(device)
        return self

    def parameters(self):
        yield SimpleNamespace(device=self.where)


def fake_family(keep=()):
    return SimpleNamespace(base=SimpleNamespace(vae=FakeModule(), text_encoder=FakeModule()), cpu_encoders=keep)


def dataset(root):
    return SimpleNamespace(layout=COGVIDEOX_LAYOUT, samples=read_list(root, "train.txt"))


def test_encoders_go_to_the_accelerator_only_when_steps_call_them(prepared_data, raw_data, tmp_path):
    family = fake_family()
    assert throughput.place_encoders(family, dataset(prepared_data), "cuda") == {"vae": "cpu", "text_encoder": "cpu"}
    with throughput.encoders_on(family, "cuda"):  # validation
        assert family.base.vae.where.type == family.base.text_encoder.where.type == "cuda"
    assert family.base.vae.where.type == family.base.text_encoder.where.type == "cpu"
    assert throughput.place_encoders(family, dataset(raw_data), "cuda") == {"vae": "cuda", "text_encoder": "cuda"}
    wan_like = fake_family(keep=("text_encoder",))
    assert throughput.place_encoders(wan_like, dataset(raw_data), "cuda") == {"vae": "cuda", "text_encoder": "cpu"}
    with throughput.encoders_on(wan_like, "cuda"):
        assert wan_like.base.text_encoder.where.type == "cpu"
    partial = str(tmp_path / "data")
    shutil.copytree(prepared_data, partial)
    data = dataset(partial)
    os.remove(data.layout.prompt_embeds(data.samples[0]))
    assert throughput.step_needs(data) == {"text_encoder"}


def test_fused_adamw_only_on_cuda():
    cuda = SimpleNamespace(device=torch.device("cuda"), dtype=torch.float32)
    cpu = torch.nn.Parameter(torch.zeros(2))
    assert throughput.fused_available([cuda, cuda])
    assert not throughput.fused_available([cuda, cpu]) and not throughput.fused_available([])
    cfg = SimpleNamespace(learning_rate=1e-3, adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.01, adam_epsilon=1e-8)
    optimizer = throughput.make_optimizer([cpu], cfg)
    assert not optimizer.defaults["fused"]
    cpu.grad = torch.ones(2)
    optimizer.step()
    assert torch.all(cpu < 0)


def test_training_keeps_encoders_off_during_steps_and_logs_rates(tmp_path, tiny_v11, prepared_data, monkeypatch):
    from accelerate import Accelerator

    from comfyui_dwm.training.train import run

    placed, calls, logged, phase = [], [], [], {"validation": False}
    place, on = throughput.place_encoders, throughput.encoders_on

    def place_and_watch(family, data, device):
        placed.append(place(family, data, device))
        for name, module in (("vae", family.base.vae.encoder), ("vae", family.base.vae.decoder),
                             ("text_encoder", family.base.text_encoder)):
            module.register_forward_pre_hook(lambda *_, name=name: calls.append((name, phase["validation"])))
        return placed[-1]

    class watched_validation:
        def __init__(self, family, device):
            self.inner = on(family, device)

        def __enter__(self):
            phase["validation"] = True
            return self.inner.__enter__()

        def __exit__(self, *exc):
            phase["validation"] = False
            return self.inner.__exit__(*exc)

    monkeypatch.setattr(throughput, "place_encoders", place_and_watch)
    monkeypatch.setattr(throughput, "encoders_on", watched_validation)
    monkeypatch.setattr(throughput, "device_peak", lambda device: 1e12)
    monkeypatch.setattr(Accelerator, "log", lambda self, values, step=None, log_kwargs=None: logged.append(values))
    cfg = config(tiny_v11, prepared_data, str(tmp_path / "run"), max_train_steps=2, gradient_accumulation_steps=1,
                 checkpointing_steps=2, validation_list="one.txt", validation_steps=2, validation_inference_steps=1)
    run(cfg)
    assert placed == [{"vae": "cpu", "text_encoder": "cpu"}]
    assert calls and all(in_validation for _, in_validation in calls), calls  # no encoder call in a step
    assert {name for name, _ in calls} == {"vae", "text_encoder"}  # validation used both (hooks work)
    rates = [row for row in logged if "samples_per_s" in row]
    assert len(rates) == 2
    for row in rates:
        assert isinstance(row["samples_per_s"], float) and row["samples_per_s"] > 0
        assert isinstance(row["mfu"], float) and row["mfu"] > 0


def test_throughput_meter_reports_samples_per_second_and_mfu():
    config_ = dict(num_attention_heads=2, attention_head_dim=16, in_channels=49, out_channels=16, time_embed_dim=32,
                   text_embed_dim=32, num_layers=2, patch_size=2, patch_size_t=None, max_text_seq_length=226)
    cfg = SimpleNamespace(num_frames=9, height=64, width=96)
    meter = throughput.Throughput(config_, cfg, devices=2, device="cpu")
    assert meter.peak is None and meter.flops_per_sample == flops.training_flops(config_, 3, 8, 12)
    meter.started = time.perf_counter() - 2.0
    assert set(meter.stop(4)) == {"samples_per_s"}  # no MFU without a known peak
    meter.peak, meter.started = 1e12, time.perf_counter() - 2.0
    rates = meter.stop(4)
    assert rates["samples_per_s"] == pytest.approx(2.0, rel=0.05)
    assert rates["mfu"] == pytest.approx(meter.flops_per_sample * 4 / 2.0 / 2e12, rel=0.05)


@pytest.mark.parametrize("patch_t", [None, 2])
def test_cogvideox_flops_match_torch_flop_counter(patch_t):
    from diffusers import CogVideoXTransformer3DModel

    from comfyui_dwm.cogvideox.sampler import rotary_embedding

    model = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=49, out_channels=16, time_embed_dim=32,
        text_embed_dim=32, num_layers=2, sample_width=16, sample_height=12, sample_frames=9, patch_size=2,
        patch_size_t=patch_t, use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False)
    frames = 3 if patch_t is None else 4
    rope = rotary_embedding(model, 12 * 8, 16 * 8, frames, "cpu")
    counted = count_flops(model, hidden_states=torch.randn(2, frames, 49, 12, 16), image_rotary_emb=rope,
                          encoder_hidden_states=torch.randn(2, 226, 32), timestep=torch.tensor([5, 5]))
    assert flops.forward_flops(model.config, frames, 12, 16, batch=2) == counted


def test_wan_flops_match_torch_flop_counter():
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=52,
                                  out_channels=16, text_dim=64, freq_dim=32, ffn_dim=96, num_layers=2,
                                  qk_norm="rms_norm_across_heads", image_dim=48, added_kv_proj_dim=64)
    counted = count_flops(model, hidden_states=torch.randn(2, 52, 3, 12, 16), timestep=torch.tensor([5, 5]),
                          encoder_hidden_states=torch.randn(2, 512, 64),
                          encoder_hidden_states_image=torch.randn(2, 257, 48))
    assert flops.forward_flops(model.config, 3, 12, 16, batch=2) == counted
    assert flops.training_flops(model.config, 3, 12, 16, batch=2) == 3 * counted


def count_flops(model, **inputs) -> int:
    """torch's own count; SDPA through its math path so the attention matmuls are counted on the CPU."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        model(**inputs)
    return counter.get_total_flops()


def test_peak_lookup_and_mfu():
    assert flops.peak_flops("NVIDIA H100 80GB HBM3") == 989.4e12
    assert flops.peak_flops("NVIDIA H100 PCIe") == 756.0e12
    assert flops.peak_flops("NVIDIA H200") == 989.4e12
    assert flops.peak_flops("NVIDIA A100-SXM4-80GB") == 312.0e12
    assert flops.peak_flops("NVIDIA A10") == 125.0e12
    assert flops.peak_flops("NVIDIA L40S") == 362.0e12 and flops.peak_flops("NVIDIA L4") == 121.0e12
    assert flops.peak_flops("NVIDIA GeForce RTX 4090") == 165.2e12
    assert flops.peak_flops("Tesla V100-SXM2-16GB") is None
    assert flops.mfu(1e12, 1.0, 2e12) == 0.5 and flops.mfu(1e12, 1.0, 2e12, devices=2) == 0.25
    assert flops.mfu(1e12, 1.0, None) is None
    assert flops.latent_size(49, 480, 720) == (13, 60, 90)
