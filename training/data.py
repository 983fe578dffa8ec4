"""Dataset in the reference layout, with precomputed latents when present and videos otherwise.

Samples and their file names follow the reference layout (``dwm/dataset.py``); each family names its
precomputed files with a folder suffix and their shapes (``Layout``). CogVideoX latent files hold what
the reference's encoder writes: the VAE's latent *distribution* parameters (mean and log-variance,
``[32, F_lat, H/8, W/8]``, unscaled), from which a fresh sample is drawn at every training step with the
run's generator; prompt files hold T5 embeddings ``[226, D]``. Wan files (``*_wan/``) hold one
normalised latent sample ``[16, F_lat, H/8, W/8]`` and umT5 embeddings ``[L, 4096]`` trimmed to the prompt.

``DWMDataset.probe`` checks every sample cheaply before training (first video frames, tensor shapes
read from file headers); an error that still comes up while a data-loader worker loads an item
travels back as data (``CarryErrors``), so the user sees the same one-line message as without workers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from comfyui_dwm.dataset import LATENT_DIRS, PROMPT_EMBED_DIR, VIDEO_DIRS, Sample, read_prompt
from comfyui_dwm.errors import DWMError
from comfyui_dwm.frames import prepare_frames
from comfyui_dwm.cogvideox.model import LATENT_CHANNELS
from comfyui_dwm.cogvideox.text import TEXT_TOKENS
from comfyui_dwm.video_io import probe_video, read_video


@dataclass(frozen=True)
class Layout:
    """A family's precomputed files: folder suffix, latent channels, prompt length (None: 1..max_tokens)."""

    suffix: str = ""
    latent_channels: int = 2 * LATENT_CHANNELS
    text_tokens: int | None = TEXT_TOKENS
    max_tokens: int = TEXT_TOKENS
    what: str = "CogVideoX VAE latent distribution"
    encoder: str = "T5"

    def latents(self, sample: Sample, key: str) -> str:
        return os.path.join(sample.root, LATENT_DIRS[key] + self.suffix, sample.stem + ".pt")

    def prompt_embeds(self, sample: Sample) -> str:
        return os.path.join(sample.root, PROMPT_EMBED_DIR + self.suffix, sample.stem + ".pt")


COGVIDEOX_LAYOUT = Layout()


