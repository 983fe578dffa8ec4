"""The CogVideoX DWM nodes on the host's V3 schema (``comfy_api.latest``).

Each node declares its sockets here and hands its inputs to the plain function that does the work
(``loaders``, ``conditioning``, ``sampling``, ``video``), which the tests run without ComfyUI.
Node ids, input names and the output order are those of the first release: saved workflows use them.
Importing this module needs ComfyUI; ``nodes/__init__.py`` checks first.
"""

from __future__ import annotations

from comfy_api.latest import InputImpl, Types, io
from comfyui_dwm.cogvideox.memory import MEMORY_MODES, MODE_HELP
from comfyui_dwm.cogvideox.sampler import SCHEDULERS
from comfyui_dwm.cogvideox.speed import ATTENTION_BACKENDS, CACHE_HELP, CACHES
from comfyui_dwm.precision import DTYPES

from .. import host
from . import files
from .conditioning import encode_text, encode_videos
from .loaders import load_lora, load_model
from .sampling import sample_latents
from .sockets import CATEGORY, CONDITIONING, DEFAULT_FPS, LATENTS, MODEL, SCENE
from .video import compare, decode

Model, Cond, Scene, Latents = (io.Custom(t) for t in (MODEL, CONDITIONING, SCENE, LATENTS))
NODE_CACHES = tuple(c for c in CACHES if c != "magcache")  # MagCache needs calibrated ratios: CLI only
MAX_SIZE = 2048
MAX_FRAMES = 1025
MAX_SEED = 0xFFFFFFFFFFFFFFFF  # as the core KSampler; the engine wraps derived seeds into range
FRAMES_OR_VIDEO = [io.Image, io.Video]


def _help(helps: dict, names=None) -> str:
    return "; ".join(f"{name}: {helps[name]}" for name in (names or helps)) + "."


def _model_in(tooltip: str = "The DWM model: from DWM LoRA Loader (or DWM Model Loader for the base alone)."):
    return Model.Input("model", tooltip=tooltip)


def _video_in(name: str, tooltip: str, optional: bool = False):
    return io.MultiType.Input(name, FRAMES_OR_VIDEO, optional=optional,
                              tooltip=tooltip + " An IMAGE batch, or a VIDEO (e.g. from Load Video).")


def _fps_in(tooltip: str):
    return io.Float.Input("fps", default=DEFAULT_FPS, min=1.0, max=240.0, step=1.0, optional=True, tooltip=tooltip)


def _video_out(what: str):
    return io.Video.Output(display_name="video", tooltip=f"{what} as a VIDEO with its frame rate, for Save Video.")


def _frames_and_video(frames, rate) -> io.NodeOutput:
    video = InputImpl.VideoFromComponents(Types.VideoComponents(images=frames, audio=None, frame_rate=rate))
    return io.NodeOutput(frames, video)


class DWMModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DWMModelLoader", display_name="DWM Model Loader", category=CATEGORY,
            description="Load a CogVideoX-Fun 5b InP base (V1.1 or V1.5, diffusers layout) widened for DWM. "
                        "Loaded once per folder and precision and reused by later runs; ComfyUI moves and "
                        "evicts its parts like its own models.",
            inputs=[
                io.Combo.Input("model", options=files.base_choices(),
                               tooltip="A CogVideoX-Fun 5b InP folder in diffusers layout, in models/dwm (or "
                                       "models/diffusers, models/diffusion_models); refresh after adding one."),
                io.Combo.Input("precision", options=list(DTYPES), default="bf16",
                               tooltip="bf16 for the 5B model; fp16 can overflow; fp32 for CPU checks."),
                io.Combo.Input("device", options=list(host.DEVICE_CHOICES), default="auto",
                               tooltip="auto: ComfyUI's devices; cpu: always run on the CPU."),
                io.Combo.Input("memory_mode", options=list(MEMORY_MODES), default="none", optional=True,
                               tooltip=_help(MODE_HELP) + " (offloaded parts are moved by diffusers' hooks, not "
                                       "by ComfyUI; see docs/nodes.md)"),
            ],
            outputs=[Model.Output(display_name="model",
                                  tooltip="The base model: add DWM LoRA Loader after it to run DWM.")],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        return io.NodeOutput(load_model(**inputs))


class DWMLoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DWMLoraLoader", display_name="DWM LoRA Loader", category=CATEGORY,
            description="Add a DWM LoRA (its attention LoRA and widened patch projection) at a strength. Returns "
                        "a new handle on the same base: chain several, or feed one base to loaders of "
                        "different strengths; nothing is reloaded. A LoRA for another base is refused.",
            inputs=[
                _model_in("From DWM Model Loader or another DWM LoRA Loader."),
                io.Combo.Input("lora", options=files.lora_choices(),
                               tooltip="A DWM LoRA in models/loras: a .safetensors file or a reference output "
                                       "folder holding pytorch_lora_weights.safetensors."),
                io.Float.Input("strength", default=1.0, min=-2.0, max=2.0, step=0.05,
                               tooltip="0 = base model, 1 = as trained (see docs/nodes.md)."),
            ],
            outputs=[Model.Output(display_name="model", tooltip="The model with this LoRA added.")],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        return io.NodeOutput(load_lora(**inputs))


class DWMTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DWMTextEncode", display_name="DWM Text Encode", category=CATEGORY,
            description="Encode the action prompt and the negative prompt with the base's T5, 226 tokens as "
                        "CogVideoX-Fun was trained (a longer prompt is cut, with a warning). Cached per prompt.",
            inputs=[
                _model_in(),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="What the hands do and what the camera sees; may be empty."),
                io.String.Input("negative_prompt", multiline=True, default="", optional=True,
                                tooltip="Used by classifier-free guidance (cfg > 1)."),
            ],
            outputs=[Cond.Output(display_name="conditioning", tooltip="Both prompt embeddings, for DWM Sampler.")],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        return io.NodeOutput(encode_text(**inputs))


class DWMSceneEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DWMSceneEncode", display_name="DWM Scene Encode (static + hands)", category=CATEGORY,
            description="Encode the static-scene video and the hand video with the base's VAE. Each is scaled "
                        "to cover width x height, centre-cropped, and cut or padded to num_frames (with a "
                        "warning). A VIDEO input is streamed at fps (8 by default): only the frames and the size "
                        "used are decoded; that rate travels on to DWM Decode.",
            inputs=[
                _model_in(),
                _video_in("static_video", "The scene with nobody in it."),
                _video_in("hand_video", "The hand meshes rendered on black along the same camera path."),
                io.Int.Input("width", default=720, min=16, max=MAX_SIZE, step=16,
                             tooltip="Multiple of 16 (720 in the paper); videos are scaled to cover it and "
                                     "centre-cropped."),
                io.Int.Input("height", default=480, min=16, max=MAX_SIZE, step=16,
                             tooltip="Multiple of 16 (480 in the paper)."),
                io.Int.Input("num_frames", default=49, min=0, max=MAX_FRAMES, step=1,
                             tooltip="4k+1 frames (49 in the paper); 0 = the longest 4k+1 the videos allow."),
                io.Boolean.Input("tiled_vae", default=True,
                                 tooltip="Bounds VAE memory; turn off only with plenty of VRAM."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED,
                             tooltip="Seed of the hand video's latent sample."),
                io.Float.Input("fps", default=DEFAULT_FPS, min=0.0, max=240.0, step=1.0, optional=True,
                               tooltip="A VIDEO input is resampled to this rate (8, DWM's training rate; 0 = "
                                       "keep its own), and only the frames and size used are decoded (with a "
                                       "warning). IMAGE batches are used as they are."),
            ],
            outputs=[Scene.Output(display_name="scene",
                                  tooltip="Static and hand latents with their size and frame count, for DWM "
                                          "Sampler.")],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        return io.NodeOutput(encode_videos(**inputs))


class DWMSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DWMSampler", display_name="DWM Sampler", category=CATEGORY,
            description="Denoise DWM latents with the model's LoRAs applied: one video per seed (seed, seed+1, "
                        "... for a batch). One progress step (and preview) per step; Cancel stops within a step.",
            inputs=[
                _model_in(),
                Cond.Input("conditioning", tooltip="From DWM Text Encode."),
                Scene.Input("scene", tooltip="From DWM Scene Encode."),
                io.Int.Input("steps", default=50, min=1, max=500, tooltip="Denoising steps (50 in the paper)."),
                io.Float.Input("cfg", default=6.0, min=1.0, max=30.0, step=0.1,
                               tooltip="Guidance scale; 1 = no guidance (faster, ignores the negative)."),
                io.Combo.Input("scheduler", options=list(SCHEDULERS), default="ddim",
                               tooltip="ddim as in the paper, or dpm (CogVideoX's DPM scheduler)."),
                io.Int.Input("seed", default=42, min=0, max=MAX_SEED, control_after_generate=True,
                             tooltip="Seed of the first video's noise."),
                io.Int.Input("batch_size", default=1, min=1, max=64,
                             tooltip="Videos per run, with seeds seed, seed+1, ..."),
                io.Boolean.Input("dynamic_cfg", default=False, tooltip="CogVideoX's cosine guidance ramp."),
                io.Combo.Input("cache", options=list(NODE_CACHES), default="none", optional=True,
                               tooltip="Step cache for this run (faster, output drifts a little; docs/benchmarks.md). "
                                       + _help({"none": "off, the exact loop", **CACHE_HELP}, NODE_CACHES)),
                io.Combo.Input("attention", options=list(ATTENTION_BACKENDS), default="sdpa", optional=True,
                               tooltip="Attention backend: sdpa = diffusers' own CogVideoX processor; the others "
                                       "go through diffusers' attention dispatcher (flash, sage, ... need their "
                                       "package installed)."),
            ],
            outputs=[Latents.Output(display_name="latents", tooltip="Denoised latents, one per seed, for DWM Decode.")],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        return io.NodeOutput(sample_latents(**inputs))


class DWMDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DWMDecode", display_name="DWM Decode", category=CATEGORY,
            description="Decode the latents with the base's VAE; a batch's videos come out one after another. "
                        "Gives the frames as an IMAGE batch and as a VIDEO at the scene's frame rate.",
            inputs=[
                _model_in(),
                Latents.Input("latents", tooltip="From DWM Sampler."),
                io.Boolean.Input("tiled_vae", default=True,
                                 tooltip="Bounds VAE memory (decode is the usual out-of-memory spot)."),
                _fps_in("Frame rate of the VIDEO when the scene came from IMAGE batches (a VIDEO input's own "
                        "rate wins)."),
            ],
            outputs=[io.Image.Output(display_name="frames", tooltip="All frames as an IMAGE batch."),
                     _video_out("The frames")],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        return _frames_and_video(*decode(**inputs))


class DWMCompare(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DWMCompare", display_name="DWM Compare (side by side)", category=CATEGORY,
            description="static | hands | output | ground truth side by side, each panel labelled, at the output's "
                        "height and frame count (a batch's videos each get the inputs beside them).",
            inputs=[
                _video_in("static_video", "The static scene video."),
                _video_in("hand_video", "The hand video."),
                _video_in("output", "DWM Decode's frames or video."),
                _video_in("ground_truth", "The real video, when there is one.", optional=True),
                _fps_in("Frame rate of the VIDEO when no input is a VIDEO (else the output's, then the "
                        "others', own rate)."),
            ],
            outputs=[io.Image.Output(display_name="frames", tooltip="The comparison as an IMAGE batch."),
                     _video_out("The comparison")],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        return _frames_and_video(*compare(**inputs))


COGVIDEOX_NODES = (DWMModelLoader, DWMLoraLoader, DWMTextEncode, DWMSceneEncode, DWMSampler, DWMDecode, DWMCompare)
