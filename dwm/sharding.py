"""Generation over many processes and nodes (``accelerate launch``): which samples each process runs.

Process ``r`` of ``W`` owns the samples at list places ``i % W == r``. The split depends only on the list
and the process count, never on what is already done or on what another node's disk shows, so every sample
has exactly one owner; the owner skips a sample whose outputs exist (written atomically: a half-written
file never counts) and generates the rest with the seeds of the options, the same in every process, so a
sharded run writes what one process writes. With ``--cfg-parallel`` the two processes instead run every
sample together (dwm/cfg_parallel.py) and only the first writes.

Plain ``python -m comfyui_dwm`` (no ``WORLD_SIZE`` above 1 in the environment) is one process of one, and
accelerate is not imported. Other processes than the first tag their stderr lines with their rank and show
no step bars; the first process's sample lines count every process's finished samples (read from disk).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

from .errors import DWMError


@dataclass(frozen=True)
class Processes:
    """This process's place among the launched ones (one of one when not launched)."""

    rank: int = 0
    count: int = 1
    cfg_parallel: bool = False
    state: Any = None  # accelerate's PartialState when launched

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def writes(self) -> bool:
        """Whether this process writes its outputs (with --cfg-parallel only the first does)."""
        return self.main or not self.cfg_parallel

    def mine(self, items: list) -> list[tuple[int, Any]]:
        """``(place, item)`` of the items this process runs."""
        step = 1 if self.cfg_parallel else self.count
        return [(i, item) for i, item in enumerate(items) if i % step == self.rank % step]

    def wait(self) -> None:
        """Every process reaches this point before any goes on (no-op for one process)."""
        if self.state is not None:
            self.state.wait_for_everyone()

    def tally(self, jobs: list) -> str:
        """The first process's note of finished samples over all processes (those with outputs on disk)."""
        if self.count == 1 or not self.main:
            return ""
        return f" ({sum(job.done() for job in jobs)}/{len(jobs)} done over {self.count} processes)"

    def summary(self, mine: int, total: int) -> str:
        if self.count == 1:
            return f"{total} samples"
        return f"{mine} of {total} samples (process {self.rank + 1}/{self.count})"


class RankLines:
    """stderr of a process other than the first: each line tagged with its rank."""

    def __init__(self, stream, tag: str):
        self.stream, self.tag, self.fresh = stream, tag, True

    def write(self, text: str) -> int:
        for part in text.splitlines(keepends=True):
            self.stream.write((self.tag if self.fresh else "") + part)
            self.fresh = part.endswith("\n")
        return len(text)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def launched() -> bool:
    """Whether a launcher (accelerate, torchrun) started several processes."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def _cpu_only(device: str) -> bool:
    import torch

    flag = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return flag or device == "cpu" or not torch.cuda.is_available()


def start(args) -> Processes:
    """Join the launched processes (if any), point ``--device auto|cuda`` at this process's GPU, check
    ``--cfg-parallel``; sets and returns ``args.processes``."""
    cfg_parallel = bool(getattr(args, "cfg_parallel", False))
    processes = Processes(cfg_parallel=cfg_parallel)
    if launched():
        from accelerate import PartialState

        state = PartialState(cpu=_cpu_only(args.device))  # its default would ignore CPU-only launches
        processes = Processes(state.process_index, state.num_processes, cfg_parallel, state)
        if processes.count != int(os.environ["WORLD_SIZE"]):  # each process would think it is alone
            raise DWMError("accelerate launch", f"{os.environ['WORLD_SIZE']} processes started but "
                           f"{processes.count} joined", "launch with --multi_gpu (and ACCELERATE_USE_CPU=1 "
                           "on a machine without GPUs)")
        if state.device.type != "cpu" and args.device in ("auto", "cuda"):
            args.device = str(state.device)
        if not processes.main:
            sys.stderr = RankLines(sys.stderr, f"[rank {processes.rank}/{processes.count}] ")
    if cfg_parallel:
        from .cfg_parallel import check

        check(processes.count, args.guidance)
    args.processes = processes
    return processes


def single(args) -> Processes:
    """One process of one, for commands that never shard (``demo``)."""
    args.processes = Processes()
    return args.processes

