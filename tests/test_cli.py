"""Command line: a fast, complete --help, the demo with its stages, the Wan path, and one-line errors."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import INTEROP, REPO
from comfyui_dwm.cli import SCHEDULER_NAMES, HelpFormatter, build_parser, main, parse_lora
from comfyui_dwm.video_io import read_video, write_video

STAGES = ["[load]", "[encode]", "[sample]", "[decode]", "[write]", "[done]"]


def test_parse_lora():
    assert parse_lora("a/b.safetensors:0.5") == ("a/b.safetensors", 0.5)
    assert parse_lora("a/b.safetensors") == ("a/b.safetensors", 1.0)
    assert parse_lora("C:/loras/x") == ("C:/loras/x", 1.0)


def subcommands() -> dict[str, argparse.ArgumentParser]:
    return next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_help_imports_no_heavy_module():
    """--help answers before torch, diffusers or PyAV load (it took seconds when they loaded first)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "comfyui_dwm", "generate", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "usage: python -m comfyui_dwm generate" in done.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "comfyui_dwm.cli" in imported and not imported & {"torch", "diffusers", "transformers", "av", "numpy"}


def test_every_option_has_help_a_shown_default_and_a_dashed_name():
    formatter = HelpFormatter("python -m comfyui_dwm")
    for name, parser in subcommands().items():
        assert parser.prog == f"python -m comfyui_dwm {name}" and not parser.allow_abbrev
        for action in parser._actions:
            if not action.option_strings or action.dest == "help":
                continue
            flag = action.option_strings[0]
            assert re.fullmatch(r"--[a-z0-9]+(-[a-z0-9]+)*", flag), flag
            assert action.help, f"{name} {flag} has no help"
            if action.default not in (None, False, []):
                assert "default" in formatter._get_help_string(action), f"{name} {flag}"


def test_scheduler_names_match_the_sampler():
    from comfyui_dwm.cogvideox.sampler import SCHEDULERS

    assert SCHEDULER_NAMES == tuple(sorted(SCHEDULERS))


