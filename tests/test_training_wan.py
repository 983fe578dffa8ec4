"""The Wan family in the trainer, on the tiny Wan kit: the reference loss, step 0, what trains, learning,
and the release folder it exports loading in the headless Wan path with the live model's velocity."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from comfyui_dwm.dataset import read_list
from comfyui_dwm.errors import DWMError
from comfyui_dwm.wan.checkpoint import load_wan_release
from comfyui_dwm.wan.lora import activate
from comfyui_dwm.wan.model import load_wan_base, load_wan_transformer
from comfyui_dwm.training.data import DWMDataset
from comfyui_dwm.training.families import for_model
from comfyui_dwm.training.families.wan import WAN_LAYOUT, WanFamily, flow_matching_loss, timestep_range
from comfyui_dwm.training.train import Trainer

from test_training_fixtures import SAMPLES, write_dataset  # noqa: F401
from test_training_wan_fixtures import (WAN_FRAMES, WAN_HEIGHT, WAN_WIDTH, tiny_wan, wan_config,  # noqa: F401
                                        wan_data, wan_raw)

F, H, W = 3, 6, 8  # latent frames, height, width of 9 frames at 64x48


def wan_inputs(seed: int, batch: int = 2, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    latents, static, hands = (torch.randn(batch, 16, F, H, W, generator=g) * scale for _ in range(3))
    text = torch.zeros(batch, 512, 4096)
    text[:, :5] = torch.randn(batch, 5, 4096, generator=g)
    return latents, static, hands, text


def by_hand(transformer, latents, static, hands, text, seed: int, clean=None) -> torch.Tensor:
    """The spec's formula with the same random draws (index, then noise), sigmas from the shift formula."""
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(0, 1000, (latents.shape[0],), generator=g)
    noise = torch.randn(latents.shape, generator=g)
    s = (1000 - index.double()) / 1000  # the unshifted training sigmas 1 .. 1/1000
    sigma = (5 * s / (1 + 4 * s)).float()
    x_t = (1 - sigma.view(-1, 1, 1, 1, 1)) * latents + sigma.view(-1, 1, 1, 1, 1) * noise
    x = torch.cat([x_t, torch.ones(latents.shape[0], 4, F, H, W), static, hands], dim=1)
    with torch.no_grad():
        pred = transformer(hidden_states=x, timestep=sigma * 1000, encoder_hidden_states=text,
                           encoder_hidden_states_image=torch.zeros(latents.shape[0], 257, 1280),
                           return_dict=False)[0]
    diff = pred - (noise - (latents if clean is None else clean))
    kept = diff.abs() <= 50
    return torch.where(kept, diff ** 2, torch.zeros_like(diff)).sum() / diff.numel(), kept


@pytest.fixture(scope="module")
def transformer(tiny_wan):
    return load_wan_transformer(tiny_wan, "fp32")


@pytest.mark.parametrize("scale", [1.0, 40.0])  # 40: many errors beyond 50, which the reference drops
def test_loss_equals_an_independent_computation_of_the_formula(transformer, scale):
    from comfyui_dwm.wan.sampler import flow_scheduler

    x = wan_inputs(1, scale=scale)
    with torch.no_grad():
        loss = flow_matching_loss(transformer, flow_scheduler(5.0), *x, 1280, torch.Generator().manual_seed(7))
    expected, kept = by_hand(transformer, *x, seed=7)
    assert (not kept.all()) == (scale > 1)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_a_sample_whose_hands_are_dropped_learns_the_static_scene(transformer):
    from comfyui_dwm.wan.sampler import flow_scheduler

    latents, static, hands, text = wan_inputs(2)
    dropped = torch.tensor([True, False])
    hands = torch.where(dropped.view(-1, 1, 1, 1, 1), torch.zeros_like(hands), hands)
    with torch.no_grad():
        loss = flow_matching_loss(transformer, flow_scheduler(5.0), latents, static, hands, text, 1280,
                                  torch.Generator().manual_seed(4), dropped)
    clean = torch.stack([static[0], latents[1]])
    expected, _ = by_hand(transformer, latents, static, hands, text, seed=4, clean=clean)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_ranks_draw_timesteps_from_the_slices_of_the_reference():
    assert timestep_range(0, 1) == (0, 1000)
    assert [timestep_range(r, 8) for r in (0, 3, 7)] == [(0, 125), (375, 500), (875, 1000)]
    assert [timestep_range(r, 3) for r in range(3)] == [(0, 1000)] * 3  # 1000 does not split in 3
    assert [timestep_range(r, 6) for r in range(6)] == [(0, 500)] * 3 + [(500, 1000)] * 3


def trainable_family(tiny_wan, tmp_path, **overrides) -> WanFamily:
    cfg = wan_config(tiny_wan, str(tmp_path), str(tmp_path / "out"), **overrides)
    family = for_model(tiny_wan)
    assert isinstance(family, WanFamily)
    family.load(cfg, torch.float32, "cpu")
    family.params = family.make_trainable(cfg)
    return family


