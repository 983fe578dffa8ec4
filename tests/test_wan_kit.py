"""Wan kit: umT5 key map and prompt trimming, VAE loading and normalisation, scene encoding, tiny base/release."""

from __future__ import annotations

import os

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from conftest import INTEROP, SHARED_WAN_BASE, WAN_BASE_SEED, expect_log, extras, random_frames
from comfyui_dwm.cogvideox.tiny import tiny_t5_tokenizer
from comfyui_dwm.errors import DWMError
from comfyui_dwm.frames import prepare_frames
from comfyui_dwm.wan import tiny
from comfyui_dwm.wan.checkpoint import NON_LORA_FILE, WAN_LORA_FILE
from comfyui_dwm.wan.scene import encode_wan_scene
from comfyui_dwm.wan.text import encode_wan_prompt, load_wan_text_encoder, prompt_ids, umt5_to_wan
from comfyui_dwm.wan.vae import WAN22_KEY, decode_wan_latents, diffusers_to_wan_vae, encode_wan_video, load_wan_vae

WAN_RELEASE = os.path.join(INTEROP, "reference-wan-lora")


@pytest.fixture(scope="module")
def base(wan_base_dir):
    return wan_base_dir


@pytest.fixture(scope="module")
def vae(base):
    return load_wan_vae(base, "fp32")


def small_umt5(vocab: int):
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    config = UMT5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=24, num_layers=3, num_heads=4,
                        feed_forward_proj="gated-gelu", dropout_rate=0.0)
    model = UMT5EncoderModel(config).eval()
    for p in model.parameters():  # non-trivial per-layer position tables and gains
        torch.nn.init.normal_(p, std=0.3)
    return model


@pytest.fixture(scope="module")
def umt5_folder(tmp_path_factory):
    """A Wan-layout umT5 .pth, its tokenizer, and a decoy tokenizer (XLM-R-like ids) sorted first."""
    folder = tmp_path_factory.mktemp("umt5")
    model = small_umt5(len(tiny_t5_tokenizer()))
    torch.save(umt5_to_wan(model.state_dict()), folder / "encoder.pth")
    tiny_t5_tokenizer().save_pretrained(folder / "google" / "umt5-xxl")
    from transformers import T5Tokenizer

    T5Tokenizer(vocab=[("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581a", -1.0)],
                extra_ids=0).save_pretrained(folder / "a-decoy")
    return str(folder), model


def test_umt5_wan_layout_round_trip(umt5_folder):
    folder, model = umt5_folder
    state = torch.load(os.path.join(folder, "encoder.pth"), weights_only=True)
    assert {"token_embedding.weight", "norm.weight", "blocks.2.pos_embedding.embedding.weight",
            "blocks.0.ffn.gate.0.weight", "blocks.0.ffn.fc1.weight"} <= set(state)
    assert state["blocks.1.pos_embedding.embedding.weight"].shape == (32, 4)  # one table per block
    encoder, tokenizer = load_wan_text_encoder(folder, "fp32")
    cfg = encoder.config
    assert (cfg.d_model, cfg.d_kv, cfg.num_heads, cfg.d_ff, cfg.num_layers) == (32, 8, 4, 24, 3)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1)  # umT5's, not the decoy's
    ids = prompt_ids(tokenizer, "open the drawer, then close it again slowly")
    torch.testing.assert_close(encoder(input_ids=ids).last_hidden_state, model(input_ids=ids).last_hidden_state)


def test_transformers_umt5_folder_loads(tmp_path, umt5_folder):
    _, model = umt5_folder
    model.save_pretrained(tmp_path)
    tiny_t5_tokenizer().save_pretrained(tmp_path)
    encoder, tokenizer = load_wan_text_encoder(str(tmp_path), "fp32")
    ids = prompt_ids(tokenizer, "hand on the cup")
    torch.testing.assert_close(encoder(input_ids=ids).last_hidden_state, model(input_ids=ids).last_hidden_state)


def test_prompt_trimmed_like_the_reference(umt5_folder):
    folder, _ = umt5_folder
    encoder, tokenizer = load_wan_text_encoder(folder, "fp32")
    prompt = "i pick up the cup"
    emb = encode_wan_prompt(encoder, tokenizer, prompt, cache={})
    real = len(tokenizer(prompt).input_ids)  # with the end token
    assert emb.shape == (1, real, 32) and emb.dtype == torch.float32 and emb.device.type == "cpu"
    # the reference: pad to 512, run with the attention mask, keep the first `real` rows
    padded = tokenizer(prompt, padding="max_length", max_length=512, truncation=True, return_tensors="pt")
    with torch.no_grad():
        ref = encoder(input_ids=padded.input_ids, attention_mask=padded.attention_mask).last_hidden_state
    torch.testing.assert_close(emb, ref[:, :real], rtol=0, atol=1e-5)
    assert encode_wan_prompt(encoder, tokenizer, "", cache={}).shape == (1, 1, 32)  # just </s>


