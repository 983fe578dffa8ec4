"""Whole-process behaviour of a Wan run: SIGKILL + ``--resume latest`` ends bit-identical to an
uninterrupted run, and a 2-process gloo run keeps the ranks identical."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import torch
from safetensors.torch import load_file

from test_training_fixtures import run_cli, write_dataset  # noqa: F401
from test_training_wan_fixtures import tiny_wan, wan_args, wan_data  # noqa: F401

STEPS = 6
ARGS = dict(max_train_steps=STEPS, checkpointing_steps=2, checkpoints_total_limit=2, prompt_dropout=0.5,
            hand_dropout=0.5)
FILES = ("lora_diffusion_pytorch_model.safetensors", "non_lora_weights.safetensors")


def finish(proc, timeout=300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def final(out: str) -> dict:
    return {f"{name}:{k}": v for name in FILES for k, v in load_file(os.path.join(out, "final", name)).items()}


def test_sigkill_then_resume_latest_is_bit_identical(tmp_path, tiny_wan, wan_data):
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    finish(run_cli(wan_args(tiny_wan, wan_data, straight, **ARGS)))
    victim = run_cli(wan_args(tiny_wan, wan_data, killed, **ARGS))
    while not os.path.isdir(os.path.join(killed, "checkpoint-2")):
        assert victim.poll() is None, victim.stdout.read()[-3000:]
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL and not os.path.exists(os.path.join(killed, "final"))
    log = finish(run_cli(wan_args(tiny_wan, wan_data, killed, resume="latest", **ARGS)))
    assert "resumed from" in log
    expected, resumed = final(straight), final(killed)
    assert resumed.keys() == expected.keys() and len(resumed) > 2
    for key in resumed:
        assert torch.equal(resumed[key], expected[key]), key
    assert sorted(n for n in os.listdir(killed) if n.startswith("checkpoint-")) == ["checkpoint-4", "checkpoint-6"]


def test_two_gloo_processes_keep_the_ranks_identical(tmp_path, tiny_wan, wan_data):
    out = str(tmp_path / "ddp")
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
                "29527"]
    log = finish(run_cli(wan_args(tiny_wan, wan_data, out, max_train_steps=3, checkpointing_steps=2,
                                  gradient_checkpointing="true"), launcher=launcher, ACCELERATE_USE_CPU="1"))
    assert "trained weights identical on 2 rank(s)" in log, log[-3000:]
    with open(os.path.join(out, "checkpoint-2", "train_state.json"), encoding="utf-8") as fh:
        assert json.load(fh)["num_processes"] == 2
    assert all(os.path.isfile(os.path.join(out, "final", name)) for name in FILES)
