"""DWM checkpoint IO: the reference output folder and our single-file format.

Reference folder (written by the reference trainer, read as is):
  ``pytorch_lora_weights.safetensors``  peft ``lora_A``/``lora_B`` keys, with or without a
                                        ``transformer.`` prefix, no metadata (alpha = rank)
  ``non_lora_weights.safetensors``      ``patch_embed.proj.weight`` / ``.bias``, widened to 49 channels
                                        (older runs: ``non_lora_weights.pt``)

Single file (``*.safetensors``, ours): the same tensors in one file, every key prefixed with
``transformer.``, and string metadata ``format=dwm-lora``, ``format_version=1``, ``base_version``
("1.1"/"1.5"), ``rank``, ``alpha``, ``target_modules`` (comma separated). See docs/checkpoint-format.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..atomic import atomic_dir, atomic_path
from ..errors import DWMError

LORA_FILE = "pytorch_lora_weights.safetensors"
NON_LORA_FILE = "non_lora_weights.safetensors"
NON_LORA_LEGACY = "non_lora_weights.pt"
PROJ_KEYS = ("patch_embed.proj.weight", "patch_embed.proj.bias")
FORMAT = "dwm-lora"
PREFIX = "transformer."


@dataclass
class DWMCheckpoint:
    """A DWM LoRA: peft LoRA tensors (unprefixed keys) and the widened patch projection."""

    lora: dict
    patch_embed: dict  # "weight", optional "bias"
    rank: int
    alpha: float
    source: str

    @property
    def base_version(self) -> str:
        """Conv2d weights (4-D) come from a V1.1 base, Linear weights (2-D) from V1.5."""
        return "1.1" if self.patch_embed["weight"].ndim == 4 else "1.5"

    @property
    def target_modules(self) -> list[str]:
        """Leaf module names the LoRA targets, as peft names them (``to_q``, ``to_out.0``)."""
        def leaf(path: str) -> str:
            parts = path.split(".")
            return ".".join(parts[-2:]) if parts[-1].isdigit() else parts[-1]

        return sorted({leaf(k.split(".lora_")[0]) for k in self.lora})


def _strip(key: str) -> str:
    return key[len(PREFIX):] if key.startswith(PREFIX) else key


def _read_safetensors(path: str) -> tuple[dict, dict]:
    try:
        with safe_open(path, framework="pt") as fh:
            return {_strip(k): fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise DWMError("checkpoint", f"cannot read {path}: {err}",
                       "the file is damaged or not a safetensors file; export or download it again") from err


def _rank_of(lora: dict, source: str) -> int:
    ranks = {v.shape[0] for k, v in lora.items() if ".lora_A." in k}
    if len(ranks) != 1:
        raise DWMError("checkpoint", f"{source} holds no LoRA tensors or mixed ranks {sorted(ranks)}",
                       "point at a DWM LoRA output folder or a .safetensors file exported by our trainer")
    return ranks.pop()


def _split(tensors: dict, source: str) -> tuple[dict, dict]:
    lora = {k: v for k, v in tensors.items() if ".lora_A." in k or ".lora_B." in k}
    proj = {k.rsplit(".", 1)[-1]: tensors[k] for k in PROJ_KEYS if k in tensors}
    if "weight" not in proj:
        raise DWMError("checkpoint", f"{source} has no patch_embed.proj.weight",
                       "a DWM checkpoint carries the widened patch projection; use the folder or file "
                       "written at the end of DWM training")
    return lora, proj


def _read_folder(path: str) -> DWMCheckpoint:
    lora_path = os.path.join(path, LORA_FILE)
    if not os.path.isfile(lora_path):
        hint = ("this looks like an intermediate checkpoint-N folder of the reference trainer, which "
                "holds no LoRA weights (a known bug of its save hook)"
                if os.path.basename(os.path.normpath(path)).startswith("checkpoint-")
                else f"{LORA_FILE} is missing")
        raise DWMError("checkpoint", f"{path}: {hint}",
                       "use the reference run's final output folder, or a checkpoint exported by our "
                       "trainer (every one of its checkpoints holds usable weights)")
    lora, _ = _read_safetensors(lora_path)
    if os.path.isfile(os.path.join(path, NON_LORA_FILE)):
        extra, _ = _read_safetensors(os.path.join(path, NON_LORA_FILE))
    elif os.path.isfile(os.path.join(path, NON_LORA_LEGACY)):
        extra = torch.load(os.path.join(path, NON_LORA_LEGACY), map_location="cpu", weights_only=True)
        extra = {_strip(k): v for k, v in extra.items()}
    else:
        raise DWMError("checkpoint", f"{path} has {LORA_FILE} but no {NON_LORA_FILE} (or {NON_LORA_LEGACY})",
                       "copy the non-LoRA weights file from the same training run into the folder")
    lora, _ = _split({**lora, **extra}, path)
    _, proj = _split(extra, path)
    rank = _rank_of(lora, path)
    # The reference inference sets alpha = rank whatever the training alpha.
    return DWMCheckpoint(lora=lora, patch_embed=proj, rank=rank, alpha=float(rank), source=path)


def _read_file(path: str) -> DWMCheckpoint:
    tensors, meta = _read_safetensors(path)
    lora, proj = _split(tensors, path)
    rank = _rank_of(lora, path)
    alpha = float(meta.get("alpha", rank))
    return DWMCheckpoint(lora=lora, patch_embed=proj, rank=rank, alpha=alpha, source=path)


def load_checkpoint(path: str) -> DWMCheckpoint:
    """Read a reference output folder or one of our single-file checkpoints."""
    if os.path.isdir(path):
        return _read_folder(path)
    if os.path.isfile(path):
        if not path.endswith(".safetensors"):
            raise DWMError("checkpoint", f"{path} is not a .safetensors file",
                           "pass a DWM .safetensors file or the reference output folder that holds "
                           f"{LORA_FILE}")
        return _read_file(path)
    raise DWMError("checkpoint", f"{path} does not exist",
                   "check the path; LoRAs for the nodes go in ComfyUI/models/loras/")


def save_checkpoint_file(ckpt: DWMCheckpoint, path: str, dtype: torch.dtype | None = None) -> None:
    """Write our single-file format atomically."""
    tensors = {PREFIX + k: v for k, v in ckpt.lora.items()}
    tensors.update({PREFIX + "patch_embed.proj." + k: v for k, v in ckpt.patch_embed.items()})
    tensors = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in tensors.items()}
    meta = {"format": FORMAT, "format_version": "1", "base_version": ckpt.base_version,
            "rank": str(ckpt.rank), "alpha": str(ckpt.alpha),
            "target_modules": ",".join(ckpt.target_modules)}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=meta)


def save_reference_folder(ckpt: DWMCheckpoint, path: str, dtype: torch.dtype | None = None) -> None:
    """Write the reference output folder layout (unprefixed keys, no metadata), atomically."""
    def cpu(tensors):
        return {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in tensors.items()}

    with atomic_dir(path) as tmp:
        save_file(cpu(ckpt.lora), os.path.join(tmp, LORA_FILE))
        save_file(cpu({"patch_embed.proj." + k: v for k, v in ckpt.patch_embed.items()}),
                  os.path.join(tmp, NON_LORA_FILE))


def check_fits(ckpt: DWMCheckpoint, transformer: torch.nn.Module, base_version: str) -> None:
    """Refuse a checkpoint whose tensors do not fit the loaded base, naming both sides."""
    proj = transformer.patch_embed.proj
    got, want = tuple(ckpt.patch_embed["weight"].shape), tuple(proj.weight.shape)
    if got != want:
        raise DWMError("LoRA", f"{ckpt.source} was trained for a CogVideoX-Fun V{ckpt.base_version} base "
                       f"of another size (patch_embed.proj.weight {list(got)}), but the loaded base is "
                       f"V{base_version} (expects {list(want)})",
                       f"load the base model this LoRA was trained on, or a LoRA trained on V{base_version}")
    modules = dict(transformer.named_modules())
    for key, tensor in ckpt.lora.items():
        name, kind = key.split(".lora_")
        module = modules.get(name)
        if module is None or not hasattr(module, "in_features"):
            raise DWMError("LoRA", f"{ckpt.source} targets {name}, which the loaded base "
                           f"(V{base_version}, {transformer.config.num_layers} layers) does not have",
                           "load the base model this LoRA was trained on")
        expected = (ckpt.rank, module.in_features) if kind.startswith("A") else (module.out_features, ckpt.rank)
        if tuple(tensor.shape) != expected:
            raise DWMError("LoRA", f"{ckpt.source}: {key} has shape {list(tensor.shape)}, the loaded "
                           f"V{base_version} base needs {list(expected)}",
                           "load the base model this LoRA was trained on")
