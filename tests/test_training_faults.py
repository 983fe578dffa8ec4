"""The trainer's failure paths: damaged checkpoints, pickles in checkpoint folders, a full disk, a
signal, bad samples (also inside data-loader workers) and bad inputs. Each ends in one line naming the
file and the fix, before the model loads where it can, and loses nothing already saved."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import time

import pytest
import torch

from comfyui_dwm import safety
from comfyui_dwm.errors import DWMError
from comfyui_dwm.training import checkpointing
from comfyui_dwm.training.train import main, run

from test_training_fixtures import (config, config_args, load_file_tensors, prepared_data, raw_data,  # noqa: F401
                                    run_cli, tiny_v11)

RUN = dict(max_train_steps=3, checkpointing_steps=1, checkpoints_total_limit=0)


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr("comfyui_dwm.training.families.cogvideox.load_base", refuse)


@pytest.fixture(scope="module")
def three_checkpoints(tmp_path_factory, tiny_v11, prepared_data) -> str:
    out = str(tmp_path_factory.mktemp("ckpts") / "run")
    run(config(tiny_v11, prepared_data, out, **RUN))
    return out


def copy_tree(src: str, dst) -> str:
    shutil.copytree(src, str(dst))
    return str(dst)


def truncate(path: str) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) // 2)


def zero_start(path: str) -> None:
    with open(path, "r+b") as fh:
        fh.write(b"\0" * 16)


def error_line(err: str) -> str:
    lines = [line for line in re.split(r"[\r\n]", err) if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


# -- damaged checkpoints -------------------------------------------------------------------------

@pytest.mark.parametrize("name, damage", [("model.safetensors", truncate), ("optimizer.bin", truncate),
                                          ("train_state.json", truncate), ("model.safetensors", zero_start)])
def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one(three_checkpoints, tmp_path, name, damage):
    out = copy_tree(three_checkpoints, tmp_path / "run")
    damage(os.path.join(out, "checkpoint-3", name))
    said = []
    assert checkpointing.resolve_resume("latest", out, said.append) == os.path.join(out, "checkpoint-2")
    assert len(said) == 1 and re.search(rf"skipping checkpoint-3 \({re.escape(name)} is (truncated|damaged)"
                                        rf".*; resuming from .*checkpoint-2 instead$", said[0]), said
    with pytest.raises(DWMError, match=rf"^resume: .*checkpoint-3 cannot be resumed from: {re.escape(name)} is"):
        checkpointing.resolve_resume(os.path.join(out, "checkpoint-3"), out)


def test_resume_latest_continues_exactly_from_the_intact_checkpoint(three_checkpoints, tmp_path, tiny_v11,
                                                                    prepared_data, capsys):
    out = copy_tree(three_checkpoints, tmp_path / "run")
    truncate(os.path.join(out, "checkpoint-3", "optimizer.bin"))
    os.makedirs(os.path.join(out, ".tmp-checkpoint-9"))  # left by a killed save
    result = run(config(tiny_v11, prepared_data, out, resume="latest", **RUN))
    printed = capsys.readouterr().out
    assert "skipping checkpoint-3 (optimizer.bin is truncated" in printed
    assert f"resumed from {os.path.join(out, 'checkpoint-2')} at step 2" in printed
    assert result.step == 3 and checkpointing.problem(os.path.join(out, "checkpoint-3")) is None
    assert not os.path.exists(os.path.join(out, ".tmp-checkpoint-9"))
    again, before = (load_file_tensors(os.path.join(root, "checkpoint-3", "run-step3.safetensors"))
                     for root in (out, three_checkpoints))
    assert again.keys() == before.keys() and all(torch.equal(again[k], before[k]) for k in again)


def test_no_intact_checkpoint_is_one_line_before_the_model_loads(three_checkpoints, tmp_path, tiny_v11,
                                                                  prepared_data, no_model_load, capsys):
    out = copy_tree(three_checkpoints, tmp_path / "run")
    for step in (1, 2, 3):
        truncate(os.path.join(out, f"checkpoint-{step}", "model.safetensors"))
    assert main(config_args(tiny_v11, prepared_data, out, resume="latest")) == 1
    line = error_line(capsys.readouterr().err)
    assert re.fullmatch(r"error: resume: no intact checkpoint in .*: checkpoint-3 \(model\.safetensors is truncated.*"
                        r"checkpoint-2 .*checkpoint-1 .*Fix: move these checkpoint-\* folders away.*", line)


class Payload:
    """A pickle that creates a folder when unpickled without restrictions."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def test_a_crafted_pickle_in_a_checkpoint_folder_is_never_run(three_checkpoints, tmp_path, tiny_v11, prepared_data,
                                                              no_model_load, monkeypatch):
    marker, payload = str(tmp_path / "pwned"), str(tmp_path / "payload.pkl")
    torch.save(Payload(marker), payload)
    torch.load(payload, weights_only=False)  # the payload works when unpickled freely
    assert os.path.isdir(marker)
    os.rmdir(marker)
    out = copy_tree(three_checkpoints, tmp_path / "run")
    newest, middle = os.path.join(out, "checkpoint-3"), os.path.join(out, "checkpoint-2")
    # where accelerate would load a registered object's state with weights_only=False
    shutil.copy(payload, os.path.join(newest, "custom_checkpoint_0.pkl"))
    # in place of a file the trainer wrote, with the file list forged to match
    shutil.copy(payload, os.path.join(middle, "random_states_0.pkl"))
    state = checkpointing.read_state(middle)
    state["files"]["random_states_0.pkl"] = os.path.getsize(payload)
    with open(os.path.join(middle, checkpointing.MARKER), "w") as fh:
        json.dump(state, fh)
    assert re.search(r"random_states_0\.pkl is damaged \(UnpicklingError", checkpointing.problem(middle))
    with pytest.raises(DWMError, match=r"checkpoint-3 cannot be resumed from: holds custom_checkpoint_0\.pkl, "
                                       r"which the trainer did not write; refusing to load it"):
        run(config(tiny_v11, prepared_data, out, resume=newest, **RUN))
    monkeypatch.undo()
    result = run(config(tiny_v11, prepared_data, out, resume="latest", **RUN))  # from checkpoint-1
    assert result.step == 3 and not os.path.exists(marker)


