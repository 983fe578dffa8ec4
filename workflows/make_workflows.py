"""Write the example workflows: each graph once, saved in UI format (example_workflows/, which
ComfyUI's template browser lists) and API format (workflows/api/).

One description per graph keeps the two files of a pair from drifting apart; the UI file is laid
out the way the graph editor saves it (inputs, links, positional widget values) using the same
widget rules that dwm.workflow_schema checks. Our nodes' schemas come from their recordings in
workflows/schemas/ (see dwm.workflow_schema). Run from the repo root:
    python workflows/make_workflows.py [--object-info ../shared/comfyui/object_info.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from comfyui_dwm.workflow_schema import (FRONTEND_ONLY, declared_inputs, format_widgets, is_widget,  # noqa: E402
                                 kind, load_schemas, ui_widget_slots)

MODEL = "CogVideoX-Fun-V1.1-5b-InP"
LORA = "dwm_lora.safetensors"
STATIC, HANDS = "dwm_example_static.mp4", "dwm_example_hands.mp4"
# ComfyUI serves a pack's templates from the first of its example folders that exists, and
# example_workflows/ comes before examples/ (our sample data); api/ twins are for scripts only.
UI_DIR, API_DIR = ROOT / "example_workflows", ROOT / "workflows" / "api"
OUR_NODES = [ROOT / "workflows" / "schemas" / f"dwm_{family}_nodes.json" for family in ("cogvideox", "wan")]
PROMPT = (ROOT / "examples" / "00055" / "prompt.txt").read_text(encoding="utf-8").strip()
FPS = 8
NOTE = """Model files
- Base: ComfyUI/models/dwm/CogVideoX-Fun-V1.1-5b-InP/ - the diffusers-layout folder (transformer/, vae/,
  text_encoder/, tokenizer/, scheduler/) downloaded from alibaba-pai/CogVideoX-Fun-V1.1-5b-InP
  (or CogVideoX-Fun-V1.5-5b-InP). Pick it in "DWM Model Loader" after refreshing the page.
- DWM LoRA: ComfyUI/models/loras/ - a .safetensors from this pack's trainer
  (accelerate launch -m comfyui_dwm.training.train ...) or a reference output folder.

