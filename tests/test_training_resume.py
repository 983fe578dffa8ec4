"""Whole-process behaviour: SIGKILL + ``--resume latest`` is exact, and a 2-process CPU run stays in sync."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time

import torch

from test_training_fixtures import (config_args, load_file_tensors, prepared_data, raw_data, run_cli,  # noqa: F401
                                    tiny_v11)

STEPS = 8


def finish(proc, timeout=300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def final_weights(out: str) -> dict:
    return load_file_tensors(os.path.join(out, "final", f"{os.path.basename(out)}-step{STEPS}.safetensors"))


def test_sigkill_then_resume_latest_matches_an_uninterrupted_run(tmp_path, tiny_v11, prepared_data):
    straight, killed = str(tmp_path / "run"), str(tmp_path / "killed" / "run")
    args = dict(max_train_steps=STEPS, checkpointing_steps=2, checkpoints_total_limit=2, prompt_dropout=0.5,
                hand_dropout=0.5)
    reference = run_cli(config_args(tiny_v11, prepared_data, straight, **args))
    victim = run_cli(config_args(tiny_v11, prepared_data, killed, **args))
    while not os.path.isdir(os.path.join(killed, "checkpoint-4")):
        assert victim.poll() is None, victim.stdout.read()[-3000:]
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL and not os.path.exists(os.path.join(killed, "final"))
    out = finish(run_cli(config_args(tiny_v11, prepared_data, killed, resume="latest", **args)))
    assert "resumed from" in out
    finish(reference)
    a, b = final_weights(straight), final_weights(killed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    kept = sorted(n for n in os.listdir(killed) if n.startswith("checkpoint-"))
    assert kept == [f"checkpoint-{STEPS - 2}", f"checkpoint-{STEPS}"]  # the last K=2


def test_two_cpu_processes_train_in_sync(tmp_path, tiny_v11, prepared_data):
    out = str(tmp_path / "ddp")
    # accelerate 1.x starts several CPU processes through its torchrun path (--multi_gpu) when
    # ACCELERATE_USE_CPU is set; `--cpu --num_processes 2` alone starts one process. Backend: gloo.
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
                "29517"]
    log = finish(run_cli(config_args(tiny_v11, prepared_data, out, max_train_steps=3, checkpointing_steps=2,
                                     gradient_checkpointing="true"), launcher=launcher, ACCELERATE_USE_CPU="1"))
    assert "trained weights identical on 2 rank(s)" in log, log[-3000:]
    state = open(os.path.join(out, "checkpoint-2", "train_state.json")).read()
    assert '"num_processes": 2' in state
    assert sorted(n for n in os.listdir(os.path.join(out, "checkpoint-2")) if n.startswith("generator-rank")) == \
        ["generator-rank0.pt", "generator-rank1.pt"]
    assert os.path.isfile(os.path.join(out, "final", "ddp-step3.safetensors"))
    shutil.rmtree(out)
