"""Offline half of the batch queue: workflow roles, jobs, sample files and the manifest.

Kept apart from the HTTP/websocket code in dwm.queue so that every check that needs no
server runs (and fails with a one-line message) before anything is uploaded or queued.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from comfyui_dwm.atomic import atomic_path
from comfyui_dwm.dataset import Sample, read_prompt
from comfyui_dwm.names import base_name, safe_part

# Which input of a node class a role writes to. Loaders are ComfyUI's or VideoHelperSuite's; the
# prompt and seed live in our DWMTextEncode / DWMSampler (CogVideoX) or in the core text encoder and
# samplers (Wan workflows).
ROLE_INPUTS = {
    "LoadVideo": "file",
    "VHS_LoadVideo": "video",
    "VHS_LoadVideoFFmpeg": "video",
    "DWMTextEncode": "prompt",
    "CLIPTextEncode": "text",
    "DWMSampler": "seed",
    "KSampler": "seed",
    "KSamplerAdvanced": "noise_seed",
    "RandomNoise": "noise_seed",  # the seed of SamplerCustomAdvanced
    "PrimitiveInt": "value",  # a shared seed node feeding several samplers
}
# role -> (_meta.titles that mark its node, the sample's video it uploads: a dwm.dataset video key)
ROLES = {
    "static_video": (("static video",), "static"),
    "hand_video": (("hand video",), "hands"),
    "prompt": (("prompt",), None),
    "sampler": (("sampler", "seed"), None),
}


class UsageError(Exception):
    """Bad input that the user can fix; printed as one line, exit code 2."""


@dataclass
class Job:
    sample: str
    seed: int
    status: str = "pending"  # pending | queued | done | error | cancelled
    prompt_id: str | None = None
    outputs: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.sample, self.seed)

    @property
    def label(self) -> str:
        return f"{self.sample} seed {self.seed}"


@dataclass
class Recipe:
    """What every job shares: the API workflow, the input each role writes, the --set values
    (value, node, input) and each sample's inputs (a video to upload, or the prompt text)."""
    wf: dict
    targets: dict[str, tuple[str, str]]
    sets: list[tuple[object, str, str]]
    files: dict[str, dict[str, Path | str]]

    def prompt(self, job: Job, upload) -> dict:
        """The job's workflow; upload(path, name) puts a video on the server and returns its loader value."""
        wf = json.loads(json.dumps(self.wf))
        values: dict[str, object] = {"sampler": job.seed}
        for role, value in self.files[job.sample].items():
            if isinstance(value, Path):
                value = upload(value, f"{job.sample}_{ROLES[role][1]}{value.suffix}")
            values[role] = value
        for role, (node, inp) in self.targets.items():
            wf[node]["inputs"][inp] = values[role]
        for value, node, inp in self.sets:
            wf[node]["inputs"][inp] = value
        return wf


