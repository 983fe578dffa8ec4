"""The Wan2.1-Fun InP family in training, with the reference's flow-matching objective.

Per step: ``x_t = (1 - sigma) x0 + sigma eps`` with ``sigma`` drawn uniformly from the 1,000 shifted
training sigmas of ``FlowMatchEulerDiscreteScheduler(shift=5)`` (and its timestep fed to the model; with
several processes each draws from its own slice, as the reference does: ``timestep_range``), the
model predicts ``eps - x0``, and the loss is the mean over all elements of the squared error where the
error is at most 50 in magnitude (zero elsewhere), computed in float32. The model input is the sampler's
(``wan_model_input``: noisy | ones x4 | static | hands), text zero-padded to 512 tokens, zero CLIP
features. A sample whose hands are dropped (``hand_dropout``) gets zero hand latents and the static
latents as its target, as the reference trains it.

What trains: a peft LoRA on every ``nn.Linear`` of the transformer plus the whole widened
``patch_embedding`` (hand channels start at zero, LoRA B at zero: step 0 is the base). Exports are the
reference release folder (``dwm/wan/export.py``), keyed by the original Wan module paths.
"""

from __future__ import annotations

import zlib

import torch
from accelerate import PartialState
from peft import get_peft_model_state_dict

from comfyui_dwm.errors import DWMError
from comfyui_dwm.wan.checkpoint import wan_module_names
from comfyui_dwm.wan.export import experiment_config, save_wan_release
from comfyui_dwm.wan.lora import diffusers_module_name
from comfyui_dwm.wan.model import check_wan_folder, load_wan_base, read_wan_config, wan_model_input
from comfyui_dwm.wan.pipeline import prompt_embedding
from comfyui_dwm.wan.sampler import CLIP_TOKENS, WanSettings, flow_scheduler, pad_text
from comfyui_dwm.wan.text import encode_wan_prompt, load_wan_text_encoder
from comfyui_dwm.wan.vae import encode_wan_video, load_wan_vae

from ..batch import PIXEL_CHANNELS, apply_dropout
from ..data import Layout
from ..lora_setup import ADAPTER, add_lora
from . import validation_run

SHIFT = 5.0  # the reference's scheduler_kwargs for Wan 2.1
CLIP_THRESHOLD = 50.0
WAN_LAYOUT = Layout(suffix="_wan", latent_channels=16, text_tokens=None, max_tokens=512,
                    what="Wan VAE latent sample", encoder="umT5")


def lora_modules(transformer: torch.nn.Module, targets) -> dict[str, str]:
    """{diffusers module name: original Wan path} of the Linears to adapt: all (``all``) or those whose
    diffusers name ends with one of ``targets``."""
    names = {diffusers_module_name(p): p for p in wan_module_names(transformer.config.num_layers)}
    targets = list(targets)
    if "all" not in targets:
        names = {n: p for n, p in names.items() if any(n == t or n.endswith("." + t) for t in targets)}
    if not names:
        raise DWMError("lora_target_modules", f"{targets} selects no Linear of the Wan transformer",
                       "use all (every Linear, the reference recipe) or diffusers names such as to_q,to_k")
    return names


