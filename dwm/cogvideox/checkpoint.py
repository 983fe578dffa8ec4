"""DWM checkpoint IO: the reference output folder and our single-file format.

Reference folder (written by the reference trainer, read as is, every layout its inference reads):
  ``pytorch_lora_weights.safetensors``  peft ``lora_A``/``lora_B`` keys, with or without a
    (or ``pytorch_lora_weights.bin``)   ``transformer.`` prefix, no metadata (alpha = rank)
  ``non_lora_weights.safetensors``      ``patch_embed.proj.weight`` / ``.bias``, widened to 49 channels
    (or ``non_lora_weights.pt``)
  ``transformer/``                      a full fine-tune (``training.mode: full``): the whole diffusers
                                        transformer (``*.safetensors``, or ``pytorch_model.bin``); its
                                        patch projection becomes ``patch_embed``, the rest ``weights``
  an experiment ``*.yaml``              beside the files, or in the parent of a ``checkpoint-*`` folder;
                                        kept in ``config``: its ``training.mode: full`` picks the full
                                        fine-tune when a folder holds both, ``describe()`` reports its
                                        pipeline type, and a ``lora_alpha`` other than the rank is logged
                                        (the reference inference uses alpha = rank, and so do we)
Torch files load with ``weights_only=True``. A DWM-Wan release is refused, named as such.

Single file (``*.safetensors``, ours): the same tensors in one file, every key prefixed with
``transformer.``, and string metadata ``format=dwm-lora``, ``format_version=1``, ``base_version``
("1.1"/"1.5"), ``rank``, ``alpha``, ``target_modules`` (comma separated). See docs/checkpoint-format.md.
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass, field

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..atomic import atomic_dir, atomic_path
from ..errors import DWMError
from ..experiment import read_config
from ..family import lora_family

LORA_FILE = "pytorch_lora_weights.safetensors"
LORA_FILES = (LORA_FILE, "pytorch_lora_weights.bin")  # the reference inference's order
NON_LORA_FILE = "non_lora_weights.safetensors"
NON_LORA_LEGACY = "non_lora_weights.pt"
FULL_DIR = "transformer"
FULL_TORCH_FILE = "pytorch_model.bin"  # the reference's fallback when transformer/ has no safetensors
PROJ_KEYS = ("patch_embed.proj.weight", "patch_embed.proj.bias")
FORMAT = "dwm-lora"
PREFIX = "transformer."
log = logging.getLogger("dwm")


@dataclass
class DWMCheckpoint:
    """A DWM LoRA: peft LoRA tensors (unprefixed keys) and the widened patch projection.

    A full fine-tune has no LoRA (``rank`` 0) and every other transformer tensor in ``weights``.
    """

    lora: dict
    patch_embed: dict  # "weight", optional "bias"
    rank: int
    alpha: float
    source: str
    weights: dict = field(default_factory=dict)  # full fine-tune: diffusers transformer keys
    config: dict = field(default_factory=dict)  # the experiment yaml, {} if none

    @property
    def is_full(self) -> bool:
        return bool(self.weights)

    @property
    def pipeline_type(self) -> str | None:
        pipeline = self.config.get("pipeline")
        return pipeline.get("type") if isinstance(pipeline, dict) else None

    def describe(self) -> str:
        """One line for logs: what was loaded, with the yaml's pipeline type where present."""
        kind = "full fine-tune" if self.is_full else f"LoRA rank {self.rank}, alpha {self.alpha:g}"
        pipeline = f", pipeline {self.pipeline_type}" if self.pipeline_type else ""
        return f"{self.source}: CogVideoX-Fun V{self.base_version} DWM {kind}{pipeline}"

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


def _read_torch(path: str) -> dict:
    """A torch-saved state dict, loaded safely (tensors only, no pickled code)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError ...
        raise DWMError("checkpoint", f"cannot read {path}: {(str(err) or repr(err)).splitlines()[0]}",
                       "the file is damaged, or holds more than tensors; export it again as .safetensors") from err
    if not isinstance(state, dict):
        raise DWMError("checkpoint", f"{path} holds a {type(state).__name__}, not a state dict of tensors",
                       "export the weights again with the reference trainer")
    return {_strip(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _read_tensors(path: str) -> dict:
    return _read_safetensors(path)[0] if path.endswith(".safetensors") else _read_torch(path)


def _first_file(folder: str, names) -> str | None:
    return next((os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))), None)


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


def _training(config: dict) -> dict:
    training = config.get("training")
    return training if isinstance(training, dict) else {}


def _refuse_wan(path: str) -> None:
    """A DWM-Wan release (or Wan fine-tune) is told apart by its tensor names, and named as such."""
    kind = "full fine-tune" if os.path.isdir(os.path.join(path, FULL_DIR)) else "LoRA release"
    try:
        family = lora_family(path)
    except DWMError:  # no DWM tensors at all: the CogVideoX readers explain what is missing
        return
    if family == "wan":
        raise DWMError("checkpoint", f"{path} is a Wan DWM {kind} (DWM-Wan: lora_unet_ keys, 5-D "
                       "patch_embedding), not a CogVideoX-Fun one",
                       "load it with the DWM-Wan LoRA Loader on a Wan2.1-Fun InP base (the command line "
                       "picks the family itself)")


def _read_full(path: str, config: dict) -> DWMCheckpoint:
    """A full fine-tune: the reference reads every ``*.safetensors`` of ``transformer/``, else
    ``pytorch_model.bin``. Its patch projection is the widened one; the rest replaces the base's."""
    folder = os.path.join(path, FULL_DIR)
    files = sorted(glob.glob(os.path.join(glob.escape(folder), "*.safetensors")))
    if not files and os.path.isfile(os.path.join(folder, FULL_TORCH_FILE)):
        files = [os.path.join(folder, FULL_TORCH_FILE)]
    if not files:
        raise DWMError("checkpoint", f"{folder} holds no *.safetensors or {FULL_TORCH_FILE}",
                       "copy the whole transformer/ folder of the full fine-tune")
    tensors = {k: v for file in files for k, v in _read_tensors(file).items()}
    _, proj = _split(tensors, folder)
    weights = {k: v for k, v in tensors.items() if k not in PROJ_KEYS}
    return DWMCheckpoint(lora={}, patch_embed=proj, rank=0, alpha=0.0, source=path, weights=weights,
                         config=config)