Inputs
Copy examples/00055/static.mp4 and hands.mp4 of ComfyUI-DWM into ComfyUI/input/ as
dwm_example_static.mp4 and dwm_example_hands.mp4 (or upload your own videos in the loaders).
The hand video must follow the same camera path as the static one."""
LOW_VRAM_NOTE = """24 GB settings: memory_mode 24gb on the model loader (transformer weights stored in fp8,
tiled VAE forced on, the T5 encoder offloaded between prompts, and the transformer offloaded block by
block when the card is too small for it), bf16, batch 1.
If it still runs out of memory: memory_mode fp8+offload (the least GPU memory, slower), fewer frames
(num_frames 33 or 25), a smaller size (e.g. 624x416), cfg 1 (skips the unconditional pass), close other
GPU programs, start ComfyUI with --reserve-vram 1, and press "Unload models" before a run."""


class Out(tuple):
    """A link source: (node id, output slot)."""


class Graph:
    """Nodes added in order, numbered from 1; positions are for the editor only."""

    def __init__(self):
        self.nodes: list[dict] = []
        self.last_id = 0

    def add(self, cls: str, pos, title: str | None = None, size=None, **inputs) -> int:
        self.last_id += 1
        self.nodes.append({"id": self.last_id, "type": cls, "title": title, "pos": list(pos), "size": size,
                           "inputs": inputs})
        return self.last_id

    def skip(self, count: int = 1) -> None:
        """Leave ids unused where a released version had nodes that are gone, so that the other
        nodes keep their ids (``python -m comfyui_dwm.queue --set NODE_ID.INPUT`` refers to them)."""
        self.last_id += count

    def api(self, schemas: dict) -> dict:
        out = {}
        for n in self.nodes:
            if n["type"] in FRONTEND_ONLY:
                continue
            inputs = {k: [str(v[0]), v[1]] if isinstance(v, Out) else v for k, v in n["inputs"].items()}
            title = n["title"] or schemas[n["type"]].get("display_name", n["type"])
            out[str(n["id"])] = {"inputs": inputs, "class_type": n["type"], "_meta": {"title": title}}
        return out

    def ui(self, schemas: dict) -> dict:
        links, order = [], {n: i for i, n in enumerate(self._topological())}
        ui_nodes = [self._ui_node(n, schemas, links, order[n["id"]]) for n in self.nodes]
        by_id = {n["id"]: n for n in ui_nodes}
        for lk in links:  # outputs list the links that leave them
            by_id[lk[1]]["outputs"][lk[2]]["links"].append(lk[0])
        return {"id": "00000000-0000-4000-8000-000000000000", "revision": 0,
                "last_node_id": self.last_id, "last_link_id": len(links), "nodes": ui_nodes,
                "links": links, "groups": [], "config": {},
                "extra": {"ds": {"scale": 0.65, "offset": [120, 560]}}, "version": 0.4}

    def _topological(self) -> list[int]:
        done: list[int] = []
        while len(done) < len(self.nodes):
            for n in self.nodes:
                deps = {v[0] for v in n["inputs"].values() if isinstance(v, Out)}
                if n["id"] not in done and deps <= set(done):
                    done.append(n["id"])
        return done

    def _ui_node(self, n: dict, schemas: dict, links: list, order: int) -> dict:
        spec, values = schemas.get(n["type"]), n["inputs"]
        node = {"id": n["id"], "type": n["type"], "pos": n["pos"], "size": n["size"] or [320, 100],
                "flags": {}, "order": order, "mode": 0, "inputs": [], "outputs": [],
                "properties": {"Node name for S&R": n["type"]}}
        if n["title"]:
            node["title"] = n["title"]
        if spec is None:  # a Note
            node.update(widgets_values=[values["text"]], color="#432", bgcolor="#653")
            return node
        entries = declared_inputs(spec)
        sockets = [e for e in entries if not is_widget(e[1])] + [e for e in entries if is_widget(e[1])]
        for name, entry, required in sockets:
            slot = {"name": name, "type": kind(entry), "link": None}
            if is_widget(entry):
                slot["widget"] = {"name": name}
            if not required:  # the editor draws optional inputs hollow
                slot["shape"] = 7
            if isinstance(values.get(name), Out):
                src, src_slot = values[name]
                links.append([len(links) + 1, src, src_slot, n["id"], len(node["inputs"]), kind(entry)])
                slot["link"] = len(links)
            node["inputs"].append(slot)
        node["outputs"] = [{"name": name, "type": t, "links": [], "slot_index": i}
                           for i, (name, t) in enumerate(zip(spec["output_name"], spec["output"]))]
        # A linked widget keeps its default in the editor; the link decides the value sent.
        shown = {name: e[1].get("default") if isinstance(values.get(name), Out) else values[name]
                 for name, e, _r in entries if is_widget(e)}
        shown.update({name: values[name] for name in format_widgets(spec, values)})
        if n["type"].startswith("VHS_"):  # VideoHelperSuite saves widget values by name
            node["widgets_values"] = shown
        else:  # the editor's extra slots: "fixed" after a seed, "image" after a file list
            slots = ui_widget_slots(spec)
            node["widgets_values"] = [shown[s] if s else "image" if isinstance(shown[p], str) else "fixed"
                                      for p, s in zip([None] + slots, slots)]
        return node


def dwm_graph(vhs=False, low_vram=False) -> Graph:
    """dwm_basic and its variants: two video loaders, model + LoRA, encode, sample, decode, save."""
    g = Graph()
    g.add("Note", (0, -400), title="Read me: model files and inputs", size=[340, 370],
          text=NOTE + ("\n\n" + LOW_VRAM_NOTE if low_vram else ""))
    static, hands = load_videos(g, vhs)
    if not vhs:
        g.skip(2)  # the first release's Get Video Components nodes: the DWM nodes take VIDEOs now
    base = g.add("DWMModelLoader", (360, -380), model=MODEL, precision="bf16", device="auto",
                 memory_mode="24gb" if low_vram else "none")
    model = Out((g.add("DWMLoraLoader", (720, -380), model=Out((base, 0)), lora=LORA, strength=1.0), 0))
    cond = g.add("DWMTextEncode", (1080, -380), "prompt", [400, 300], model=model, prompt=PROMPT,
                 negative_prompt="")
    scene = g.add("DWMSceneEncode", (720, 0), model=model, static_video=static, hand_video=hands,
                  width=720, height=480, num_frames=49, tiled_vae=True, seed=0, fps=FPS)
    latents = g.add("DWMSampler", (1080, 0), "sampler", [320, 260], model=model, conditioning=Out((cond, 0)),
                    scene=Out((scene, 0)), steps=50, cfg=6.0, scheduler="ddim", seed=42, batch_size=1,
                    dynamic_cfg=False, cache="none", attention="sdpa")
    decode = g.add("DWMDecode", (1440, 0), size=[320, 130], model=model, latents=Out((latents, 0)),
                   tiled_vae=True, fps=FPS)
    save(g, decode, (1800, 0), "dwm/output", "save output", vhs)
    if not low_vram:
        compare = g.add("DWMCompare", (1440, 300), size=[320, 170], static_video=static, hand_video=hands,
                        output=Out((decode, 0)), fps=FPS)
        save(g, compare, (1800, 460), "dwm/compare", "save comparison", vhs)
    return g


def load_videos(g: Graph, vhs: bool) -> tuple[Out, Out]:
    """The static and hand videos: core VIDEOs (their frame rate travels on), or VHS frame batches."""
    if not vhs:
        return (Out((g.add("LoadVideo", (0, 0), "static video", [320, 380], file=STATIC), 0)),
                Out((g.add("LoadVideo", (0, 420), "hand video", [320, 380], file=HANDS), 0)))
    load = dict(force_rate=0, custom_width=0, custom_height=0, frame_load_cap=0, skip_first_frames=0,
                select_every_nth=1, format="None")
    return (Out((g.add("VHS_LoadVideo", (0, 0), "static video", [320, 420], video=STATIC, **load), 0)),
            Out((g.add("VHS_LoadVideo", (0, 460), "hand video", [320, 420], video=HANDS, **load), 0)))


def save(g: Graph, node: int, pos, prefix: str, title: str, vhs: bool) -> None:
    """Save a DWM video node's output: its VIDEO (slot 1) with Save Video, or its frames with VHS."""
    if vhs:
        save_frames(g, Out((node, 0)), pos, prefix, title, vhs)
        return
    g.skip()  # the Create Video node of the first release: the DWM node gives the VIDEO itself
    g.add("SaveVideo", pos, title, [360, 400], video=Out((node, 1)), filename_prefix=prefix, format="auto",
          codec="auto")