def timestep_range(rank: int, world: int, count: int = 1000) -> tuple[int, int]:
    """The slice of the ``count`` training sigmas this rank draws from, as the reference's uniform
    ``DiscreteSampling`` splits them: the most groups (of equal rank count) that divide ``count`` evenly,
    one slice per group; one process draws from all of them."""
    groups = next(world // i for i in range(1, world + 1) if world % i == 0 and count % (world // i) == 0)
    interval, group = count // groups, rank // (world // groups)
    return group * interval, (group + 1) * interval


def flow_matching_loss(model, scheduler, latents: torch.Tensor, static: torch.Tensor, hands: torch.Tensor,
                       prompt_embeds: torch.Tensor, image_dim: int, generator: torch.Generator,
                       hands_dropped: torch.Tensor | None = None, index_range: tuple[int, int] | None = None
                       ) -> torch.Tensor:
    """One loss evaluation on ``[B, 16, F, h, w]`` latents; timesteps and noise from ``generator`` (CPU),
    the sigma's index uniform in ``index_range`` (default: all training sigmas)."""
    batch, device, dtype = latents.shape[0], latents.device, latents.dtype
    low, high = index_range or (0, len(scheduler.timesteps))
    index = torch.randint(low, high, (batch,), generator=generator)
    timesteps = scheduler.timesteps[index].to(device)
    sigmas = scheduler.sigmas[index].to(device, torch.float32).view(-1, 1, 1, 1, 1)
    noise = torch.randn(latents.shape, generator=generator).to(device, dtype)
    noisy = ((1 - sigmas) * latents.float() + sigmas * noise.float()).to(dtype)
    clean = latents if hands_dropped is None else torch.where(hands_dropped.view(-1, 1, 1, 1, 1), static, latents)
    target = noise.float() - clean.float()
    image = torch.zeros(batch, CLIP_TOKENS, image_dim, device=device, dtype=dtype)
    pred = model(hidden_states=wan_model_input(noisy, static, hands), timestep=timesteps,
                 encoder_hidden_states=prompt_embeds, encoder_hidden_states_image=image, return_dict=False)[0]
    error = pred.float() - target
    return (error.square() * (error.abs() <= CLIP_THRESHOLD)).mean()


class WanFamily:
    name = "wan"
    layout = WAN_LAYOUT
    cpu_encoders = ("text_encoder",)  # see load()

    def check_model(self, model: str) -> int:
        # the VAE and umT5 too, before the transformer is loaded
        return int(check_wan_folder(model).get("text_dim", 4096))

    def load(self, cfg, dtype: torch.dtype, device) -> torch.nn.Module:
        """Transformer on ``device``, the VAE where ``training.throughput`` puts it; the umT5 (11 GB for XXL)
        stays on the CPU: it only encodes prompts that were not precomputed, the empty prompt and validation
        prompts, each once (cached)."""
        self.base = load_wan_base(cfg.model, dtype, "cpu")
        self.base.transformer.to(device)
        self.scheduler = flow_scheduler(SHIFT)
        state = PartialState()
        self.index_range = timestep_range(state.process_index, state.num_processes, len(self.scheduler.timesteps))
        return self.base.transformer

    def load_encoders(self, model: str, dtype, device) -> None:
        """For ``training.prepare``: the VAE and umT5 only (the transformer is not read)."""
        read_wan_config(model)
        self.vae = load_wan_vae(model, dtype, device)
        self.text_encoder, self.tokenizer = load_wan_text_encoder(model, dtype, device)

    def encode_video(self, video: torch.Tensor, key: str) -> torch.Tensor:
        """One normalised VAE sample ``[16, F, h, w]`` in the VAE's dtype; its noise seeded by ``key``."""
        generator = torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")))
        return encode_wan_video(self.vae, video, generator)[0].to(self.vae.dtype)

    def encode_text(self, prompt: str) -> torch.Tensor:
        embeds = encode_wan_prompt(self.text_encoder, self.tokenizer, prompt, self.text_encoder.device)
        return embeds[0].to(self.text_encoder.dtype)

    def make_trainable(self, cfg) -> list[torch.nn.Parameter]:
        transformer = self.base.transformer
        self.names = lora_modules(transformer, cfg.lora_target_modules)
        return add_lora(transformer, cfg.lora_rank, cfg.lora_alpha, sorted(self.names), "patch_embedding",
                        cfg.gradient_checkpointing)

    def _latents(self, values: list[torch.Tensor], generator: torch.Generator, device, dtype) -> torch.Tensor:
        """Stored samples as they are; frames encoded now (a VAE sample drawn with the run's generator)."""
        out = [encode_wan_video(self.base.vae, v, generator)[0] if v.shape[0] == PIXEL_CHANNELS else v
               for v in values]
        return torch.stack([x.to(device, dtype) for x in out])

    def _prompt(self, prompt) -> torch.Tensor:
        embeds = prompt if isinstance(prompt, torch.Tensor) else prompt_embedding(self.base, prompt)[0]
        return pad_text(embeds.float().unsqueeze(0))[0]

    def step_inputs(self, items: list[dict], generator: torch.Generator, device, dtype, cfg):
        latents, static, hands = (self._latents([i[k] for i in items], generator, device, dtype)
                                  for k in ("video", "static", "hands"))
        prompts = torch.stack([self._prompt(i["prompt"]) for i in items]).to(device, dtype)
        prompts, hands, dropped = apply_dropout(prompts, lambda: self._prompt("").to(device, dtype), hands, generator,
                                                cfg.prompt_dropout, cfg.hand_dropout)
        return latents, static, hands, prompts, dropped

    def loss(self, model, items: list[dict], generator: torch.Generator, device, dtype, cfg) -> torch.Tensor:
        latents, static, hands, prompts, dropped = self.step_inputs(items, generator, device, dtype, cfg)
        return flow_matching_loss(model, self.scheduler, latents, static, hands, prompts,
                                  self.base.transformer.config.image_dim, generator, dropped, self.index_range)

    def release_tensors(self, state: dict, alpha: float) -> tuple[dict, dict]:
        """The LoRA ({original path: (down, up, alpha)}) and patch embedding of a full transformer state dict."""
        lora = get_peft_model_state_dict(self.base.transformer, state_dict=state, adapter_name=ADAPTER)
        modules = {}
        for key, value in lora.items():
            module, _, part = key.rpartition(".lora_")
            modules.setdefault(module, {})[part] = value
        out = {self.names[m]: (p["A.weight"], p["B.weight"], alpha) for m, p in modules.items()}
        patch = {part: state[f"patch_embedding.{part}"] for part in ("weight", "bias")}
        return out, patch

    def export(self, state: dict, cfg, folder: str, name: str, source: str, dtype: torch.dtype) -> str:
        """The reference release folder in ``folder`` itself; returns "" (the folder is what loads)."""
        lora, patch = self.release_tensors(state, cfg.lora_alpha)
        extra = {"learning_rate": cfg.learning_rate, "seed": cfg.seed, "source": source}
        save_wan_release(folder, lora, patch, experiment_config(name, cfg.model, cfg.lora_rank, cfg.lora_alpha, extra),
                         dtype=dtype)
        return ""

    def generator(self, cfg):
        from comfyui_dwm.wan.pipeline import generate_wan

        return validation_run(generate_wan, self.base, WanSettings, cfg, releases=None)
