"""The DWM-Wan nodes inside a real ComfyUI (imported, not served): host model, host LoRA machinery, host
``WAN21.concat_cond`` and sampler, against the reference implementation's velocity on the tiny base
built here (seed 0) with the shipped reference-written release (tests/fixtures/interop).

One child process in COMFYUI_PYTHON (cwd COMFYUI_DIR, --cpu) registers the pack through the host's own
``load_custom_node``, runs every check and prints one JSON line; the tests below assert on it. The
conditioning goes through the node and then the host's ``extra_conds``, so the channel layout the
node produces is what is compared with tests/fixtures/wan_reference_velocity.safetensors (fp32).
"""
from __future__ import annotations

import json
import subprocess

import pytest

from .conftest import REPO, _host

pytestmark = pytest.mark.host
INTEROP = REPO / "tests" / "fixtures" / "interop"
FIXTURE = REPO / "tests" / "fixtures" / "wan_reference_velocity.safetensors"
TRAINED = REPO / "tests" / "fixtures" / "wan_trained_release"  # our trainer's export, with the reference's
TRAINED_FIXTURE = REPO / "tests" / "fixtures" / "wan_trained_reference_velocity.safetensors"  # velocities
WAN_BASE_SEED = 0  # the base FIXTURE was made on
TOL = 1e-4