def save_frames(g: Graph, frames: Out, pos, prefix: str, title: str, vhs: bool) -> None:
    """Save an IMAGE batch at FPS: VHS Video Combine, or Create Video + Save Video."""
    if vhs:
        g.add("VHS_VideoCombine", pos, title, [360, 420], images=frames, frame_rate=FPS, loop_count=0,
              filename_prefix=prefix, format="video/h264-mp4", pix_fmt="yuv420p", crf=19,
              save_metadata=True, trim_to_audio=False, pingpong=False, save_output=True)
        return
    video = g.add("CreateVideo", pos, images=frames, fps=FPS)
    g.add("SaveVideo", (pos[0] + 360, pos[1]), title, [360, 400], video=Out((video, 0)),
          filename_prefix=prefix, format="auto", codec="auto")


def sweep_graph(strengths=(0.5, 1.0, 1.5)) -> Graph:
    """One input, one shared seed, a LoRA loader per strength; the decodes stitched left to right."""
    g = Graph()
    note = g.add("Note", (0, -400), title="Read me: model files and inputs", size=[340, 370], text=NOTE)
    static, hands = load_videos(g, False)
    g.skip(2)  # the first release's Get Video Components nodes
    base = Out((g.add("DWMModelLoader", (360, -380), model=MODEL, precision="bf16", device="auto",
                      memory_mode="none"), 0))
    cond = Out((g.add("DWMTextEncode", (720, -380), "prompt", [400, 300], model=base, prompt=PROMPT,
                      negative_prompt=""), 0))
    scene = Out((g.add("DWMSceneEncode", (720, 0), model=base, static_video=static, hand_video=hands,
                       width=720, height=480, num_frames=49, tiled_vae=True, seed=0, fps=FPS), 0))
    seed = Out((g.add("PrimitiveInt", (720, 380), "seed", value=42), 0))
    g.nodes[note - 1]["inputs"]["text"] += (
        "\n\nThe Int node titled 'seed' feeds every sampler; python -m comfyui_dwm.queue sets it for each job.")
    decoded = []
    for i, strength in enumerate(strengths):
        y = i * 340
        lora = Out((g.add("DWMLoraLoader", (1160, y), f"LoRA strength {strength}", model=base, lora=LORA,
                          strength=strength), 0))
        latents = g.add("DWMSampler", (1520, y), f"sampler (strength {strength})", [320, 260], model=lora,
                        conditioning=cond, scene=scene, steps=50, cfg=6.0, scheduler="ddim", seed=seed,
                        batch_size=1, dynamic_cfg=False, cache="none", attention="sdpa")
        decoded.append(Out((g.add("DWMDecode", (1880, y), size=[320, 130], model=lora, latents=Out((latents, 0)),
                                  tiled_vae=True, fps=FPS), 0)))
    row = decoded[0]
    for i, right in enumerate(decoded[1:]):
        row = Out((g.add("ImageStitch", (2240, i * 200), image1=row, image2=right, direction="right",
                         match_image_size=True, spacing_width=0, spacing_color="white"), 0))
    save_frames(g, row, (2600, 0), "dwm/lora_sweep", "save sweep", False)
    return g


