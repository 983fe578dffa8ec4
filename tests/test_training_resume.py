"""Whole-process behaviour: SIGKILL or SIGINT + ``--resume latest`` is exact, and a 2-process CPU run stays in sync."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import time

import pytest
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


ARGS = dict(max_train_steps=STEPS, checkpointing_steps=2, checkpoints_total_limit=2, prompt_dropout=0.5,
            hand_dropout=0.5)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_v11, prepared_data) -> dict:
    straight = str(tmp_path_factory.mktemp("straight") / "run")
    finish(run_cli(config_args(tiny_v11, prepared_data, straight, **ARGS)))
    return final_weights(straight)


def start_and_wait(tiny_v11, prepared_data, out: str):
    """Start a run and return once checkpoint-2 exists (it stays until step 6: a wide window on a busy machine)."""
    victim = run_cli(config_args(tiny_v11, prepared_data, out, **ARGS))
    while not os.path.isdir(os.path.join(out, "checkpoint-2")):
        assert victim.poll() is None, victim.stdout.read()[-3000:]
        time.sleep(0.02)
    return victim


def resume_matches(uninterrupted: dict, tiny_v11, prepared_data, out: str) -> str:
    log = finish(run_cli(config_args(tiny_v11, prepared_data, out, resume="latest", **ARGS)))
    assert "resumed from" in log
    resumed = final_weights(out)
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        assert torch.equal(resumed[key], uninterrupted[key]), key
    return log


def test_sigkill_then_resume_latest_matches_an_uninterrupted_run(tmp_path, tiny_v11, prepared_data, uninterrupted):
    killed = str(tmp_path / "killed" / "run")
    victim = start_and_wait(tiny_v11, prepared_data, killed)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL and not os.path.exists(os.path.join(killed, "final"))
    resume_matches(uninterrupted, tiny_v11, prepared_data, killed)
    kept = sorted(n for n in os.listdir(killed) if n.startswith("checkpoint-"))
    assert kept == [f"checkpoint-{STEPS - 2}", f"checkpoint-{STEPS}"]  # the last K=2


def test_sigint_saves_the_current_step_and_resume_latest_matches(tmp_path, tiny_v11, prepared_data, uninterrupted):
    stopped = str(tmp_path / "stopped" / "run")
    victim = start_and_wait(tiny_v11, prepared_data, stopped)  # SIGINT: SIG_DFL at start
    victim.send_signal(signal.SIGINT)
    log, _ = victim.communicate(timeout=120)
    assert victim.returncode == 130, log[-3000:]
    found = re.search(r"stopped: SIGINT at step (\d+): saved (.+); continue with --resume latest", log)
    assert found and "Traceback" not in log and "KeyboardInterrupt" not in log, log[-3000:]
    step = int(found.group(1))
    assert 2 <= step < STEPS and found.group(2) == os.path.join(stopped, f"checkpoint-{step}")
    log = resume_matches(uninterrupted, tiny_v11, prepared_data, stopped)
    assert f"resumed from {found.group(2)} at step {step}" in log


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