def velocity(model, seed: int = 3, t: float = 600.0) -> torch.Tensor:
    latents, static, hands, text = wan_inputs(seed, batch=1)
    x = torch.cat([latents, torch.ones(1, 4, F, H, W), static, hands], dim=1)
    with torch.no_grad():
        return model(hidden_states=x, timestep=torch.tensor([t]), encoder_hidden_states=text,
                     encoder_hidden_states_image=torch.zeros(1, 257, 1280), return_dict=False)[0]


def test_step_zero_is_the_base_model(tiny_wan, tmp_path, transformer):
    family = trainable_family(tiny_wan, tmp_path)
    assert torch.equal(velocity(family.base.transformer), velocity(transformer))


def test_only_every_linear_lora_and_the_patch_embedding_get_gradients(tiny_wan, tmp_path):
    family = trainable_family(tiny_wan, tmp_path, lora_rank=4, lora_alpha=4)
    model = family.base.transformer
    with torch.no_grad():  # non-zero B so that every LoRA factor gets a gradient
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    x = wan_inputs(5, batch=1)
    flow_matching_loss(model, family.scheduler, *x, 1280, torch.Generator().manual_seed(0)).backward()
    graded = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert graded == {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"patch_embedding.weight", "patch_embedding.bias"} <= graded
    assert all(n.startswith("patch_embedding.") or ".lora_" in n for n in graded)
    linears = {n for n, m in model.named_modules() if isinstance(getattr(m, "base_layer", None), torch.nn.Linear)}
    assert len(linears) == 12 * model.config.num_layers + 8  # every Linear of Wan 2.1 i2v
    assert {n.rsplit(".lora_", 1)[0] for n in graded if ".lora_" in n} == linears


def test_prepare_writes_the_wan_folders_and_the_dataset_reads_them(wan_data, tiny_wan):
    sample = read_list(wan_data, "train.txt")[0]
    for key in ("video", "static", "hands"):
        latents = torch.load(WAN_LAYOUT.latents(sample, key), weights_only=True)
        assert "_wan" in WAN_LAYOUT.latents(sample, key) and latents.shape == (16, F, H, W)
    embeds = torch.load(WAN_LAYOUT.prompt_embeds(sample), weights_only=True)
    assert embeds.ndim == 2 and embeds.shape[1] == 4096 and 1 <= embeds.shape[0] <= 512
    item = DWMDataset([sample], WAN_WIDTH, WAN_HEIGHT, WAN_FRAMES, 4096, WAN_LAYOUT)[0]
    assert torch.equal(item["video"], torch.load(WAN_LAYOUT.latents(sample, "video"), weights_only=True))


def test_prepare_resumes_and_writes_the_same_sample_again(wan_data, tiny_wan, tmp_path):
    from comfyui_dwm.training.prepare import prepare

    root = str(tmp_path / "data")
    shutil.copytree(wan_data, root)
    sample = read_list(root, "train.txt")[1]
    hands, kept = WAN_LAYOUT.latents(sample, "hands"), WAN_LAYOUT.latents(sample, "video")
    before, stamp = torch.load(hands, weights_only=True), os.stat(kept).st_mtime_ns
    os.remove(hands)
    assert prepare(root, "train.txt", tiny_wan, WAN_WIDTH, WAN_HEIGHT, WAN_FRAMES, "fp32") == []
    assert torch.equal(torch.load(hands, weights_only=True), before)  # noise seeded by the sample, not the run
    assert os.stat(kept).st_mtime_ns == stamp  # existing files are skipped


def test_wan_latents_of_another_size_are_refused(wan_data, tmp_path):
    sample = read_list(wan_data, "train.txt")[0]
    with pytest.raises(DWMError, match=r"video_latents_wan/00055\.pt has shape \[16, 3, 6, 8\], expected "
                                       r"\[16, 3, 4, 6\] \(Wan VAE latent sample of 9 frames at 48x32\)"):
        DWMDataset([sample], 48, 32, WAN_FRAMES, 4096, WAN_LAYOUT).probe()


def test_a_wan_model_that_is_not_fun_inp_is_refused_before_loading(tmp_path, wan_data):
    import json

    (tmp_path / "t2v").mkdir()
    (tmp_path / "t2v" / "config.json").write_text(json.dumps({"model_type": "t2v", "in_dim": 16, "dim": 8}))
    from comfyui_dwm.training.train import run

    with pytest.raises(DWMError, match=r"^model: .*t2v.*in_dim 16"):
        run(wan_config(str(tmp_path / "t2v"), wan_data, str(tmp_path / "out")))


@pytest.fixture(scope="module")
def overfit(tmp_path_factory, tiny_wan, wan_data):
    out = str(tmp_path_factory.mktemp("wan_overfit") / "overfit")
    cfg = wan_config(tiny_wan, wan_data, out, train_list="one.txt", max_train_steps=30, checkpointing_steps=15,
                     gradient_accumulation_steps=1, learning_rate=3e-3, lr_warmup_steps=3,
                     validation_list="one.txt", validation_steps=30, validation_inference_steps=2)
    trainer = Trainer(cfg)
    return trainer, trainer.run()