WAN_MODEL, WAN_LORA = "Wan2.1-Fun-V1.1-14B-InP", "DWM-Wan2.1-Fun-14b-LoRA"
WAN_TEXT, WAN_VAE = "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan_2.1_vae.safetensors"
LIGHTX2V = "lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors"
WAN_NOTE = """Model files (refresh the page after adding them)
- Base: ComfyUI/models/diffusion_models/Wan2.1-Fun-V1.1-14B-InP/ - the folder of
  alibaba-pai/Wan2.1-Fun-V1.1-14B-InP as downloaded (config.json + diffusion_pytorch_model*.safetensors
  are what is read; models/dwm/ works too). Pick it in "DWM-Wan Model Loader".
- DWM LoRA: ComfyUI/models/loras/DWM-Wan2.1-Fun-14b-LoRA/ - the folder of
  byungjun-kim/DWM-Wan2.1-Fun-14b-LoRA (lora_diffusion_pytorch_model.safetensors,
  non_lora_weights.safetensors, its yaml). It needs the base Wan2.1-Fun-V1.1-14B-InP: it does not fit
  the 1.3B, Wan 2.2 or a plain Wan 2.1 I2V model.
- Text encoder: ComfyUI/models/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors
- VAE: ComfyUI/models/vae/wan_2.1_vae.safetensors
  (both from Comfy-Org/Wan_2.1_ComfyUI_repackaged, split_files/). No CLIP vision model is needed.

Inputs
Copy examples/00055/static.mp4 and hands.mp4 of ComfyUI-DWM into ComfyUI/input/ as
dwm_example_static.mp4 and dwm_example_hands.mp4 (or upload your own videos in the loaders).
The hand video must follow the same camera path as the static one. Sampling as in the reference
code: shift 5, euler / normal, 50 steps, cfg 6, negative prompt "bad detailed", 49 frames, 720x480."""
LIGHTX2V_NOTE = """LightX2V (4 steps, cfg 1): a Wan2.1 I2V 14B step-distill LoRA in ComfyUI/models/loras/, e.g.
lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors from Kijai/WanVideo_comfy (Lightx2v/)
or the LoRA of lightx2v/Wan2.1-I2V-14B-480P-StepDistill-CfgDistill-Lightx2v: pick yours in its loader."""
WAN_LOW_VRAM_NOTE = """24 GB card (RTX 3090 / 4090): fp8_e4m3fn weights (about half of bf16; on a 4090
fp8_e4m3fn_fast is faster), the fp8 text encoder, tiled VAE decode, no comparison branch.
ComfyUI loads what fits and streams the rest of the 14B model from system RAM (partial loading;
--lowvram forces it) and moves the text encoder off the GPU before sampling, so plenty of system
RAM helps (64 GB is comfortable).
If it still runs out of memory: fewer frames (length 33 or 25), a smaller size (624x416 or 480x320),
tile_size 128, start ComfyUI with --reserve-vram 1 (or --lowvram), close other GPU programs,
and press "Unload models" before a run."""