# -- a full disk, a signal -------------------------------------------------------------------------

def test_a_full_disk_while_saving_is_one_line_and_leaves_no_partial_folder(tmp_path, tiny_v11, prepared_data,
                                                                           monkeypatch):
    out = str(tmp_path / "run")
    run(config(tiny_v11, prepared_data, out, max_train_steps=1, checkpointing_steps=1))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("comfyui_dwm.training.families.cogvideox.save_reference_folder", full)
    with pytest.raises(DWMError) as info:
        run(config(tiny_v11, prepared_data, out, max_train_steps=2, checkpointing_steps=1, resume="latest"))
    assert str(info.value) == (f"output_dir: no space left on the disk of {out} (writing {out}). Fix: free disk "
                               "space there or choose another folder, then continue with --resume latest")
    assert not [n for n in os.listdir(out) if n.startswith(".tmp")]
    assert checkpointing.resolve_resume("latest", out) == os.path.join(out, "checkpoint-1")
    monkeypatch.undo()
    assert run(config(tiny_v11, prepared_data, out, max_train_steps=2, checkpointing_steps=1,
                      resume="latest")).step == 2


def test_write_errors_are_told_apart(tmp_path, monkeypatch):
    folder = str(tmp_path)
    inside = os.path.join(folder, "x.safetensors")
    denied = safety.write_error(OSError(errno.EACCES, "no", inside), "out", folder)
    assert f"out: {folder} is not writable (Permission denied: {inside})" in str(denied)
    assert safety.write_error(OSError(errno.EACCES, "no", "/elsewhere/in.mp4"), "out", folder) is None  # an input
    torch_full = RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    assert safety.write_error(torch_full, "out", folder) is None
    monkeypatch.setattr(safety, "disk_full", lambda path: True)
    assert str(safety.write_error(torch_full, "out", folder)).startswith(f"out: no space left on the disk of {folder}")