@torch.no_grad()
def fixed_loss(transformer, data_root, repeats=6) -> float:
    """The objective on one prepared sample at fixed timesteps and noise (the same for every model)."""
    from comfyui_dwm.wan.sampler import flow_scheduler, pad_text

    item = DWMDataset(read_list(data_root, "one.txt"), WAN_WIDTH, WAN_HEIGHT, WAN_FRAMES, 4096, WAN_LAYOUT)[0]
    x = [item[k].unsqueeze(0) for k in ("video", "static", "hands")] + [pad_text(item["prompt"].unsqueeze(0))]
    g, scheduler = torch.Generator().manual_seed(11), flow_scheduler(5.0)
    return sum(float(flow_matching_loss(transformer, scheduler, *x, 1280, g)) for _ in range(repeats)) / repeats


def released(tiny_wan, folder):
    base = load_wan_base(tiny_wan, "fp32", with_text_and_vae=False)
    activate(base, [(load_wan_release(folder), 1.0)])
    return base.transformer


def test_overfitting_one_sample_lowers_the_loss(overfit, tiny_wan, wan_data):
    _, result = overfit
    before = fixed_loss(load_wan_transformer(tiny_wan, "fp32"), wan_data)
    after = fixed_loss(released(tiny_wan, result.final_lora), wan_data)
    assert after < 0.7 * before, (before, after)  # measured: 3.39 -> 1.74
    videos = os.listdir(os.path.join(result.output_dir, "validation", "step-30"))
    assert "00055.mp4" in videos and "00055-compare.mp4" in videos


def test_every_checkpoint_is_a_release_folder_with_the_live_models_velocity(overfit, tiny_wan):
    trainer, result = overfit
    folder = os.path.join(result.output_dir, "checkpoint-30")
    tensors = load_file(os.path.join(folder, "lora_diffusion_pytorch_model.safetensors"))
    assert "lora_unet__blocks_0_cross_attn_k_img.lora_down.weight" in tensors
    assert all(k.startswith("lora_unet__") for k in tensors)
    assert tensors["lora_unet__head_head.alpha"].ndim == 0 and float(tensors["lora_unet__head_head.alpha"]) == 12
    release = load_wan_release(folder)
    assert release.rank == 8 and release.in_channels == 52 and release.config["transformer"]["condition_channels"] == 16
    live = trainer.transformer.eval()
    for path in (folder, result.final_lora):
        assert (velocity(released(tiny_wan, path)) - velocity(live)).abs().max() <= 1e-4
    assert (velocity(live) - velocity(load_wan_transformer(tiny_wan, "fp32"))).abs().max() > 1e-3
    assert os.path.isdir(os.path.join(result.output_dir, "checkpoint-15"))
    saved = load_file(os.path.join(folder, "model.safetensors"))  # accelerate's state: trainable tensors only
    assert saved.keys() == {n for n, p in live.named_parameters() if p.requires_grad}


def test_training_from_raw_videos_encodes_them_on_the_fly(tmp_path, tiny_wan, wan_raw):
    from comfyui_dwm.training.train import run

    result = run(wan_config(tiny_wan, wan_raw, str(tmp_path / "raw"), max_train_steps=1, checkpointing_steps=1,
                            prompt_dropout=0.5, hand_dropout=0.5))
    assert result.step == 1 and load_wan_release(result.final_lora).rank == 8


FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def test_the_reference_inference_gives_a_trained_export_our_velocity(tiny_wan):
    """A bf16 export of this trainer (fixtures/wan_trained_release, see wan_trained_release.md) run by the
    reference's own inference model code (frozen velocities), against our headless Wan path."""
    import hashlib
    import json

    from safetensors import safe_open

    from comfyui_dwm.wan.sampler import pad_text

    path = os.path.join(FIXTURES, "wan_trained_reference_velocity.safetensors")
    with safe_open(path, "pt") as fh:
        meta = json.loads(fh.metadata()["dwm_reference"])
    with open(os.path.join(tiny_wan, "diffusion_pytorch_model.safetensors"), "rb") as fh:
        if hashlib.sha256(fh.read()).hexdigest() != meta["base_sha256"]:
            pytest.skip("this torch builds another tiny Wan base than the one the fixture was made on")
    ref = load_file(path)
    model = released(tiny_wan, os.path.join(FIXTURES, "wan_trained_release"))
    for t in ref["timesteps"]:
        with torch.no_grad():
            v = model(hidden_states=ref["x"], timestep=t.view(1), encoder_hidden_states=pad_text(ref["context"]),
                      encoder_hidden_states_image=torch.zeros(1, 257, 1280), return_dict=False)[0]
        expected = ref[f"velocity_lora_t{int(t)}"]
        assert (v - expected).abs().max() <= 1e-4
        assert (expected - ref[f"velocity_base_t{int(t)}"]).abs().max() > 0.5  # the training changed the model