@pytest.mark.parametrize("args", [["demo", "--out", "x.mp4"], ["generate", "--stat", "s.mp4"]])
def test_no_abbreviations(args, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def test_demo_runs_shows_each_stage_and_says_the_model_is_random(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DWM_CACHE", str(tmp_path / "cache"))
    assert main(["demo", "--out-dir", str(tmp_path / "demo"), "--steps", "2"]) == 0
    out, err = capsys.readouterr()
    assert "RANDOM-WEIGHT" in out and "python -m comfyui_dwm generate" in out
    where = [err.index(stage) for stage in STAGES]
    assert where == sorted(where), err
    bar = err[where[2]:where[3]]  # the step bar opens when sampling starts and stays on screen at the end
    assert "sample:" not in err[:where[2]] and re.search(r"sample: +100%.*\b2/2\b", bar), bar
    compare, fps = read_video(str(tmp_path / "demo" / "compare.mp4"))
    assert compare.shape == (49, 160, 4 * 240, 3) and fps == 8


@pytest.mark.parametrize("args,match", [
    (["generate", "--static", "s.mp4"], "--hands: missing"),
    (["generate", "--prompt", "x"], "no input given"),
    (["generate", "--model", "/no/such/model/dir", "--static", "s", "--hands", "h", "--out", "o.mp4"],
     "neither a model folder nor a hub id"),
    (["generate", "--data-root", "x"], "--list: missing"),
    (["generate", "--out-dir", "x"], "--out-dir: needs --data-root"),
])
def test_bad_input_is_one_line_exit_2(args, match, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "Fix:" in err and len(err.splitlines()) == 1
    assert match in err


def test_missing_video_and_wrong_lora_exit_2(tiny_dir, tmp_path, capsys):
    base = ["generate", "--model", tiny_dir["1.1"], "--hands", "h.mp4", "--out", str(tmp_path / "o.mp4")]
    assert main(base + ["--static", str(tmp_path / "missing.mp4")]) == 2
    assert "--static:" in capsys.readouterr().err
    assert main(base + ["--static", "s.mp4", "--lora", str(tmp_path / "none.safetensors:0.8")]) == 2
    assert "--lora: " in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_wan(tmp_path_factory):
    """A tiny Wan base and a fitting release written by ``tiny-model --family wan --release``, plus clips."""
    root = tmp_path_factory.mktemp("wan")
    base, release = str(root / "base"), str(root / "release")
    assert main(["tiny-model", "--family", "wan", "--out", base, "--release", release]) == 0
    g = torch.Generator().manual_seed(0)
    videos = {}
    for name in ("static", "hands"):
        videos[name] = write_video(str(root / f"{name}.mp4"), torch.rand(9, 48, 64, 3, generator=g))
    return {"base": base, "release": release, **videos}


def test_wan_generate_end_to_end_is_deterministic(tiny_wan, tmp_path, capsys):
    """Same seed, same video; another seed, another video. H.264 can turn float-rounding noise (MKL picks
    its thread count by load) into a few changed pixels, so "same" is judged against the seed's effect."""
    videos = []
    for i, seed in enumerate(("5", "5", "6")):
        out = str(tmp_path / f"out{i}.mp4")
        assert main(["generate", "--model", tiny_wan["base"], "--lora", tiny_wan["release"] + ":0.8",
                     "--static", tiny_wan["static"], "--hands", tiny_wan["hands"], "--out", out, "--prompt", "open it",
                     "--width", "64", "--height", "48", "--num-frames", "9", "--steps", "2", "--seed", seed]) == 0
        videos.append(read_video(out))
        err = capsys.readouterr().err
        where = [err.index(stage) for stage in STAGES]
        assert where == sorted(where) and "Wan2.1-Fun base" in err and "2/2" in err
    (first, fps), (again, _), (other, _) = videos
    assert first.shape == (9, 48, 64, 3) and fps == 8
    same, changed = (first - again).abs().mean(), (first - other).abs().mean()
    assert same < 0.005 < 0.05 < changed, (float(same), float(changed))


def test_family_mismatch_is_one_clear_error(tiny_wan, tiny_dir, tmp_path, capsys):
    cog_lora = os.path.join(INTEROP, "reference-lora-v11")
    io = ["--static", tiny_wan["static"], "--hands", tiny_wan["hands"], "--out", str(tmp_path / "o.mp4")]
    assert main(["generate", "--model", tiny_wan["base"], "--lora", cog_lora] + io) == 2
    err = capsys.readouterr().err
    assert "is a DWM LoRA for CogVideoX-Fun, but --model" in err and "is a Wan2.1-Fun base" in err
    assert main(["generate", "--model", tiny_dir["1.1"], "--lora", tiny_wan["release"]] + io) == 2
    err = capsys.readouterr().err
    assert "is a DWM LoRA for Wan2.1-Fun, but --model" in err and "is a CogVideoX-Fun base" in err


def test_options_of_the_other_family_are_refused(tiny_wan, tiny_dir, tmp_path, capsys):
    io = ["--static", tiny_wan["static"], "--hands", tiny_wan["hands"], "--out", str(tmp_path / "o.mp4")]
    assert main(["generate", "--model", tiny_wan["base"], "--scheduler", "dpm"] + io) == 2
    assert "--scheduler: applies to CogVideoX bases only" in capsys.readouterr().err
    assert main(["generate", "--model", tiny_dir["1.1"], "--shift", "3"] + io) == 2
    assert "--shift: applies to Wan bases only" in capsys.readouterr().err
    assert main(["tiny-model", "--out", str(tmp_path / "m"), "--release", str(tmp_path / "r")]) == 2
    assert "--release: is only written for --family wan" in capsys.readouterr().err