def test_a_signal_is_deferred_inside_the_loop_and_raises_outside_it():
    stop = safety.SignalStop()
    with pytest.raises(safety.Interrupted, match="^SIGTERM received$") as info:
        stop.handle(signal.SIGTERM, None)  # e.g. while the model loads
    assert info.value.exit_code == 143
    stop = safety.SignalStop()
    with stop.deferred("saving"):
        stop.handle(signal.SIGINT, None)  # recorded: the loop saves at the step's end
        assert stop.requested and stop.name == "SIGINT"
        with pytest.raises(safety.Interrupted) as info:
            stop.handle(signal.SIGINT, None)  # the second one stops at once
    assert info.value.exit_code == 130


def test_handlers_are_installed_whatever_was_inherited_and_restored():
    inherited = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under `cmd &` in a script
    try:
        with safety.stop_on_signals() as stop:
            assert signal.getsignal(signal.SIGINT) == signal.getsignal(signal.SIGTERM) == stop.handle
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, inherited)


def test_sigterm_saves_and_stops_with_sigint_ignored_and_workers_in_the_group(tmp_path, tiny_v11, prepared_data):
    out = str(tmp_path / "run")
    proc = run_cli(config_args(tiny_v11, prepared_data, out, max_train_steps=500, checkpointing_steps=2,
                               dataloader_num_workers=2),
                   dispositions={signal.SIGINT: signal.SIG_IGN}, new_session=True)
    while not os.path.isdir(os.path.join(out, "checkpoint-2")):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGTERM)  # as a scheduler stops a job: every process of the group
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, log[-3000:]
    found = re.search(r"stopped: SIGTERM at step (\d+): saved (.+); continue with --resume latest", log)
    assert found and "Traceback" not in log, log[-3000:]
    assert found.group(2) == os.path.join(out, f"checkpoint-{found.group(1)}")
    assert checkpointing.problem(found.group(2)) is None


# -- bad samples and inputs ------------------------------------------------------------------------

def test_an_error_in_a_data_loader_worker_is_the_same_one_line_error(tmp_path, tiny_v11, raw_data, monkeypatch,
                                                                    capfd):
    import comfyui_dwm.training.data

    real = comfyui_dwm.training.data.read_video

    def broken(path, name="video"):  # damage deep in the stream, past the header the probe reads
        if "videos_static" in path and "00013" in path:
            raise DWMError(name, f"cannot decode {path} (Invalid data found when processing input)",
                           "re-export it as H.264 mp4")
        return real(path, name)

    monkeypatch.setattr(comfyui_dwm.training.data, "read_video", broken)  # data-loader workers are forked: they see it
    assert main(config_args(tiny_v11, raw_data, str(tmp_path / "run"), max_train_steps=2,
                            dataloader_num_workers=2)) == 1
    err = capfd.readouterr().err
    assert re.fullmatch(r"error: sample 00013: cannot decode .*videos_static/00013\.mp4 \(Invalid data.*\)\. "
                        r"Fix: re-export it as H\.264 mp4", error_line(err))
    assert "Caught" not in err and "worker" not in err


def damage_video(root: str, how: str) -> None:
    path = os.path.join(root, "videos_static", "00013.mp4")
    if how == "missing":
        os.remove(path)
    elif how == "truncated":
        truncate(path)
    else:
        with open(path, "wb") as fh:
            fh.write(b"not a video")