CHILD = r'''
import asyncio, json, logging, os, sys
sys.path.insert(0, os.getcwd())
from comfy.cli_args import args
args.cpu = True
import folder_paths, torch
from safetensors.torch import load_file, save_file
REPO, INTEROP, FIXTURE, BASE, tmp, TRAINED, TRAINED_FIXTURE = sys.argv[1:8]
links = {"custom_nodes/ComfyUI-DWM": REPO, "diffusion_models/tiny-wan": BASE, "loras/dwm-wan-trained": TRAINED,
         "diffusion_models/tiny_fun_inp.safetensors": BASE + "/diffusion_pytorch_model.safetensors",
         "loras/dwm-wan": INTEROP + "/reference-wan-lora", "loras/cog": INTEROP + "/reference-lora-v11"}
for sub, src in links.items():
    os.makedirs(os.path.dirname(os.path.join(tmp, sub)), exist_ok=True)
    os.symlink(src, os.path.join(tmp, sub))
os.makedirs(os.path.join(tmp, "diffusion_models", "wan-t2v"))  # a Wan that is not i2v: neither listed nor loaded
with open(os.path.join(tmp, "diffusion_models", "wan-t2v", "config.json"), "w") as fh:
    json.dump({"model_type": "t2v", "in_dim": 16, "dim": 256, "num_heads": 2}, fh)
for name in ("diffusion_models", "loras"):
    folder_paths.add_model_folder_path(name, os.path.join(tmp, name), is_default=True)
import nodes, comfy.model_management as mm, comfy.sd, comfy.ldm.wan.vae
from comfy_extras.nodes_model_advanced import ModelSamplingSD3
from comfy_api.latest import InputImpl, Types
from fractions import Fraction
asyncio.run(nodes.load_custom_node(os.path.join(tmp, "custom_nodes/ComfyUI-DWM")))
M = nodes.NODE_CLASS_MAPPINGS
L, R, C = M["DWMWanModelLoader"], M["DWMWanLoraLoader"], M["DWMWanSceneConditioning"]
warnings = []
class Collect(logging.Handler):
    def emit(self, record): warnings.append(record.getMessage())
logging.getLogger("dwm").addHandler(Collect())
IDS = ("DWMWanModelLoader", "DWMWanLoraLoader", "DWMWanSceneConditioning")
out = {"info": {k: M[k].GET_NODE_INFO_V1() for k in IDS},
       "display": {k: nodes.NODE_DISPLAY_NAME_MAPPINGS.get(k) for k in ("DWMWanModelLoader", "DWMWanLoraLoader")}}
fx = load_file(FIXTURE)
x, noise = fx["x"], fx["x"][:, :16]
context = torch.zeros(1, 512, 4096)  # the host's umT5 gives 512 tokens, zeros past the prompt
context[:, :fx["context"].shape[1]] = fx["context"]
cond = [[context, {}]]

class LatentVAE:  # a VAE stand-in handing out the given latents, one per encode call
    def __init__(self, *latents): self.out = list(latents)
    def encode(self, pixels): return self.out.pop(0)

def velocity(model, t, lowvram=0):
    images = torch.rand(9, 48, 64, 3)
    raw = [model.model.process_latent_out(x[:, i:i + 16].clone()) for i in (20, 36)]  # host normalises them back
    pos = C.execute(cond, cond, LatentVAE(*raw), 64, 48, 9, 1,
                    static_images=images, hand_images=images).result[0]
    mm.unload_all_models()
    if lowvram:
        model.patch_model(torch.device("cpu"), lowvram_model_memory=lowvram)
        out["lowvram_patches"] = model.model.lowvram_patch_counter
    else:
        mm.load_models_gpu([model])
    kw = dict(pos[0][1], cross_attn=pos[0][0])
    conds = {k: v.cond for k, v in model.model.extra_conds(noise=noise, device=torch.device("cpu"), **kw).items()}
    sigma = torch.tensor([t / 1000.0])
    denoised = model.model.apply_model(noise, sigma, **conds)
    if lowvram:
        model.unpatch_model(torch.device("cpu"))
    return (noise - denoised) / sigma

def err(v, key): return (v - fx[key]).abs().max().item()

def refusal(fn):
    try:
        fn()
    except Exception as e:
        return type(e).__name__ + ": " + str(e)
    return "no error"

with torch.inference_mode():
    base = L.execute("tiny-wan", "default").result[0]
    single = M["UNETLoader"]().load_unet("tiny_fun_inp.safetensors", "default")[0]
    out["dtype"] = str(base.model.get_dtype())
    out["choices"] = [L.INPUT_TYPES()["required"]["model_name"][1]["options"],
                      R.INPUT_TYPES()["required"]["lora_name"][1]["options"]]
    vel = {}
    for src, model in (("folder", base), ("single", single)):
        for s, ref in ((1.0, "velocity_lora"), (0.0, "velocity_base")):
            dwm = R.execute(model, "dwm-wan", s).result[0]
            for t in (700, 250):
                vel[f"{src}_s{s:g}_t{t}"] = err(velocity(dwm, t), f"{ref}_t{t}")
    vel["stock_after_dwm_t700"] = err(velocity(base, 700), "velocity_base_t700")  # object patch undone
    # Our trainer's export: through our LoRA node, and through the core LoRA loader (the release file as
    # it is) plus the 52-channel patch embedding set the way our node sets it.
    trained_fx = load_file(TRAINED_FIXTURE)
    trained = R.execute(base, "dwm-wan-trained", 1.0).result[0]
    stock = M["LoraLoaderModelOnly"]().load_lora_model_only(
        base, "dwm-wan-trained/lora_diffusion_pytorch_model.safetensors", 1.0)[0]
    from comfyui_dwm.wan.checkpoint import blend_patch_embedding
    patch = next(m for n, m in sys.modules.items() if n.endswith(".nodes.wan.patch"))  # the pack, as loaded
    conv, weights = patch.base_patch_embedding(base)
    stock.add_object_patch("diffusion_model.patch_embedding",
                           patch.widened_conv(conv, blend_patch_embedding(weights, patch.get_release(TRAINED), 1.0)))
    out["trained"] = {f"{name}_t{t}": (velocity(model, t) - trained_fx[f"velocity_lora_t{t}"]).abs().max().item()
                      for name, model in (("node", trained), ("stock_loader", stock)) for t in (700, 250)}
    out["stock_modules"] = [len(stock.patches), len(patch.get_release(TRAINED).lora)]
    dwm = R.execute(base, "dwm-wan", 1.0).result[0]
    vel["lowvram_s1_t700"] = err(velocity(dwm, 700, lowvram=200_000), "velocity_lora_t700")
    out["velocity"] = vel
    out["shares_base"] = dwm.is_clone(base) and dwm.model is base.model
    out["base_in_channels"] = base.model.diffusion_model.patch_embedding.weight.shape[1]
    g = torch.Generator().manual_seed(0)  # a LightX2V-style LoRA chained by the core loader
    lx = {}
    for i in range(2):
        lx.update({f"diffusion_model.blocks.{i}.ffn.0.lora_down.weight": torch.randn(4, 256, generator=g) * 0.1,
                   f"diffusion_model.blocks.{i}.ffn.0.lora_up.weight": torch.randn(256, 4, generator=g) * 0.1})
    save_file(lx, os.path.join(tmp, "loras", "lightx2v_tiny.safetensors"))
    chain = lambda s: M["LoraLoaderModelOnly"]().load_lora_model_only(dwm, "lightx2v_tiny.safetensors", s)[0]
    out["chain"] = [err(velocity(chain(s), 700), "velocity_lora_t700") for s in (1.0, 0.0)]
    fp8 = R.execute(L.execute("tiny-wan", "fp8_e4m3fn").result[0], "dwm-wan", 1.0).result[0]
    v8 = velocity(fp8, 700)
    out["fp8"] = [bool(torch.isfinite(v8).all()), err(v8, "velocity_lora_t700"),
                  fx["velocity_lora_t700"].abs().max().item()]
    # A real host Wan 2.1 VAE (random, small width) and the core sampler, end to end.
    vae_net = comfy.ldm.wan.vae.WanVAE(dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                       temperal_downsample=[False, True, True])
    vae = comfy.sd.VAE(sd={k: torch.randn(v.shape, generator=g) * 0.05 for k, v in vae_net.state_dict().items()})
    static, hands = torch.rand(13, 40, 60, 3, generator=g), torch.rand(7, 48, 64, 3, generator=g)
    pos, neg, lat = C.execute(cond, cond, vae, 64, 48, 9, 2, static_images=static, hand_images=hands).result
    out["warnings"] = list(warnings)
    video = lambda images: InputImpl.VideoFromComponents(Types.VideoComponents(images=images, frame_rate=Fraction(8)))
    from_video = C.execute(cond, cond, vae, 64, 48, 9, 2, static_video=video(static), hand_video=video(hands)).result
    out["video_equals_images"] = bool(torch.equal(from_video[0][0][1]["concat_latent_image"],
                                                  pos[0][1]["concat_latent_image"]))
    enc = vae.encode(torch.rand(9, 48, 64, 3, generator=g))
    shifted = ModelSamplingSD3().patch(dwm, 5.0)[0]
    sampled = nodes.common_ksampler(shifted, 1, 2, 6.0, "euler", "normal", pos, neg, lat)[0]
    decoded = nodes.VAEDecode().decode(vae, sampled)[0]
    out["sample"] = {"concat": list(pos[0][1]["concat_latent_image"].shape), "enc": list(enc.shape),
                     "mask": list(pos[0][1]["concat_mask"].shape),
                     "mask_max": pos[0][1]["concat_mask"].abs().max().item(),
                     "clip": list(neg[0][1]["clip_vision_output"].penultimate_hidden_states.shape),
                     "latent": list(lat["samples"].shape), "sampled": list(sampled["samples"].shape),
                     "decoded": list(decoded.shape), "finite": bool(torch.isfinite(decoded).all())}
    # Refusals: one DWMError line each.
    os.makedirs(os.path.join(tmp, "loras", "empty"))
    os.makedirs(os.path.join(tmp, "loras", "no-non-lora"))
    os.symlink(INTEROP + "/reference-wan-lora/lora_diffusion_pytorch_model.safetensors",
               os.path.join(tmp, "loras", "no-non-lora", "lora_diffusion_pytorch_model.safetensors"))
    wide = os.path.join(tmp, "loras", "dim-512")
    os.makedirs(wide)
    save_file({"lora_unet__blocks_0_cross_attn_k.lora_down.weight": torch.zeros(4, 512),
               "lora_unet__blocks_0_cross_attn_k.lora_up.weight": torch.zeros(512, 4)},
              wide + "/lora_diffusion_pytorch_model.safetensors")
    save_file({"patch_embedding.weight": torch.zeros(512, 52, 1, 2, 2), "patch_embedding.bias": torch.zeros(512)},
              wide + "/non_lora_weights.safetensors")
    frames = torch.rand(9, 48, 64, 3)
    size = {"width": 64, "height": 48, "length": 9, "batch_size": 1}
    scene = lambda **kw: C.execute(cond, cond, vae, **{**size, **kw})
    out["refusals"] = {
        "t2v": refusal(lambda: L.execute("wan-t2v", "default")),
        "cogvideox": refusal(lambda: R.execute(base, "cog", 1.0)),
        "other_dim": refusal(lambda: R.execute(base, "dim-512", 1.0)),
        "empty": refusal(lambda: R.execute(base, "empty", 1.0)),
        "no_non_lora": refusal(lambda: R.execute(base, "no-non-lora", 1.0)),
        "twice": refusal(lambda: R.execute(dwm, "dwm-wan", 1.0)),
        "missing": refusal(lambda: R.execute(base, "nowhere", 1.0)),
        "length": refusal(lambda: scene(length=10, static_images=frames, hand_images=frames)),
        "width": refusal(lambda: scene(width=60, static_images=frames, hand_images=frames)),
        "no_static": refusal(lambda: scene(hand_images=frames)),
        "two_static": refusal(lambda: scene(static_images=frames, static_video=object(), hand_images=frames)),
        "vae": refusal(lambda: C.execute(cond, cond, LatentVAE(torch.zeros(1, 48, 3, 6, 8)), 64, 48, 9, 1,
                                         static_images=frames, hand_images=frames)),
    }
print("RESULT " + json.dumps(out))
'''


