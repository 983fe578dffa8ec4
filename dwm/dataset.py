"""The reference data layout, shared by headless generation, the batch queue and the trainer.

A dataset root holds samples listed in text files, one a line: a video path relative to the root, as
the reference writes it (``realworld_dynamic/videos/00055.mp4``), or a bare id (``00055`` =
``videos/00055.mp4``). The folder above ``videos/`` is the sample's root; the same stem names its files
in ``videos/ videos_static/ videos_hands/`` (.mp4), ``prompts_rewrite/`` or else ``prompts/`` (.txt),
and the precomputed ``video_latents/ static_video_latents/ hand_video_latents/ prompt_embeds_rewrite/``
(.pt). An id may keep its extension (``00055.mp4``). Blank lines and ``#`` comments are ignored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import DWMError
from .names import safe_part

VIDEO_DIRS = {"video": "videos", "static": "videos_static", "hands": "videos_hands"}
LATENT_DIRS = {"video": "video_latents", "static": "static_video_latents", "hands": "hand_video_latents"}
PROMPT_DIRS = ("prompts_rewrite", "prompts")
PROMPT_EMBED_DIR = "prompt_embeds_rewrite"


@dataclass(frozen=True)
class Sample:
    name: str  # the list file's line
    root: str  # folder holding videos/, videos_static/, ...
    stem: str

    @property
    def slug(self) -> str:
        """A file-name-safe name for outputs (``realworld_dynamic_videos_00055``)."""
        return safe_part(self.name.removesuffix(".mp4").replace("/", "_").replace("\\", "_"))

    def video(self, key: str) -> str:
        return os.path.join(self.root, VIDEO_DIRS[key], self.stem + ".mp4")

    def prompt_file(self) -> str | None:
        for folder in PROMPT_DIRS:
            path = os.path.join(self.root, folder, self.stem + ".txt")
            if os.path.isfile(path):
                return path
        return None

    def error(self, problem: str, fix: str) -> DWMError:
        return DWMError(f"sample {self.name}", problem, fix)


def read_list(data_root: str, list_file: str) -> list[Sample]:
    """Samples of a list file (resolved as given, else under the data root), in file order."""
    path = list_file if os.path.isfile(list_file) else os.path.join(data_root, list_file)
    fix = "pass a text file with one sample per line, e.g. realworld_dynamic/videos/00055.mp4"
    if os.path.isdir(path):
        raise DWMError("list file", f"{list_file} is a folder", fix)
    if not os.path.isfile(path):
        raise DWMError("list file", f"{list_file} does not exist (nor under {data_root})", fix)
    try:
        with open(path, encoding="utf-8") as fh:
            lines = [line.split("#", 1)[0].strip() for line in fh]
    except (OSError, UnicodeDecodeError) as err:
        raise DWMError("list file", f"cannot read {path}: {err}", fix + " (UTF-8 text, readable)") from err
    lines = [line for line in lines if line]
    if not lines:
        raise DWMError("list file", f"{path} lists no samples", "add one sample per line (a video path or an id)")
    samples = []
    for line in lines:
        if "/" in line.replace("\\", "/"):  # a video path relative to the root
            video = os.path.join(data_root, line)
        else:  # an id, with or without its extension
            video = os.path.join(data_root, VIDEO_DIRS["video"], os.path.splitext(line)[0] + ".mp4")
        stem = os.path.splitext(os.path.basename(video))[0]
        samples.append(Sample(line, os.path.dirname(os.path.dirname(video)), stem))
    return samples


def read_prompt(sample: Sample) -> str:
    """The prompt text; a sample with no prompt file gets the empty prompt (valid in DWM)."""
    path = sample.prompt_file()
    if path is None:
        return ""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip()
    except (OSError, UnicodeDecodeError) as err:
        raise sample.error(f"cannot read {path} ({err})", "save the prompt as UTF-8 text") from err
