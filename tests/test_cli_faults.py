"""Failure paths of ``python -m comfyui_dwm``: every bad input is refused in one line BEFORE a model loads, writes
fail in one line and leave nothing half-written, a dataset run loses no comparison to a kill, and Ctrl-C
or SIGTERM ends in one line whatever signal disposition the process inherited."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO
from comfyui_dwm.cli import main
from comfyui_dwm.cogvideox import checkpoint as cog_checkpoint
from comfyui_dwm.cogvideox import model as cog_model
from comfyui_dwm.cogvideox import pipeline as cog_pipeline
from comfyui_dwm.video_io import read_video, write_video
from comfyui_dwm.wan import checkpoint as wan_checkpoint
from comfyui_dwm.wan import model as wan_model
from comfyui_dwm.wan import pipeline as wan_pipeline

LOADERS = [(cog_model, "load_base"), (wan_model, "load_wan_base"), (cog_checkpoint, "load_checkpoint"),
           (wan_checkpoint, "load_wan_release")]
SIZE = ["--width", "64", "--height", "48", "--num-frames", "9", "--steps", "3"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, wan_base_dir):
    """Clips, a corrupt file, a CogVideoX folder whose config names the family (nothing to load in it) and
    the tiny Wan base (its files are checked from their headers before any load)."""
    root = tmp_path_factory.mktemp("faults")
    g = torch.Generator().manual_seed(0)
    paths = {name: write_video(str(root / f"{name}.mp4"), torch.rand(9, 48, 64, 3, generator=g))
             for name in ("static", "hands")}
    (root / "corrupt.mp4").write_bytes(b"\x00garbage" * 64)
    (root / "junk.safetensors").write_bytes(b"\x00garbage" * 64)
    os.makedirs(root / "cog" / "transformer")
    (root / "cog" / "transformer" / "config.json").write_text(json.dumps({"_class_name": "CogVideoXTransformer3DModel"}))
    return {**paths, "corrupt": str(root / "corrupt.mp4"), "junk": str(root / "junk.safetensors"),
            "cogvideox": str(root / "cog"), "wan": wan_base_dir, "root": root}


@pytest.fixture
def no_load(monkeypatch):
    """Every model and LoRA loader fails loudly: a test using this proves nothing was loaded."""
    for module, name in LOADERS:
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail("a model or LoRA was loaded"))


@pytest.fixture
def fake_models(monkeypatch):
    """Loaders that load nothing and pipelines that call the sampler hooks and return random frames."""
    calls = []

    def generate(base, static, hands, prompt, negative, loras, settings, width, height, num_frames, **hooks):
        calls.append(prompt)
        for i in range(settings.steps):
            hooks["cancel"]()
            hooks["on_step"](i, settings.steps, None)
        return torch.rand(settings.batch, num_frames or 9, height, width, 3)

    for module, name in LOADERS:
        monkeypatch.setattr(module, name, lambda *a, **k: object())
    monkeypatch.setattr(cog_pipeline, "generate", generate)
    monkeypatch.setattr(cog_pipeline, "prepare_base", lambda *a, **k: None)  # nothing loaded to prepare
    monkeypatch.setattr(wan_pipeline, "generate_wan", generate)
    return calls


def one_line_error(capsys, code: int, match: str, returned: int, alone: bool = True) -> None:
    """Exit ``code`` and one message line, the last; ``alone``: the only output (nothing ran before it)."""
    err = capsys.readouterr().err.strip()
    assert returned == code, err
    assert "Traceback" not in err and match in err.splitlines()[-1], err
    messages = [line for line in err.splitlines() if line.startswith(("error:", "cancelled:"))]
    assert len(messages) == 1 and (len(err.splitlines()) == 1 or not alone), err


def one_input(files, tmp_path, family="cogvideox", **over) -> list[str]:
    args = {"--model": files[family], "--static": files["static"], "--hands": files["hands"],
            "--out": str(tmp_path / "out.mp4"), **over}
    return ["generate", *SIZE] + [x for k, v in args.items() for x in (k, v)]


CASES = {  # one input's flag -> value (None drops the flag), and the message
    "steps 0": ({"--steps": "0"}, "--steps: 0 is below 1"),
    "steps 1001": ({"--steps": "1001"}, "--steps: 1001 is more than the 1000"),
    "fps": ({"--fps": "-1"}, "--fps: -1.0 is not a frame rate"),
    "width": ({"--width": "100"}, "--width: 100 is not a positive multiple of 16"),
    "frames": ({"--num-frames": "10"}, "--num-frames: 10 is not of the form 4k+1"),
    "missing static": ({"--static": "nope.mp4"}, "--static: nope.mp4 does not exist"),
    "corrupt hands": ({"--hands": "corrupt"}, "--hands: cannot decode"),
    "missing gt": ({"--gt": "gt.mp4", "--compare": "c.mp4"}, "--gt: gt.mp4 does not exist"),
    "gt without compare": ({"--gt": "static"}, "--gt: is shown only in the comparison video"),
    "missing lora": ({"--lora": "none.safetensors:0.5"}, "--lora: none.safetensors does not exist"),
    "junk lora": ({"--lora": "junk"}, "holds no DWM LoRA tensors"),
    "missing folder": ({"--out": "no/such/dir/out.mp4"}, "does not exist. Fix: create the folder first"),
    "out is a folder": ({"--out": "."}, "is a folder"),
    "out not mp4": ({"--out": "out.avi"}, "does not end in .mp4"),
    "out overwrites input": ({"--out": "static"}, "is the --static input"),
    "same compare": ({"--compare": "out"}, "--compare: "),
    "stray dataset flag": ({"--list": "l.txt"}, "--list: needs --data-root"),
}


@pytest.mark.parametrize("family", ["cogvideox", "wan"])
@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_refused_before_any_model_loads(case, family, files, tmp_path, no_load, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    over, match = CASES[case]
    over = {k: str(tmp_path / "out.mp4") if v == "out" else files.get(v, v) for k, v in over.items()}
    one_line_error(capsys, 2, match, main(one_input(files, tmp_path, family, **over)))


@pytest.mark.parametrize("remove,match", [("Wan2.1_VAE.pth", "--model: no Wan VAE weights"),
                                          ("models_t5_umt5-xxl-enc-bf16.pth", "--model: no umT5 weights"),
                                          ("google", "--model: no umT5 tokenizer"),
                                          ("diffusion_pytorch_model.safetensors", "--model: ")])
def test_an_incomplete_wan_folder_is_refused_before_load(remove, match, files, tmp_path, no_load, capsys):
    folder = tmp_path / "wan"
    shutil.copytree(files["wan"], folder)
    target = folder / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    one_line_error(capsys, 2, match, main(one_input(files, tmp_path, "wan", **{"--model": str(folder)})))


@pytest.mark.parametrize("family,flag,match", [("cogvideox", ["--shift", "3"], "--shift: applies to Wan"),
                                               ("wan", ["--dynamic-cfg"], "--dynamic-cfg: applies to CogVideoX")])
def test_other_familys_options_refused_before_load(family, flag, match, files, tmp_path, no_load, capsys):
    one_line_error(capsys, 2, match, main(one_input(files, tmp_path, family) + flag))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_missing_gpu_refused_before_load(files, tmp_path, no_load, capsys):
    one_line_error(capsys, 2, "--device: cuda is not available", main(one_input(files, tmp_path) + ["--device", "cuda"]))


def dataset(root, ids=("a", "b")) -> str:
    for folder in ("videos_static", "videos_hands", "prompts", "videos"):
        os.makedirs(root / folder, exist_ok=True)
    g = torch.Generator().manual_seed(1)
    for sample in ids:
        for folder in ("videos_static", "videos_hands", "videos"):
            write_video(str(root / folder / f"{sample}.mp4"), torch.rand(9, 48, 64, 3, generator=g))
        (root / "prompts" / f"{sample}.txt").write_text(f"prompt {sample}")
    (root / "list.txt").write_text("\n".join(ids) + "\n")
    return str(root)


def dataset_args(files, root, out, *extra, listing: str | None = None) -> list[str]:
    return ["generate", "--model", files["cogvideox"], "--data-root", root, "--list",
            listing or os.path.join(root, "list.txt"), "--out-dir", str(out), *SIZE, *extra]


def test_dataset_inputs_are_checked_before_load(files, tmp_path, no_load, capsys):
    root = dataset(tmp_path / "data")
    os.remove(os.path.join(root, "videos_hands", "b.mp4"))
    one_line_error(capsys, 2, "sample b: hand video: ", main(dataset_args(files, root, tmp_path / "o")))
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\xfa")
    for listing, match in ((root, "is a folder"), (str(tmp_path / "bad.txt"), "--list: cannot read"),
                           ("none.txt", "--list: none.txt does not exist")):
        one_line_error(capsys, 2, match, main(dataset_args(files, root, tmp_path / "o", listing=listing)))
    one_line_error(capsys, 2, "--out: is for one input", main(dataset_args(files, root, tmp_path / "o", "--out", "x.mp4")))


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder no one may write into (chmod; as root, the immutable attribute); skipped where neither holds."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    immutable = False
    try:
        (folder / "probe").touch()
    except OSError:
        pass
    else:
        os.remove(folder / "probe")
        immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False).returncode == 0
        if not immutable:
            pytest.skip("cannot make a read-only folder here (root without chattr)")
    yield folder
    if immutable:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    folder.chmod(0o755)


def test_read_only_output_is_refused_before_load(files, tmp_path, read_only_dir, no_load, capsys):
    one_line_error(capsys, 2, "--out: ", main(one_input(files, tmp_path, **{"--out": str(read_only_dir / "o.mp4")})))
    root = dataset(tmp_path / "data")
    one_line_error(capsys, 2, "--out-dir: ", main(dataset_args(files, root, read_only_dir)))


def test_full_disk_is_refused_before_load(files, tmp_path, no_load, capsys, monkeypatch):
    from comfyui_dwm import cli_checks

    monkeypatch.setattr(cli_checks, "disk_full", lambda folder: True)
    one_line_error(capsys, 2, "--out: no space left on the disk", main(one_input(files, tmp_path)))


def test_disk_full_while_writing_is_one_line_and_leaves_nothing(files, tmp_path, fake_models, capsys, monkeypatch):
    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)
    one_line_error(capsys, 2, "output: no space left", main(one_input(files, tmp_path)), alone=False)
    assert os.listdir(tmp_path) == []


def test_stages_and_the_step_bar(files, tmp_path, fake_models, capsys):
    assert main(one_input(files, tmp_path, "wan", **{"--compare": str(tmp_path / "c.mp4")})) == 0
    out, err = capsys.readouterr()
    where = [err.index(s) for s in ("[load]", "[encode]", "[sample]", "[decode]", "[write]", "[done]")]
    assert where == sorted(where) and "sample:" not in err[:where[2]] and "3/3" in err[where[2]:where[3]]
    assert out.strip() == f"wrote {tmp_path / 'out.mp4'}, {tmp_path / 'c.mp4'}"
    assert read_video(str(tmp_path / "c.mp4"))[0].shape == (9, 48, 3 * 64, 3)


def test_stale_temporaries_of_a_killed_run_are_removed(files, tmp_path, fake_models, capsys):
    old, now = time.time() - 3600, time.time()
    names = {".tmp-dwm-k1ll3d_x.mp4": old, ".tmp-abcd1234.mp4": old,  # ours (and an earlier version's): removed
             ".tmp-dwm-inflight.mp4": now + 60, ".tmp-notes.mp4": old, "clip.mp4": old}  # kept
    for name, mtime in names.items():
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (mtime, mtime))
    assert main(one_input(files, tmp_path)) == 0
    assert "[clean] removed 2 temporary file(s)" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == [".tmp-dwm-inflight.mp4", ".tmp-notes.mp4", "clip.mp4", "out.mp4"]


def test_a_kill_between_video_and_comparison_loses_nothing(files, tmp_path, no_load, capsys):
    """Video written, comparison not (the kill): the rerun rebuilds the comparison from the video and loads
    no model; a sample with its comparison but no video is not done (the no-load guard would fail it)."""
    root, out = dataset(tmp_path / "data"), tmp_path / "out"
    out.mkdir()
    for sample in ("a", "b"):
        write_video(str(out / f"{sample}.mp4"), torch.rand(9, 48, 64, 3))
    write_video(str(out / "a_compare.mp4"), torch.rand(9, 48, 4 * 64, 3))
    assert main(dataset_args(files, root, out)) == 0
    said = capsys.readouterr().out
    assert "1 comparisons rebuilt, 1 already done" in said
    assert read_video(str(out / "b_compare.mp4"))[0].shape == (9, 48, 4 * 64, 3)  # static|hands|output|gt
    os.remove(out / "a.mp4")
    with pytest.raises(pytest.fail.Exception, match="was loaded"):
        main(dataset_args(files, root, out))


def test_dataset_generates_only_what_is_missing(files, tmp_path, fake_models, capsys):
    root, out = dataset(tmp_path / "data", ids=("a", "b", "c")), tmp_path / "out"
    out.mkdir()
    write_video(str(out / "a.mp4"), torch.rand(9, 48, 64, 3))
    write_video(str(out / "a_compare.mp4"), torch.rand(9, 48, 4 * 64, 3))
    write_video(str(out / "c_compare.mp4"), torch.rand(9, 48, 4 * 64, 3))  # its video was never written
    assert main(dataset_args(files, root, out)) == 0
    assert fake_models == ["prompt b", "prompt c"]
    assert all((out / f"{s}{x}.mp4").is_file() for s in "abc" for x in ("", "_compare"))


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_while_sampling_is_one_line(signum, code, files, tmp_path, fake_models, capsys, monkeypatch):
    def generate(*args, **hooks):
        hooks["cancel"]()
        os.kill(os.getpid(), signum)
        time.sleep(30)

    monkeypatch.setattr(cog_pipeline, "generate", generate)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under nohup or `&`: must not matter
    try:
        one_line_error(capsys, code, f"cancelled: {signal.Signals(signum).name}",
                       main(one_input(files, tmp_path)), alone=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert os.listdir(tmp_path) == []


def test_ctrl_c_in_a_real_run_started_with_sigint_ignored(tiny_dir, files, tmp_path):
    """A real process, SIGINT ignored by inheritance (as a backgrounded test run starts it): exit 130, one line."""
    argv = [sys.executable, "-m", "comfyui_dwm"] + one_input(files, tmp_path, **{"--model": tiny_dir["1.1"], "--steps": "1000"})
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the child inherits it
    try:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        seen = ""
        while "[sample]" not in seen:
            line = proc.stderr.readline()
            assert line, f"exited before sampling: {seen}"
            seen += line
        time.sleep(0.5)  # into the steps (a signal inside any tqdm constructor leaves tqdm's own __del__ noise)
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=60)
    finally:
        proc.kill()
    lines = [line for line in rest.replace("\r", "\n").splitlines() if line.strip() and "sample:" not in line]
    assert proc.returncode == 130 and lines == [lines[0]] and lines[0].startswith("cancelled: SIGINT")
    assert os.listdir(tmp_path) == []