@pytest.fixture(scope="module")
def host_run(tmp_path_factory):
    from comfyui_dwm.wan.tiny import make_tiny_wan_base

    checkout, python = _host()
    work = tmp_path_factory.mktemp("wan_host")  # models, links and the pack link; removed by pytest
    base = make_tiny_wan_base(str(tmp_path_factory.mktemp("wan_base") / "tiny-wan21-fun-inp"), seed=WAN_BASE_SEED)
    proc = subprocess.run([python, "-c", CHILD, str(REPO), str(INTEROP), str(FIXTURE), base, str(work), str(TRAINED),
                           str(TRAINED_FIXTURE)], cwd=checkout,
                          capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_nodes_are_served_with_the_contract_inputs(host_run):
    info = host_run["info"]
    loader = info["DWMWanModelLoader"]["input"]["required"]
    assert list(loader) == ["model_name", "weight_dtype"]
    assert loader["weight_dtype"][1]["options"] == ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]
    lora = info["DWMWanLoraLoader"]["input"]["required"]
    assert list(lora) == ["model", "lora_name", "strength"] and lora["model"][0] == "MODEL"
    assert {k: lora["strength"][1][k] for k in ("default", "min", "max", "step")} == \
        {"default": 1.0, "min": -2.0, "max": 2.0, "step": 0.01}
    scene = info["DWMWanSceneConditioning"]
    req, opt = scene["input"]["required"], scene["input"]["optional"]
    assert list(req) == ["positive", "negative", "vae", "width", "height", "length", "batch_size"]
    assert (req["width"][1]["default"], req["height"][1]["default"], req["length"][1]["default"]) == (720, 480, 49)
    assert (req["length"][1]["step"], req["length"][1]["max"], req["batch_size"][1]["max"]) == (4, 1025, 64)
    assert {k: v[0] for k, v in opt.items()} == {"static_images": "IMAGE", "hand_images": "IMAGE",
                                                  "static_video": "VIDEO", "hand_video": "VIDEO", "fps": "FLOAT"}
    assert scene["output"] == ["CONDITIONING", "CONDITIONING", "LATENT"]
    assert scene["output_name"] == ["positive", "negative", "latent"]
    for node in info.values():
        assert node["description"] and all(node["output_tooltips"])
        for section in node["input"].values():
            assert all(spec[1].get("tooltip") for spec in section.values())
    assert host_run["display"] == {"DWMWanModelLoader": "DWM-Wan Model Loader",
                                   "DWMWanLoraLoader": "DWM-Wan LoRA Loader"}


