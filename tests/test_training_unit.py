"""Trainer pieces on fixed tensors and tiny models: the objective, zero-init, what trains, inputs."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from diffusers import CogVideoXDDIMScheduler, CogVideoXTransformer3DModel

from comfyui_dwm.errors import DWMError
from comfyui_dwm.cogvideox.model import load_base
from comfyui_dwm.cogvideox.sampler import dwm_model_input, rotary_embedding
from comfyui_dwm.training.batch import make_step_inputs
from comfyui_dwm.training.config import load_config
from comfyui_dwm.dataset import read_list
from comfyui_dwm.training.data import DWMDataset
from comfyui_dwm.training.lora_setup import make_trainable, trainable_names
from comfyui_dwm.training.loss import diffusion_loss, training_loss

from test_training_fixtures import (FRAMES, HEIGHT, REPO, WIDTH, prepared_data, raw_data,  # noqa: F401
                                    tiny_v11, tiny_v15)

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def scheduler_of(path):
    return CogVideoXDDIMScheduler.from_pretrained(path, subfolder="scheduler")


def test_loss_matches_the_formula(tiny_v11):
    scheduler = scheduler_of(tiny_v11)
    g = torch.Generator().manual_seed(0)
    latents, v, noise = (torch.randn(3, 2, 16, 4, 4, generator=g) for _ in range(3))
    t = torch.tensor([0, 500, 999])
    noisy = scheduler.add_noise(latents, noise, t)
    got = diffusion_loss(scheduler, v, noisy, latents, t)
    # independent: the DDIM v-prediction algebra written out with the cumulative alphas
    a = scheduler.alphas_cumprod[t].double().view(-1, 1, 1, 1, 1)
    noisy_ref = a.sqrt() * latents.double() + (1 - a).sqrt() * noise.double()
    x0 = a.sqrt() * noisy_ref - (1 - a).sqrt() * v.double()
    want = ((x0 - latents.double()) ** 2 / (1 - a)).mean()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=0)


def small_inputs(transformer, batch=2, frames=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = [torch.randn(batch, frames, 16, 8, 12, generator=g) for _ in range(3)]
    text = torch.randn(batch, 226, transformer.config.text_embed_dim, generator=g)
    return x, text


@pytest.mark.parametrize("version", ["1.1", "1.5"])
def test_step_zero_equals_the_base_inpainting_model(version, tiny_v11, tiny_v15):
    path = tiny_v11 if version == "1.1" else tiny_v15
    base = load_base(path, "fp32")
    make_trainable(base, 64, 64, TARGETS, gradient_checkpointing=False)
    raw = CogVideoXTransformer3DModel.from_pretrained(path, subfolder="transformer").eval()
    (noisy, static, hands), text = small_inputs(raw, frames=4 if version == "1.5" else 3)
    rope = rotary_embedding(raw, 64, 96, noisy.shape[1], "cpu")
    t = torch.tensor([10, 700])
    with torch.no_grad():
        ours = base.transformer(hidden_states=dwm_model_input(noisy, static, hands, 0.7), encoder_hidden_states=text,
                                timestep=t, image_rotary_emb=rope, return_dict=False)[0]
        inpaint = raw(hidden_states=dwm_model_input(noisy, static, hands, 0.7)[:, :, :33], encoder_hidden_states=text,
                      timestep=t, image_rotary_emb=rope, return_dict=False)[0]
    torch.testing.assert_close(ours, inpaint, rtol=1e-5, atol=1e-5)


def test_only_lora_and_patch_embed_get_gradients(tiny_v11):
    base = load_base(tiny_v11, "fp32")
    params = make_trainable(base, 8, 8, TARGETS, gradient_checkpointing=True)
    names = trainable_names(base.transformer)
    assert names and all(".lora_" in n or n.startswith("patch_embed.proj.") for n in names)
    assert {"patch_embed.proj.weight", "patch_embed.proj.bias"} <= set(names)
    assert {n.split(".lora_")[0].split(".")[-1] for n in names if ".lora_" in n} >= {"to_q", "to_k", "to_v"}
    base.transformer.train()
    (latents, static, hands), text = small_inputs(base.transformer)
    loss = training_loss(base.transformer, base.transformer, scheduler_of(tiny_v11), latents, static, hands, text,
                         0.7, torch.Generator().manual_seed(0))
    loss.backward()
    for name, p in base.transformer.named_parameters():
        assert (p.grad is not None) == (name in names), name
    assert all(p.grad is not None for p in params)
    hand_grad = base.transformer.patch_embed.proj.weight.grad[:, 33:]
    assert hand_grad.abs().sum() > 0  # the zero-initialised hand channels do learn


def test_v15_pads_odd_latent_frames_like_the_sampler(tiny_v15):
    base = load_base(tiny_v15, "fp32")
    make_trainable(base, 8, 8, TARGETS, gradient_checkpointing=False)
    seen = {}

    def spy(model_in, **kwargs):
        seen["input"] = model_in
        return base.transformer.forward(model_in, **kwargs)

    (latents, static, hands), text = small_inputs(base.transformer, frames=3)
    loss = training_loss(lambda hidden_states, **kw: spy(hidden_states, **kw), base.transformer,
                         scheduler_of(tiny_v15), latents, static, hands, text, 0.7, torch.Generator().manual_seed(0))
    model_in = seen["input"]
    assert model_in.shape[1] == 4 and torch.isfinite(loss)
    torch.testing.assert_close(model_in[:, 0, 17:33], static[:, 0])  # padded frame repeats the first
    torch.testing.assert_close(model_in[:, 1:, 33:], hands)


def test_config_defaults_are_the_recipe_and_cli_overrides_every_key():
    cfg = load_config(os.path.join(REPO, "training", "configs", "dwm_cogvideox_5b_lora.yaml"))
    assert (cfg.lora_rank, cfg.lora_alpha, cfg.learning_rate, cfg.train_batch_size) == (64, 64, 1e-4, 7)
    assert (cfg.adam_beta1, cfg.adam_beta2, cfg.weight_decay, cfg.max_grad_norm) == (0.9, 0.95, 0.01, 1.0)
    assert (cfg.lr_scheduler, cfg.lr_warmup_steps, cfg.gradient_accumulation_steps) == ("cosine_with_restarts", 100, 2)
    assert (cfg.max_train_steps, cfg.seed, cfg.mixed_precision, cfg.gradient_checkpointing) == (15000, 42, "bf16", True)
    assert cfg.lora_target_modules == TARGETS and cfg.prompt_dropout == cfg.hand_dropout == 0
    from comfyui_dwm.training.config import parse_args

    cfg = parse_args(["--lora_rank", "8", "--gradient_checkpointing", "false", "--lora_target_modules", "to_q,to_v"])
    assert (cfg.lora_rank, cfg.gradient_checkpointing, cfg.lora_target_modules) == (8, False, ["to_q", "to_v"])
    with pytest.raises(DWMError, match="num_frames"):
        load_config(None, {"num_frames": "48"})


def test_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    folder = os.path.join(REPO, "training", "accelerate")
    kinds = {}
    for name in sorted(os.listdir(folder)):
        cfg = load_config_from_file(os.path.join(folder, name))
        kinds[name] = (str(cfg.distributed_type), cfg.num_processes)
    assert len(kinds) >= 5
    assert {"DistributedType.DEEPSPEED", "DistributedType.FSDP", "DistributedType.MULTI_GPU"} <= {k for k, _ in kinds.values()}


# -- bad input ----------------------------------------------------------------------------------

def dataset(root, text_dim=32, list_file="train.txt"):
    return DWMDataset(read_list(root, list_file), WIDTH, HEIGHT, FRAMES, text_dim)


def copy(src, tmp_path):
    root = str(tmp_path / "data")
    shutil.copytree(src, root)
    return root


def test_missing_video_names_sample_and_file(raw_data, tmp_path):
    root = copy(raw_data, tmp_path)
    os.remove(os.path.join(root, "videos_hands", "00013.mp4"))
    with pytest.raises(DWMError, match=r"sample 00013.*videos_hands/00013\.mp4"):
        dataset(root)


def test_unreadable_video_names_sample_and_file(raw_data, tmp_path):
    root = copy(raw_data, tmp_path)
    with open(os.path.join(root, "videos_static", "00055.mp4"), "wb") as fh:
        fh.write(b"not a video")
    with pytest.raises(DWMError, match=r"sample videos/00055\.mp4.*videos_static/00055\.mp4"):
        dataset(root)[0]


def test_corrupt_latents_name_sample_and_file(prepared_data, tmp_path):
    root = copy(prepared_data, tmp_path)
    with open(os.path.join(root, "video_latents", "00013.pt"), "wb") as fh:
        fh.write(b"\x00garbage")
    with pytest.raises(DWMError, match=r"sample 00013.*video_latents/00013\.pt"):
        dataset(root)[1]


def test_latents_of_wrong_size_or_base_are_refused(prepared_data, tmp_path):
    root = copy(prepared_data, tmp_path)
    path = os.path.join(root, "hand_video_latents", "00055.pt")
    torch.save(torch.zeros(16, 3, 8, 12), path)  # a sample, not the distribution the layout stores
    with pytest.raises(DWMError, match=r"hand_video_latents/00055\.pt has shape \[16, 3, 8, 12\], expected \[32, 3, 8, 12\]"):
        dataset(root)[0]
    ds = DWMDataset(read_list(root, "train.txt"), WIDTH * 2, HEIGHT, FRAMES, 32)
    with pytest.raises(DWMError, match="expected"):
        ds[1]
    with pytest.raises(DWMError, match=r"prompt_embeds_rewrite/00013\.pt .*another text encoder"):
        dataset(root, text_dim=4096)[1]


def test_empty_or_missing_list_file(raw_data, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    with pytest.raises(DWMError, match="lists no samples"):
        read_list(raw_data, str(empty))
    with pytest.raises(DWMError, match="does not exist"):
        read_list(raw_data, "nope.txt")


def test_on_the_fly_and_precomputed_items_mix_in_one_batch(raw_data, prepared_data, tiny_v11):
    base = load_base(tiny_v11, "fp32")
    items = [dataset(raw_data)[0], dataset(prepared_data)[0]]
    assert items[0]["video"].shape[0] == 3 and items[1]["video"].shape[0] == 32
    assert isinstance(items[0]["prompt"], str) and items[1]["prompt"].shape == (226, 32)
    inputs = make_step_inputs(base, items, torch.Generator().manual_seed(0), "cpu", torch.float32,
                              prompt_dropout=1.0, hand_dropout=1.0)
    assert inputs.latents.shape == (2, 3, 16, 8, 12)
    assert inputs.hands.abs().sum() == 0
    torch.testing.assert_close(inputs.prompt_embeds[0], inputs.prompt_embeds[1])  # both dropped to ""


def test_missing_train_extra_fails_before_training(monkeypatch):
    import importlib.util

    from comfyui_dwm.training.config import TrainConfig
    from comfyui_dwm.training.train import check_extras

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(DWMError, match=r"tensorboard not installed.*pip install -e '\.\[train\]'"):
        check_extras(TrainConfig(report_to="tensorboard"))
    check_extras(TrainConfig(report_to="none"))


def test_trainer_flags_take_dashes_like_the_cli_and_the_config_spelling(capsys):
    from comfyui_dwm.training.config import parse_args

    base = ["--model", "m", "--train-list", "t.txt", "--output-dir", "out"]
    assert parse_args(base + ["--data-root", "d"]).data_root == "d"
    assert parse_args(base + ["--data_root", "d"]).data_root == "d"
    with pytest.raises(SystemExit):  # no abbreviations: --data is not --data-root
        parse_args(base + ["--data", "d"])
    assert "unrecognized arguments: --data" in capsys.readouterr().err
