"""Command line: the demo, and one-line errors (exit 2) for bad input instead of tracebacks."""

from __future__ import annotations

import pytest

from dwm.cli import main, parse_lora
from dwm.video_io import read_video


def test_parse_lora():
    assert parse_lora("a/b.safetensors:0.5") == ("a/b.safetensors", 0.5)
    assert parse_lora("a/b.safetensors") == ("a/b.safetensors", 1.0)
    assert parse_lora("C:/loras/x") == ("C:/loras/x", 1.0)


def test_demo_runs_and_says_the_model_is_random(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DWM_CACHE", str(tmp_path / "cache"))
    assert main(["demo", "--out-dir", str(tmp_path / "demo"), "--steps", "2"]) == 0
    said = capsys.readouterr().out
    assert "RANDOM-WEIGHT" in said and "python -m dwm generate" in said
    compare, fps = read_video(str(tmp_path / "demo" / "compare.mp4"))
    assert compare.shape == (49, 160, 4 * 240, 3) and fps == 8


@pytest.mark.parametrize("args,match", [
    (["generate", "--static", "s.mp4"], "no input given"),
    (["generate", "--model", "/no/such/model/dir", "--static", "s", "--hands", "h", "--out", "o.mp4"],
     "neither a model folder nor a hub id"),
    (["generate", "--data-root", "x"], "--list: missing"),
])
def test_bad_input_is_one_line_exit_2(args, match, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "Fix:" in err and len(err.splitlines()) == 1
    assert match in err


def test_missing_video_and_wrong_lora_exit_2(tiny_dir, tmp_path, capsys):
    base = ["generate", "--model", tiny_dir["1.1"], "--hands", "h.mp4", "--out", str(tmp_path / "o.mp4")]
    assert main(base + ["--static", str(tmp_path / "missing.mp4")]) == 2
    assert "static video:" in capsys.readouterr().err
    assert main(base + ["--static", "s.mp4", "--lora", str(tmp_path / "none.safetensors:0.8")]) == 2
    assert "checkpoint:" in capsys.readouterr().err