def test_listings_find_folders_by_content(host_run):
    assert host_run["choices"] == [["tiny-wan"], ["dwm-wan", "dwm-wan-trained"]]


def test_reference_velocity_through_loader_lora_and_host_conditioning(host_run):
    """Folder or single-file base, strength 1 (reference merge) and 0 (the base), two timesteps, fp32."""
    assert host_run["dtype"] == "torch.float32"
    velocity = host_run["velocity"]
    cases = {f"{src}_s{s}_t{t}" for src in ("folder", "single") for s in (1, 0) for t in (700, 250)}
    assert set(velocity) >= cases
    assert all(e < TOL for e in velocity.values()), velocity


def test_our_trainers_export_runs_in_our_node_and_in_the_core_lora_loader(host_run):
    """The export of training.train (Wan) gives the reference's velocity for it in the host, both ways."""
    assert set(host_run["trained"]) == {f"{n}_t{t}" for n in ("node", "stock_loader") for t in (700, 250)}
    assert all(e < TOL for e in host_run["trained"].values()), host_run["trained"]
    patched, modules = host_run["stock_modules"]
    assert patched == modules == 32  # the core loader maps every LoRA module of the file as written


def test_strength_changes_share_the_base_and_undo_cleanly(host_run):
    assert host_run["shares_base"] and host_run["base_in_channels"] == 36
    assert host_run["velocity"]["stock_after_dwm_t700"] < TOL  # the stock model runs unpatched again