@pytest.mark.parametrize("how, problem", [
    ("garbage", r"cannot decode .*videos_static/00013\.mp4 \(.*\)\. Fix: the file is corrupt or not a video"),
    ("truncated", r"cannot decode .*videos_static/00013\.mp4 \(.*\)\. Fix: the file is corrupt or not a video"),
    ("missing", r".*videos_static/00013\.mp4 does not exist.*Fix: check the list file"),
])
def test_a_bad_video_stops_the_run_before_the_model_loads(tmp_path, tiny_v11, raw_data, no_model_load, how, problem):
    root = copy_tree(raw_data, tmp_path / "data")
    damage_video(root, how)
    with pytest.raises(DWMError, match=rf"^sample 00013: {problem}"):
        run(config(tiny_v11, root, str(tmp_path / "run"), dataloader_num_workers=2))


def test_damaged_precomputed_files_stop_the_run_before_the_model_loads(tmp_path, tiny_v11, prepared_data,
                                                                       no_model_load):
    root = copy_tree(prepared_data, tmp_path / "data")
    truncate(os.path.join(root, "hand_video_latents", "00013.pt"))
    with pytest.raises(DWMError, match=r"^sample 00013: cannot read .*hand_video_latents/00013\.pt"):
        run(config(tiny_v11, root, str(tmp_path / "run")))
    shutil.copy(os.path.join(prepared_data, "hand_video_latents", "00013.pt"), os.path.join(root, "hand_video_latents"))
    torch.save(torch.zeros(226, 16), os.path.join(root, "prompt_embeds_rewrite", "00055.pt"))
    with pytest.raises(DWMError, match=r"^sample videos/00055\.mp4: .*prompt_embeds_rewrite/00055\.pt has shape "
                                       r"\[226, 16\], expected \[226, 32\]"):
        run(config(tiny_v11, root, str(tmp_path / "run")))


BAD_INPUTS = [
    (dict(data_root="{tmp}/nope"), r"data_root: .*nope is not a folder"),
    (dict(train_list="nope.txt"), r"list file: nope\.txt does not exist"),
    (dict(validation_list="nope.txt"), r"list file: nope\.txt does not exist"),
    (dict(model="{tmp}"), r"model: .* lacks the sub-folders transformer, vae"),
    (dict(output_dir="{tmp}/file.txt/run"), r"output_dir: .*file\.txt/run is not a folder path"),
    (dict(resume="{tmp}/checkpoint-9"), r"resume: .*checkpoint-9 cannot be resumed from: the folder does not exist"),
    (dict(lr_scheduler="cosine_restarts"), r"lr_scheduler: 'cosine_restarts'\. Fix: use one of cosine_with_restarts"),
    (dict(learning_rate="0"), r"learning_rate: 0\.0 is not above 0"),
    (dict(report_to="tensorbaord"), r"report_to: 'tensorbaord'"),
    (dict(dataloader_num_workers="-1"), r"dataloader_num_workers: -1 is negative"),
]


@pytest.mark.parametrize("override, pattern", BAD_INPUTS)
def test_bad_inputs_fail_in_one_line_before_the_model_loads(tmp_path, tiny_v11, prepared_data, no_model_load,
                                                            capsys, override, pattern):
    (tmp_path / "file.txt").write_text("")
    values = {k: v.format(tmp=tmp_path) for k, v in override.items()}
    args = config_args(values.pop("model", tiny_v11), values.pop("data_root", prepared_data),
                       values.pop("output_dir", str(tmp_path / "out")), **values)
    assert main(args) == 1
    assert re.fullmatch(rf"error: {pattern}.*", error_line(capsys.readouterr().err))


def test_ctrl_c_in_prepare_is_one_line_and_a_rerun_goes_on(monkeypatch, capsys):
    import signal
    import time

    import comfyui_dwm.training.prepare as prep

    def interrupted(*_args):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError("SIGINT did not stop prepare")

    monkeypatch.setattr(prep, "prepare", interrupted)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under nohup: prepare installs its own
    try:
        code = prep.main(["--data-root", "d", "--list", "l", "--model", "m"])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 130
    assert "stopped: SIGINT received; finished files are kept" in capsys.readouterr().err