def latent_shape(width: int, height: int, num_frames: int, channels: int = 2 * LATENT_CHANNELS) -> tuple:
    """Shape of a latent file for this size (CogVideoX: mean and log-variance stacked)."""
    return (channels, (num_frames - 1) // 4 + 1, height // 8, width // 8)


def load_tensor(sample: Sample, path: str, mmap: bool = False) -> torch.Tensor:
    """The tensor of a ``.pt`` file; ``mmap`` reads only its header and shape (the data stays on disk)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise sample.error(f"cannot read {path} ({type(err).__name__}: {err})",
                           "delete the file and run `python -m comfyui_dwm.training.prepare` again") from err


def check_shape(sample: Sample, path: str, tensor, expected: tuple, what: str, fix: str,
                max_first: int = 0) -> torch.Tensor:
    """``expected[0]`` None: any length from 1 to ``max_first``."""
    if not isinstance(tensor, torch.Tensor):
        raise sample.error(f"{path} holds a {type(tensor).__name__}, not a tensor", fix)
    if tensor.ndim == len(expected) + 1 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if expected[0] is None and tensor.ndim == len(expected) and 1 <= tensor.shape[0] <= max_first:
        expected = (tensor.shape[0], *expected[1:])
    if tuple(tensor.shape) != tuple(expected):
        raise sample.error(f"{path} has shape {list(tensor.shape)}, expected {list(expected)} ({what})", fix)
    if not torch.is_floating_point(tensor):
        raise sample.error(f"{path} holds {tensor.dtype} values, not floats", fix)
    return tensor


class DWMDataset(Dataset):
    """Items: ``name``, ``video``/``static``/``hands`` (the layout's latents, e.g. a CogVideoX distribution
    ``[32, F, h, w]``, or frames ``[3, F, H, W]`` in [-1, 1] when not precomputed) and ``prompt`` (embedding
    ``[226, D]`` / ``[L, D]``, or text)."""

    def __init__(self, samples: list[Sample], width: int, height: int, num_frames: int, text_dim: int,
                 layout: Layout = COGVIDEOX_LAYOUT):
        self.samples, self.width, self.height, self.num_frames = samples, width, height, num_frames
        self.text_dim, self.layout = text_dim, layout
        self.check_files()

    def __len__(self) -> int:
        return len(self.samples)

    def check_files(self) -> None:
        """Fail before training starts when a sample lacks both its latents and its video."""
        for sample in self.samples:
            for key in VIDEO_DIRS:
                latents = self.layout.latents(sample, key)
                if not os.path.isfile(latents) and not os.path.isfile(sample.video(key)):
                    raise sample.error(f"{sample.video(key)} does not exist (and no {latents})",
                                       "check the list file and the data root, or remove the sample")

    def probe(self) -> None:
        """Check every sample the way loading it would, but cheaply (a video's first frame, a tensor's
        shape from its header), so that a bad sample stops the run before training, not when its
        batch comes up."""
        for sample in self.samples:
            for key in VIDEO_DIRS:
                if os.path.isfile(self.layout.latents(sample, key)):
                    self._latents(sample, self.layout.latents(sample, key), mmap=True)
                else:
                    self._probe(sample, key)
            if os.path.isfile(self.layout.prompt_embeds(sample)):
                self._embeds(sample, mmap=True)
            else:
                read_prompt(sample)

    def _latents(self, sample: Sample, path: str, mmap: bool = False) -> torch.Tensor:
        expected = latent_shape(self.width, self.height, self.num_frames, self.layout.latent_channels)
        return check_shape(sample, path, load_tensor(sample, path, mmap), expected,
                           f"{self.layout.what} of {self.num_frames} frames at "
                           f"{self.width}x{self.height}",
                           "run `python -m comfyui_dwm.training.prepare` with the same --width/--height/--num-frames "
                           "(delete the stale .pt files first), or train at the size they were made for")

    def _embeds(self, sample: Sample, mmap: bool = False) -> torch.Tensor:
        path = self.layout.prompt_embeds(sample)
        return check_shape(sample, path, load_tensor(sample, path, mmap), (self.layout.text_tokens, self.text_dim),
                           f"{self.layout.encoder} embedding of the loaded base", "the embeddings come from another "
                           "text encoder: run `python -m comfyui_dwm.training.prepare` with this base (delete the old "
                           f"{os.path.basename(os.path.dirname(path))}/)", self.layout.max_tokens)

    def _probe(self, sample: Sample, key: str) -> None:
        try:
            probe_video(sample.video(key), name=f"sample {sample.name} {VIDEO_DIRS[key]}")
        except DWMError as err:
            raise sample.error(err.problem, err.fix) from None

    def _video(self, sample: Sample, key: str) -> torch.Tensor:
        path = self.layout.latents(sample, key)
        if os.path.isfile(path):
            return self._latents(sample, path)
        try:
            frames, _ = read_video(sample.video(key), name=f"sample {sample.name} {VIDEO_DIRS[key]}")
            return prepare_frames(frames, self.width, self.height, self.num_frames, f"{sample.name} {key}")
        except DWMError as err:
            raise sample.error(err.problem, err.fix) from err

    def _prompt(self, sample: Sample):
        return self._embeds(sample) if os.path.isfile(self.layout.prompt_embeds(sample)) else read_prompt(sample)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        item = {key: self._video(sample, key) for key in VIDEO_DIRS}
        item.update(name=sample.name, prompt=self._prompt(sample))
        return item


@dataclass(frozen=True)
class ItemError:
    """A :class:`DWMError` raised while loading an item, carried to the main process as data: torch
    re-raises a worker's exception as a RuntimeError wrapping the worker's traceback."""

    what: str
    problem: str
    fix: str


class CarryErrors(Dataset):
    """``dataset`` whose item errors travel as :class:`ItemError` items (see :func:`raise_item_errors`)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            return self.dataset[index]
        except DWMError as err:
            return ItemError(err.what, err.problem, err.fix)


def raise_item_errors(items: list) -> list[dict]:
    """Raise a carried item error in this process as the same one-line :class:`DWMError`."""
    for item in items:
        if isinstance(item, ItemError):
            raise DWMError(item.what, item.problem, item.fix)
    return items


def collate(items: list[dict]) -> list[dict]:
    """Keep items apart: a batch may mix precomputed and on-the-fly samples."""
    return items