def test_prompt_cache_and_truncation(umt5_folder, caplog):
    folder, _ = umt5_folder
    encoder, tokenizer = load_wan_text_encoder(folder, "fp32")
    cache = {}
    first = encode_wan_prompt(encoder, tokenizer, "a b", cache=cache)
    first.zero_()  # callers get a copy
    assert list(cache) == ["a b"] and not torch.equal(encode_wan_prompt(encoder, tokenizer, "a b", cache=cache), first)
    with expect_log(caplog, "longer than the 512-token text window"):
        long = encode_wan_prompt(encoder, tokenizer, "ab " * 300, cache=cache)
    assert long.shape[1] == 512


def test_vae_converter_round_trip_and_shapes(tmp_path, vae):
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    state = vae.state_dict()
    wan = diffusers_to_wan_vae(state)
    assert "decoder.head.0.gamma" in wan and "decoder.upsamples.4.shortcut.weight" in wan
    assert set(convert_wan_vae_to_diffusers(wan)) == set(state)
    save_file({k: v.contiguous() for k, v in wan.items()}, str(tmp_path / "wan_2.1_vae.safetensors"))
    again = load_wan_vae(str(tmp_path / "wan_2.1_vae.safetensors"), "fp32")
    assert again.config.base_dim == tiny.TINY_VAE_DIM and again.config.z_dim == 16
    video = random_frames(9, 48, 64).permute(3, 0, 1, 2) * 2 - 1
    z = encode_wan_video(again, video)
    assert z.shape == (1, 16, 3, 6, 8) and z.dtype == torch.float32
    raw = vae.encode(video.unsqueeze(0)).latent_dist.mode()
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(z, (raw - mean) / std)
    frames = decode_wan_latents(again, z)
    assert frames.shape == (1, 9, 48, 64, 3) and 0 <= frames.min() and frames.max() <= 1


def test_vae_rejects_other_files(tmp_path, base, vae):
    with pytest.raises(DWMError, match="vae: no Wan VAE weights"):
        load_wan_vae(str(tmp_path), "fp32")
    save_file(load_file(os.path.join(base, tiny.TRANSFORMER_FILE)), str(tmp_path / "transformer.safetensors"))
    with pytest.raises(DWMError, match="is not a Wan VAE"):
        load_wan_vae(str(tmp_path / "transformer.safetensors"), "fp32")
    wan22 = diffusers_to_wan_vae(vae.state_dict()) | {WAN22_KEY: torch.zeros(1)}
    torch.save(wan22, str(tmp_path / "wan22.pth"))
    with pytest.raises(DWMError, match="Wan 2.2 VAE"):
        load_wan_vae(str(tmp_path / "wan22.pth"), "fp32")


def test_scene_seeded_hand_sample(vae):
    static, hands = random_frames(9, 48, 64, 1), random_frames(9, 60, 80, 2)  # hands resized to match
    a = encode_wan_scene(vae, static, hands, 64, 48, seed=3)
    b = encode_wan_scene(vae, static, hands, 64, 48, seed=3)
    c = encode_wan_scene(vae, static, hands, 64, 48, seed=4)
    assert a.static.shape == a.hands.shape == (1, 16, 3, 6, 8) and (a.width, a.height, a.num_frames) == (64, 48, 9)
    assert torch.equal(a.hands, b.hands) and not torch.equal(a.hands, c.hands)
    assert torch.equal(a.static, c.static)  # the static video uses the mode
    hands_mode = encode_wan_video(vae, prepare_frames(hands, 64, 48, None, "hand video"))
    assert not torch.allclose(a.hands, hands_mode)  # the hand latents are a sample, not the mode


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_frames=8), "num_frames: 8 is not of the form 4k\\+1"),
    (dict(width=100), "width: 100 is not a positive multiple of 16"),
    (dict(hands=random_frames(5, 48, 64)), "hand video: 5 usable frames, but the static video has 9"),
])
def test_scene_rejects_bad_inputs(vae, kwargs, match):
    hands = kwargs.pop("hands", random_frames(9, 48, 64))
    args = dict(width=64, height=48) | kwargs
    with pytest.raises(DWMError, match=match):
        encode_wan_scene(vae, random_frames(9, 48, 64), hands, **args)