def wan_graph(lightx2v=False, low_vram=False) -> Graph:
    """dwm_wan_basic and its variants: our Wan loaders and scene conditioning around core sampling."""
    g = Graph()
    note = WAN_NOTE + "".join("\n\n" + n for n, on in ((LIGHTX2V_NOTE, lightx2v),
                                                        (WAN_LOW_VRAM_NOTE, low_vram)) if on)
    g.add("Note", (0, -400), title="Read me: model files and inputs", size=[360, 370], text=note)
    static, hands = load_videos(g, False)
    model = Out((g.add("DWMWanModelLoader", (400, -400), size=[320, 110], model_name=WAN_MODEL,
                       weight_dtype="fp8_e4m3fn" if low_vram else "default"), 0))
    model = Out((g.add("DWMWanLoraLoader", (760, -400), size=[320, 110], model=model, lora_name=WAN_LORA,
                       strength=1.0), 0))
    if lightx2v:
        model = Out((g.add("LoraLoaderModelOnly", (1120, -400), "LightX2V step distill", [340, 110],
                           model=model, lora_name=LIGHTX2V, strength_model=1.0), 0))
    model = Out((g.add("ModelSamplingSD3", (1500, -400), size=[300, 60], model=model, shift=5.0), 0))
    clip = Out((g.add("CLIPLoader", (400, -240), size=[320, 110], clip_name=WAN_TEXT, type="wan",
                      device="default"), 0))
    vae = Out((g.add("VAELoader", (400, -80), size=[320, 60], vae_name=WAN_VAE), 0))
    pos = g.add("CLIPTextEncode", (760, -240), "prompt", [400, 220], text=PROMPT, clip=clip)
    neg = g.add("CLIPTextEncode", (760, 20), "negative prompt", [400, 100], text="bad detailed", clip=clip)
    scene = g.add("DWMWanSceneConditioning", (1200, -240), size=[320, 330], positive=Out((pos, 0)),
                  negative=Out((neg, 0)), vae=vae, width=720, height=480, length=49, batch_size=1,
                  static_video=static, hand_video=hands, fps=FPS)
    latent = g.add("KSampler", (1560, -240), "sampler", [320, 300], model=model, seed=42,
                   steps=4 if lightx2v else 50, cfg=1.0 if lightx2v else 6.0, sampler_name="euler",
                   scheduler="normal", positive=Out((scene, 0)), negative=Out((scene, 1)),
                   latent_image=Out((scene, 2)), denoise=1.0)
    if low_vram:
        frames = g.add("VAEDecodeTiled", (1920, -400), size=[300, 150], samples=Out((latent, 0)), vae=vae,
                       tile_size=256, overlap=64, temporal_size=64, temporal_overlap=8)
    else:
        frames = g.add("VAEDecode", (1920, -240), size=[220, 50], samples=Out((latent, 0)), vae=vae)
    save_frames(g, Out((frames, 0)), (1920, -140), "dwm_wan/output", "save output", False)
    if not low_vram:
        g.skip(2)  # the first release's Get Video Components nodes
        compare = g.add("DWMCompare", (1560, 140), size=[320, 170], static_video=static, hand_video=hands,
                        output=Out((frames, 0)), fps=FPS)
        save(g, compare, (1920, 300), "dwm_wan/compare", "save comparison", False)
    return g


GRAPHS = {"dwm_basic": dwm_graph, "dwm_basic_vhs": lambda: dwm_graph(vhs=True),
          "dwm_low_vram": lambda: dwm_graph(low_vram=True), "dwm_lora_strength_sweep": sweep_graph,
          "dwm_wan_basic": wan_graph, "dwm_wan_lightx2v": lambda: wan_graph(lightx2v=True),
          "dwm_wan_low_vram": lambda: wan_graph(low_vram=True)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    full = Path(os.environ.get("DWM_SHARED", ROOT.parent / "shared")) / "comfyui" / "object_info.json"
    core = ROOT / "tests" / "fixtures" / "object_info_core.json"  # the node types the workflows use
    p.add_argument("--object-info", default=str(full if full.is_file() else core),
                   help="a recorded /object_info of the host (default: $DWM_SHARED or ../shared, else the "
                        "trimmed copy in tests/fixtures)")
    args = p.parse_args()
    schemas = load_schemas([args.object_info, *map(str, OUR_NODES)])
    for name, make in GRAPHS.items():
        graph = make()
        for path, data in ((UI_DIR / f"{name}.json", graph.ui(schemas)), (API_DIR / f"{name}.json",
                                                                         graph.api(schemas))):
            path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