def _read_lora_folder(path: str, lora_path: str, config: dict) -> DWMCheckpoint:
    extra_path = _first_file(path, (NON_LORA_FILE, NON_LORA_LEGACY))
    if extra_path is None:
        raise DWMError("checkpoint", f"{path} has {os.path.basename(lora_path)} but no {NON_LORA_FILE} "
                       f"(or {NON_LORA_LEGACY})",
                       "copy the non-LoRA weights file from the same training run into the folder")
    extra = _read_tensors(extra_path)
    lora, _ = _split({**_read_tensors(lora_path), **extra}, path)
    _, proj = _split(extra, path)
    rank = _rank_of(lora, path)
    # The reference inference sets alpha = rank whatever the training alpha.
    alpha = _training(config).get("lora_alpha", rank)
    if alpha != rank:
        log.warning("%s: the experiment config says lora_alpha %s; using alpha = rank = %d as the reference "
                    "inference does", path, alpha, rank)
    return DWMCheckpoint(lora=lora, patch_embed=proj, rank=rank, alpha=float(rank), source=path, config=config)


def _read_folder(path: str) -> DWMCheckpoint:
    config = read_config(path)
    lora_path = _first_file(path, LORA_FILES)
    full = os.path.isdir(os.path.join(path, FULL_DIR))
    # As the reference inference: a full fine-tune when the yaml says so, or when no LoRA is there.
    if full and (lora_path is None or _training(config).get("mode", "lora") == "full"):
        return _read_full(path, config)
    if lora_path is not None:
        return _read_lora_folder(path, lora_path, config)
    hint = ("this looks like an intermediate checkpoint-N folder of the reference trainer, which "
            "holds no LoRA weights (a known bug of its save hook)"
            if os.path.basename(os.path.normpath(path)).startswith("checkpoint-")
            else f"{LORA_FILE} (or {LORA_FILES[1]}, or a full fine-tune's {FULL_DIR}/) is missing")
    raise DWMError("checkpoint", f"{path}: {hint}",
                   "use the reference run's final output folder, or a checkpoint exported by our "
                   "trainer (every one of its checkpoints holds usable weights)")


def _read_file(path: str) -> DWMCheckpoint:
    tensors, meta = _read_safetensors(path)
    lora, proj = _split(tensors, path)
    rank = _rank_of(lora, path)
    alpha = float(meta.get("alpha", rank))
    return DWMCheckpoint(lora=lora, patch_embed=proj, rank=rank, alpha=alpha, source=path)


def load_checkpoint(path: str) -> DWMCheckpoint:
    """Read a reference output folder (any layout above) or one of our single-file checkpoints."""
    if not os.path.exists(path):
        raise DWMError("checkpoint", f"{path} does not exist",
                       "check the path; LoRAs for the nodes go in ComfyUI/models/loras/")
    try:
        if os.path.isdir(path):
            return _read_folder(path)
        if not path.endswith(".safetensors"):
            raise DWMError("checkpoint", f"{path} is not a .safetensors file",
                           f"pass a DWM .safetensors file or the reference output folder that holds {LORA_FILE}")
        return _read_file(path)
    except DWMError:  # every DWM-Wan folder or file fails here; only then tell it apart by its tensors
        _refuse_wan(path)
        raise


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
    for key, tensor in ckpt.weights.items():
        try:
            have = list(full_parameter(transformer, key).shape)
        except AttributeError:
            have = None
        if have != list(tensor.shape):
            raise DWMError("LoRA", f"{ckpt.source} is a full fine-tune whose {key} {list(tensor.shape)} does not "
                           f"fit the loaded V{base_version} base ({have or 'no such weight'})",
                           "load the base model this fine-tune was trained from")


def full_parameter(transformer: torch.nn.Module, key: str) -> torch.Tensor:
    """The base tensor a full fine-tune's ``key`` replaces, also when peft has wrapped its module
    (peft's layers expose their base layer's ``weight``/``bias``). AttributeError if there is none."""
    module, _, leaf = key.rpartition(".")
    value = getattr(transformer.get_submodule(module), leaf)
    if not isinstance(value, torch.Tensor):
        raise AttributeError(key)
    return value
