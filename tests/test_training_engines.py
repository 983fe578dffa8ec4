"""DeepSpeed ZeRO-2/3 run the real trainer in 2 CPU processes for both families: a checkpoint resumes
bit-identically under its engine, and the exported LoRA equals the DDP run's on the same data and seeds.

FSDP cannot run here: accelerate (1.15) enables it only on GPU-like devices, and the trainer refuses an
FSDP config on a machine without GPUs rather than silently training as DDP (tested below).
Tolerance against DDP: ``rtol 1e-4`` plus ``atol`` = the learning rate's 1/10 (CogVideoX) or the
learning rate (Wan): ZeRO reduces gradients in another order than DDP, and AdamW turns gradients that
are pure rounding noise (Wan's ``k_img``/``v_img`` see zero CLIP features) into steps of ~lr either way.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file

from comfyui_dwm.errors import DWMError

from test_training_fixtures import REPO, config_args, prepared_data, raw_data, run_cli, tiny_v11  # noqa: F401
from test_training_wan_fixtures import tiny_wan, wan_args, wan_data  # noqa: F401

STEPS = 4
LR = 1e-4
ARGS = dict(max_train_steps=STEPS, checkpointing_steps=2, checkpoints_total_limit=3, prompt_dropout=0.5,
            hand_dropout=0.5, learning_rate=LR, gradient_checkpointing="true")
ENGINE_YAML = {
    "ddp": "distributed_type: MULTI_GPU\n",
    "zero2": "distributed_type: DEEPSPEED\ndeepspeed_config:\n  zero_stage: 2\n  zero3_init_flag: false\n",
    "zero3": "distributed_type: DEEPSPEED\ndeepspeed_config:\n  zero_stage: 3\n  zero3_init_flag: false\n",
    "fsdp": "distributed_type: FSDP\nfsdp_config:\n  fsdp_version: 2\n  fsdp_reshard_after_forward: true\n",
}
FAMILIES = {"cogvideox": (config_args, "tiny_v11", "prepared_data", 29541),
            "wan": (wan_args, "tiny_wan", "wan_data", 29551)}


def launcher(tmp_path, engine: str, port: int) -> tuple[list[str], dict]:
    """``accelerate launch`` with an accelerate config for ``engine``, 2 processes on this CPU."""
    path = tmp_path / f"{engine}.yaml"
    path.write_text(ENGINE_YAML[engine] + f"compute_environment: LOCAL_MACHINE\nnum_machines: 1\nnum_processes: 2\n"
                    f"machine_rank: 0\nmixed_precision: 'no'\nmain_process_port: {port}\nrdzv_backend: static\n"
                    "same_network: true\nuse_cpu: false\ndynamo_config: {}\n")
    env = {"ACCELERATE_USE_CPU": "1"} if engine == "ddp" else {}  # DDP over gloo (see test_training_resume)
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(path)], env


def finish(proc, timeout=600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def exported(out: str) -> dict:
    """Every tensor of ``final/`` (both families' release files), by file (the run's name left out) and key."""
    final, run = os.path.join(out, "final"), os.path.basename(out)
    return {f"{name.replace(run, 'RUN')}:{k}": v for name in sorted(os.listdir(final)) if name.endswith(".safetensors")
            for k, v in load_file(os.path.join(final, name)).items()}


def train(request, tmp_path, family: str, engine: str, out: str, **extra) -> str:
    args_of, model, data, port = FAMILIES[family]
    cmd, env = launcher(tmp_path, engine, port + len(engine) + (1 if extra else 0))
    args = args_of(request.getfixturevalue(model), request.getfixturevalue(data), out, **ARGS, **extra)
    return finish(run_cli(args, launcher=cmd, **env))


@pytest.mark.slow
@pytest.mark.parametrize("family,engines", [("cogvideox", ("zero2", "zero3")), ("wan", ("zero3",))])  # first resumes
def test_deepspeed_resumes_exactly_and_matches_ddp(request, tmp_path, family, engines):
    pytest.importorskip("deepspeed")
    reference = str(tmp_path / "ddp")
    train(request, tmp_path, family, "ddp", reference)
    expected = exported(reference)
    atol = LR / 10 if family == "cogvideox" else LR
    for engine in engines:
        out = str(tmp_path / engine)
        log = train(request, tmp_path, family, engine, out)
        assert "trained weights identical on 2 rank(s)" in log, log[-3000:]
        straight = exported(out)
        assert straight.keys() == expected.keys() and len(straight) > 2
        for key, value in straight.items():
            torch.testing.assert_close(value, expected[key], rtol=1e-4, atol=atol, msg=f"{engine} {key}")
        with open(os.path.join(out, "checkpoint-2", "train_state.json"), encoding="utf-8") as fh:
            marker = json.load(fh)
        assert marker["engine"] == "deepspeed" and marker["num_processes"] == 2
        model_files = [n for n in marker["files"] if n.startswith("pytorch_model/") and "model_states" in n]
        assert model_files and all(marker["files"][n] < 400_000 for n in model_files), marker["files"]  # no frozen base
        if engine == engines[0]:  # resume from checkpoint-2: bit-identical to the straight run
            shutil.rmtree(os.path.join(out, "final"))
            shutil.rmtree(os.path.join(out, f"checkpoint-{STEPS}"))
            log = train(request, tmp_path, family, engine, out, resume="latest")
            assert f"resumed from {os.path.join(out, 'checkpoint-2')} at step 2" in log, log[-3000:]
            resumed = exported(out)
            assert resumed.keys() == straight.keys()
            for key in resumed:
                assert torch.equal(resumed[key], straight[key]), key


def test_fsdp_on_cpu_is_refused_not_run_as_ddp(request, tmp_path, tiny_v11, prepared_data):
    cmd, _ = launcher(tmp_path, "fsdp", 29561)
    proc = run_cli(config_args(tiny_v11, prepared_data, str(tmp_path / "fsdp"), **ARGS), launcher=cmd)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert "error: accelerate config: it asks for fsdp, but accelerate runs ddp" in out, out[-3000:]
    assert not os.path.exists(tmp_path / "fsdp" / "checkpoint-2")


def test_accelerate_yaml_values_that_contradict_the_run_are_refused(monkeypatch, tiny_v11, prepared_data, tmp_path):
    pytest.importorskip("deepspeed")
    from comfyui_dwm.training.config import parse_args
    from comfyui_dwm.training.engines import accelerator_kwargs

    cfg = parse_args(config_args(tiny_v11, prepared_data, str(tmp_path / "o"), gradient_accumulation_steps=2))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "2")
    monkeypatch.setenv("ACCELERATE_GRADIENT_CLIPPING", str(cfg.max_grad_norm))
    kwargs = accelerator_kwargs(cfg)
    plugin = kwargs["deepspeed_plugin"]
    assert plugin.gradient_accumulation_steps == 2 and plugin.gradient_clipping == cfg.max_grad_norm
    assert kwargs["kwargs_handlers"][0].backend == "gloo"  # DeepSpeed's backend on a CPU machine
    monkeypatch.setenv("ACCELERATE_GRADIENT_CLIPPING", "0.5")
    with pytest.raises(DWMError, match="max_grad_norm.*gradient_clipping 0.5, this run 1.0"):
        accelerator_kwargs(cfg)


class _Payload:
    """Unpickling it would create the file it names."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_deepspeed_files_load_weights_only_and_code_is_refused(tmp_path):
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.fp16.loss_scaler import LossScaler

    from comfyui_dwm.training.checkpointing import _format_problem
    from comfyui_dwm.training.engines import safe_globals

    good, bad, ran = str(tmp_path / "optim_states.pt"), str(tmp_path / "evil.pt"), str(tmp_path / "ran")
    torch.save({"loss_scaler": LossScaler(1.0), "state": torch.ones(2)}, good)
    torch.save({"loss_scaler": _Payload(ran)}, bad)
    assert _format_problem(good) is not None  # DeepSpeed's classes need the engine's allowlist
    with safe_globals("deepspeed"):
        assert _format_problem(good) is None
        assert _format_problem(bad) is not None
    assert not os.path.exists(ran)


def test_shipped_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    folder = os.path.join(REPO, "training", "accelerate")
    for name in sorted(os.listdir(folder)):
        config = load_config_from_file(os.path.join(folder, name))
        assert config.num_processes % config.num_machines == 0, name  # the same GPU count on every node
        ds = getattr(config, "deepspeed_config", None) or {}
        assert "gradient_accumulation_steps" not in ds and "gradient_clipping" not in ds, name  # the run decides