def test_partial_lowvram_load_and_fp8_weights(host_run):
    assert host_run["lowvram_patches"] > 0 and host_run["velocity"]["lowvram_s1_t700"] < TOL
    finite, err, scale = host_run["fp8"]
    assert finite and err < 0.2 * scale


def test_core_lora_chains_after_ours(host_run):
    with_lightx2v, at_zero = host_run["chain"]
    assert with_lightx2v > 1e-2 and at_zero < TOL


def test_real_vae_and_core_sampler(host_run):
    sample = host_run["sample"]
    assert sample["enc"] == [1, 16, 3, 6, 8] and sample["concat"] == [1, 32, 3, 6, 8]
    assert sample["mask"] == [1, 4, 3, 6, 8] and sample["mask_max"] == 0
    assert sample["clip"] == [1, 257, 1280]
    assert sample["latent"] == sample["sampled"] == [2, 16, 3, 6, 8]
    assert sample["decoded"] == [2 * 9, 48, 64, 3] and sample["finite"]
    assert host_run["video_equals_images"]  # core VIDEO inputs give the same conditioning as IMAGE batches
    warnings = " ".join(host_run["warnings"])
    assert "static video: 13 frames, using the first 9" in warnings
    assert "hand video: 7 frames, padded to 9" in warnings


@pytest.mark.parametrize("case, words", [
    ("t2v", "model_name: "),
    ("t2v", "is a Wan t2v model with in_dim 16"),
    ("cogvideox", "lora_name: "),
    ("cogvideox", "for CogVideoX-Fun, not for Wan"),
    ("other_dim", "lora_name: "),
    ("other_dim", "width 512"),
    ("empty", "holds no lora_diffusion_pytorch_model.safetensors"),
    ("no_non_lora", "no non_lora_weights.safetensors"),
    ("twice", "already takes 52 channels"),
    ("missing", "'nowhere' is not a folder in loras/"),
    ("length", "length: 10 is not of the form 4k+1"),
    ("width", "width: 60 is not a positive multiple of 16"),
    ("no_static", "static_images: no static video is connected"),
    ("two_static", "both static_images and static_video are connected"),
    ("vae", "vae: it encodes 9 frames of 64x48 to [1, 48, 3, 6, 8]"),
])
def test_refusals_are_one_dwm_error_line(host_run, case, words):
    message = host_run["refusals"][case]
    assert message.startswith("DWMError: ") and words in message and "Fix: " in message, message
    assert "\n" not in message