def test_tiny_base_is_a_complete_wan_i2v_folder(base):
    from comfyui_dwm.family import base_family
    from comfyui_dwm.wan.model import read_wan_config

    for name in ("config.json", tiny.TRANSFORMER_FILE, tiny.VAE_FILE, tiny.UMT5_FILE,
                 os.path.join(tiny.TOKENIZER_DIR, "tokenizer_config.json")):
        assert os.path.isfile(os.path.join(base, name)), name
    config = read_wan_config(base)
    assert base_family(base) == "wan" and (config["model_type"], config["in_dim"]) == ("i2v", 36)
    assert config["dim"] // 128 == config["num_heads"] and config["text_dim"] == 4096  # ComfyUI's detection
    encoder, _ = load_wan_text_encoder(base, "fp32")
    assert encoder.config.d_model == config["text_dim"]
    state = load_file(os.path.join(base, tiny.TRANSFORMER_FILE))
    assert {v.dtype for v in state.values()} == {torch.bfloat16}


def test_tiny_base_is_bit_identical_when_built_again(base, tmp_path):
    """The reference velocities (tests/fixtures) were computed on it: a rebuild must give the same bytes."""
    again = tiny.make_tiny_wan_base(str(tmp_path / "again"), seed=WAN_BASE_SEED)
    files = sorted(os.path.relpath(os.path.join(d, f), base) for d, _, names in os.walk(base) for f in names)
    assert len(files) == 6
    for name in files:
        with open(os.path.join(base, name), "rb") as a, open(os.path.join(again, name), "rb") as b:
            assert a.read() == b.read(), name


@pytest.mark.parametrize("kit", [WAN_RELEASE, *extras(SHARED_WAN_BASE)])
def test_tiny_base_has_the_shapes_the_reference_written_kits_need(base, kit):
    """Every tensor the release's LoRA targets (and, when present, the reference-written base) fits."""
    state = load_file(os.path.join(base, tiny.TRANSFORMER_FILE))
    if os.path.isfile(os.path.join(kit, tiny.TRANSFORMER_FILE)):
        shapes = {k: v.shape for k, v in load_file(os.path.join(kit, tiny.TRANSFORMER_FILE)).items()}
        assert set(shapes) == set(state)
    else:
        from comfyui_dwm.wan.checkpoint import load_wan_release

        lora = load_wan_release(kit).lora
        shapes = {f"{m}.weight": (up.shape[0], down.shape[1]) for m, (down, up, _) in lora.items()}
        assert len(shapes) == 32
    assert {k: tuple(state[k].shape) for k in shapes} == {k: tuple(v) for k, v in shapes.items()}


def test_tiny_release_in_the_reference_format(base, tmp_path):
    from comfyui_dwm.wan.checkpoint import load_wan_release

    out = tiny.make_tiny_wan_release(base, str(tmp_path / "release"), seed=1)
    lora = load_file(os.path.join(out, WAN_LORA_FILE))
    reference = load_file(os.path.join(WAN_RELEASE, WAN_LORA_FILE))
    assert {k: (v.shape, v.dtype) for k, v in lora.items()} == {k: (v.shape, v.dtype) for k, v in reference.items()}
    assert lora["lora_unet__blocks_0_cross_attn_k_img.alpha"].item() == 12.0
    patch = load_file(os.path.join(out, NON_LORA_FILE))
    assert patch["patch_embedding.weight"].shape == (256, 52, 1, 2, 2)
    assert patch["patch_embedding.weight"][:, 36:].abs().min() > 0  # hand channels are trained (non-zero)
    with open(os.path.join(out, tiny.RELEASE_YAML), encoding="utf-8") as fh:
        experiment = yaml.safe_load(fh)
    assert experiment["pipeline"]["type"] == "wan2.1_fun_inp_hand_concat"
    assert (experiment["training"]["lora_rank"], experiment["training"]["lora_alpha"]) == (8, 12)
    release = load_wan_release(out)
    assert (release.rank, release.in_channels, len(release.lora)) == (8, 52, 32)


def test_default_tiny_base_is_built_once_into_the_cache(tmp_path, monkeypatch):
    built = []

    def fake_make(path):
        built.append(path)
        os.makedirs(path)
        open(os.path.join(path, "config.json"), "w").close()

    monkeypatch.setenv("DWM_CACHE", str(tmp_path))
    monkeypatch.setattr(tiny, "make_tiny_wan_base", fake_make)
    first, second = tiny.default_tiny_wan_base(), tiny.default_tiny_wan_base()
    assert first == second == str(tmp_path / "tiny-wan21-fun-inp") and built == [first]
