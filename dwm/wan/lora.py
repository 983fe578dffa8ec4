"""Apply DWM-Wan releases at a strength, stacked, without reloading the model.

A release has two parts (see ``checkpoint.py``):

* the LoRA on every Linear, keyed by the original Wan module paths. It is installed as a peft adapter
  through diffusers' ``load_lora_adapter`` under the diffusers module names (found with diffusers' own
  Wan key converter, so the two namings cannot drift apart), each module with its own alpha, and
  weighted with ``set_adapters``: ``W + strength * alpha / rank * up @ down``, as the reference merges it;
* the widened patch embedding, which no adapter covers: ``blend_patch_embedding`` at the same strength
  (1 = the release tensors exactly, 0 = the base exactly). Stacked releases add their changes to the base.

Adapters stay installed once per release object, so a strength sweep only re-weights them.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import torch
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

from ..adapters import weigh_adapters
from ..errors import DWMError
from .checkpoint import WanRelease, blend_patch_embedding
from .model import WanBase


def diffusers_module_name(path: str) -> str:
    """Original Wan module path -> diffusers name (``blocks.0.cross_attn.k_img`` -> ``blocks.0.attn2.add_k_proj``)."""

    (key,) = convert_wan_transformer_to_diffusers({f"{path}.weight": torch.empty(0)})
    return key[: -len(".weight")]


def check_fits(release: WanRelease, base: WanBase) -> dict[str, str]:
    """Original path -> diffusers name for every LoRA module; a DWMError naming both sides if it does not fit."""
    transformer = base.transformer
    cfg = transformer.config
    width = cfg.num_attention_heads * cfg.attention_head_dim
    here = f"the loaded base {base.source} (width {width}, {cfg.num_layers} layers)"
    fix = "load the base model this release was trained on (DWM-Wan2.1-Fun-14b-LoRA: Wan2.1-Fun-V1.1-14B-InP)"
    got, want = list(release.patch_embedding["weight"].shape), list(transformer.patch_embedding.weight.shape)
    if got != want:
        raise DWMError("lora", f"{release.source} has patch_embedding {got}, {here} needs {want}", fix)
    modules = dict(transformer.named_modules())
    names = {}
    for path, (down, up, _) in release.lora.items():
        name = diffusers_module_name(path)
        module = getattr(modules.get(name), "base_layer", modules.get(name))  # peft wraps adapted Linears
        if not isinstance(module, torch.nn.Linear):
            raise DWMError("lora", f"{release.source} targets {path}, which {here} does not have", fix)
        need = ([release.rank, module.in_features], [module.out_features, release.rank])
        if [list(down.shape), list(up.shape)] != list(need):
            raise DWMError("lora", f"{release.source}: {path} has down {list(down.shape)} / up {list(up.shape)}, "
                           f"{here} needs {need[0]} / {need[1]}", fix)
        names[path] = name
    return names


def _ensure_adapter(base: WanBase, release: WanRelease) -> str:
    entry = base.adapters.get(id(release))
    if entry is not None:
        return entry[0]
    names = check_fits(release, base)
    adapter = f"dwm_wan_{len(base.adapters)}_{id(release):x}"
    state = {}
    for path, (down, up, _) in release.lora.items():
        state[f"{names[path]}.lora_A.weight"] = down
        state[f"{names[path]}.lora_B.weight"] = up
    # Exact (escaped) names: peft reads alpha_pattern keys as regular expressions.
    alphas = {re.escape(names[path]): alpha for path, (_, _, alpha) in release.lora.items()}
    config = {"r": release.rank, "lora_alpha": release.rank, "alpha_pattern": alphas,
              "target_modules": sorted(names.values())}
    with warnings.catch_warnings():  # peft warns on every adapter after the first; stacking is the point here
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        base.transformer.load_lora_adapter(state, prefix=None, adapter_name=adapter, metadata=config)
    # Holding the release in the entry keeps its id unique while the adapter is installed.
    base.adapters[id(release)] = (adapter, release)
    return adapter


def _set_patch_embedding(base: WanBase, releases: Sequence[tuple[WanRelease, float]]) -> None:
    """The first release's blend (exact at strength 0 and 1), plus every further release's change."""
    value = {k: v.float() for k, v in base.base_patch.items()}
    for i, (release, strength) in enumerate(releases):
        blended = blend_patch_embedding(base.base_patch, release, strength)
        value = blended if i == 0 else {k: value[k] + blended[k] - base.base_patch[k].float() for k in value}
    conv = base.transformer.patch_embedding
    with torch.no_grad():
        for part, tensor in value.items():
            getattr(conv, part).copy_(tensor.to(getattr(conv, part).dtype))


def activate(base: WanBase, releases: Sequence[tuple[WanRelease, float]]) -> None:
    """Make the transformer compute the base plus each release at its strength (empty = the base)."""
    weights: dict[str, float] = {}
    for release, strength in releases:
        name = _ensure_adapter(base, release)
        weights[name] = weights.get(name, 0.0) + float(strength)
    weigh_adapters(base, weights)
    _set_patch_embedding(base, releases)