def load_workflow(path: str) -> dict:
    """Read an API-format workflow; UI-format files are the usual mistake, so name that fix."""
    try:
        with open(path, encoding="utf-8") as f:
            wf = json.load(f)
    except OSError as e:
        raise UsageError(f"cannot read workflow {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"workflow {path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if isinstance(wf, dict) and "nodes" in wf and "links" in wf:
        raise UsageError(
            f"workflow {path} is in UI format (has 'nodes'/'links'): in ComfyUI use "
            "Workflow > Export (API) and pass that file")
    if not isinstance(wf, dict) or not wf or not all(
            isinstance(n, dict) and "class_type" in n for n in wf.values()):
        raise UsageError(f"workflow {path} is not an API-format workflow "
                         "({node_id: {class_type, inputs}}): export it with Workflow > Export (API)")
    return wf


def parse_target(spec: str, wf: dict, what: str) -> tuple[str, str, str]:
    """(value or role, node_id, input) from NODE_ID.INPUT=VALUE or ROLE=NODE_ID.INPUT.

    The node id is split off at the last dot: ids may hold dots, input names never do.
    """
    lhs, sep, rhs = spec.partition("=")
    ref, other = (lhs, rhs) if what == "--set" else (rhs, lhs)
    node, dot, inp = ref.rpartition(".")
    if not sep or not dot or not node or not inp:
        form = "NODE_ID.INPUT=VALUE" if what == "--set" else "ROLE=NODE_ID.INPUT"
        raise UsageError(f"{what} {spec!r} is not of the form {form}")
    if node not in wf:
        raise UsageError(f"{what} {spec!r}: the workflow has no node {node!r} "
                         f"(its node ids: {', '.join(sorted(wf))})")
    return other, node, inp


def parse_value(text: str):
    """--set values are JSON when they parse (numbers, lists, booleans), else plain strings."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def find_targets(wf: dict, overrides: list[str]) -> dict[str, tuple[str, str]]:
    """role -> (node_id, input) from `_meta.title`, for the roles no --target override names."""
    targets: dict[str, tuple[str, str]] = {}
    overridden = {spec.partition("=")[0] for spec in overrides}
    for role, (titles, _video) in ROLES.items():
        if role in overridden:
            continue
        hits = [nid for nid, n in wf.items()
                if str(n.get("_meta", {}).get("title", "")).strip().lower() in titles]
        title = " or ".join(repr(t) for t in titles)
        if len(hits) > 1:
            raise UsageError(f"several nodes are titled {title} ({', '.join(hits)}): "
                             f"keep one or pass --target {role}=NODE_ID.INPUT")
        if hits:
            cls = wf[hits[0]]["class_type"]
            if cls not in ROLE_INPUTS:
                raise UsageError(f"node {hits[0]} titled {title} is a {cls}, whose input for it is "
                                 f"unknown: pass --target {role}=NODE_ID.INPUT")
            targets[role] = (hits[0], ROLE_INPUTS[cls])
    for spec in overrides:
        role, node, inp = parse_target(spec, wf, "--target")
        if role not in ROLES:
            raise UsageError(f"--target {spec!r}: unknown role {role!r} (roles: {', '.join(ROLES)})")
        targets[role] = (node, inp)
    return targets


def sample_inputs(sample: Sample, roles) -> dict[str, Path | str]:
    """Per role the workflow uses: the video to upload (a missing one is named), or the prompt text
    (no prompt file = the empty prompt, valid in DWM)."""
    inputs: dict[str, Path | str] = {}
    for role in roles:
        key = ROLES[role][1]
        if role == "prompt":
            inputs[role] = read_prompt(sample)
        elif key is not None:
            path = Path(sample.video(key))
            if not path.is_file():
                raise UsageError(f"sample {sample.name}: missing {role.replace('_', ' ')} file {path} "
                                 "(fix --data-root or drop the sample from --list)")
            inputs[role] = path
    return inputs


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds {text!r} must be comma-separated integers, e.g. 0,1,2") from None
    if not seeds:
        raise UsageError("--seeds is empty: give at least one seed, e.g. --seeds 0")
    return seeds


def output_name(job: Job, node: str, filename: str) -> str:
    """A file name inside --out on every platform, whatever the workflow's node ids or the server's names."""
    return f"{safe_part(job.sample)}_seed{job.seed}_{safe_part(node)}_{base_name(filename)}"


class Manifest:
    """<out>/manifest.jsonl: one record per job, rewritten whole after every change."""

    def __init__(self, out_dir: Path):
        self.path = out_dir / "manifest.jsonl"
        self.jobs: dict[tuple[str, int], Job] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    job = Job(**json.loads(line))
                    self.jobs[job.key] = job

    def plan(self, samples: list[str], seeds: list[int]) -> list[Job]:
        """All jobs in order; earlier records are kept, so finished work is skipped on rerun."""
        out = []
        for sample in samples:
            for seed in seeds:
                job = self.jobs.setdefault((sample, seed), Job(sample, seed))
                if not self.finished(job):
                    job.status, job.error, job.outputs, job.prompt_id = "pending", None, [], None
                out.append(job)
        return out

    def finished(self, job: Job) -> bool:
        return job.status == "done" and all((self.path.parent / o).is_file() for o in job.outputs)

    def save(self) -> None:
        lines = [json.dumps(vars(j), ensure_ascii=False) for j in self.jobs.values()]
        with atomic_path(str(self.path)) as tmp:
            Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8")


def describe_node_errors(res: dict, wf: dict) -> str:
    """One line from a 400 /prompt answer: the top message plus each node's reasons."""
    err = res.get("error") or {}
    parts = [err.get("message", "prompt rejected") if isinstance(err, dict) else str(err)]
    if isinstance(err, dict) and err.get("details"):
        parts[0] += f" ({err['details']})"
    for nid, ne in (res.get("node_errors") or {}).items():
        reasons = "; ".join(f"{e.get('message')}: {e.get('details')}" for e in ne.get("errors", []))
        parts.append(f"node {nid} ({ne.get('class_type', wf.get(nid, {}).get('class_type'))}): {reasons}")
    return " | ".join(parts)


def describe_failure(entry: dict) -> str:
    """One line from a failed history entry's execution_error / execution_interrupted message."""
    for event, data in entry.get("status", {}).get("messages", []):
        if event == "execution_error":
            return (f"node {data.get('node_id')} ({data.get('node_type')}) raised "
                    f"{data.get('exception_type')}: {str(data.get('exception_message', '')).strip()}")
        if event == "execution_interrupted":
            return f"interrupted at node {data.get('node_id')} ({data.get('node_type')})"
    return "failed without an error message"
