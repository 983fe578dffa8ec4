"""A dataset shared out over two processes (accelerate launch, CPU, gloo) for both families: every sample
written once, the same frames as one process, and a rerun redoes only what is missing."""

from __future__ import annotations

import io
import os
import re
import time
from types import SimpleNamespace

import pytest
import torch
from comfyui_dwm import cli_generate, sharding
from comfyui_dwm.cli import main
from comfyui_dwm.video_io import read_video, write_video

from tests.generate_runs import frames, generate, recording

IDS = ("a", "b", "c")
SIZE = ["--steps", "2", "--width", "64", "--height", "48", "--num-frames", "9"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("data")
    g = torch.Generator().manual_seed(3)
    for sample in IDS:
        for folder in ("videos_static", "videos_hands"):
            os.makedirs(root / folder, exist_ok=True)
            write_video(str(root / folder / f"{sample}.mp4"), torch.rand(9, 48, 64, 3, generator=g))
        os.makedirs(root / "prompts", exist_ok=True)
        (root / "prompts" / f"{sample}.txt").write_text(f"prompt {sample}")
    (root / "list.txt").write_text("\n".join(IDS) + "\n")
    return str(root)


def dataset_args(model: list[str], data: str, out) -> list[str]:
    return [*model, "--data-root", data, "--list", os.path.join(data, "list.txt"), "--out-dir", str(out), *SIZE]


def run_both(tmp_path, monkeypatch, model: list[str], data: str) -> str:
    """One process (here, one thread like the launched ones), then two, into separate folders; the
    two-process log after checking that both wrote the same frames, each output once."""
    for name in ("one", "two", "f1", "f2"):
        (tmp_path / name).mkdir()
    monkeypatch.setattr(cli_generate, "_save", recording(cli_generate._save, str(tmp_path / "f1")))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["generate", *dataset_args(model, data, tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    log = generate(dataset_args(model, data, tmp_path / "two"), str(tmp_path / "f2"), processes=2)
    one, two = frames(str(tmp_path / "f1")), frames(str(tmp_path / "f2"))
    assert sorted(one) == sorted(two) == sorted(f"{s}{kind}.mp4" for s in IDS for kind in ("", "_compare"))
    for name in one:
        assert torch.equal(one[name], two[name]), name
    assert "2 of 3 samples (process 1/2)" in log and "1 of 3 samples (process 2/2)" in log, log
    return log


def test_cogvideox_dataset_is_shared_out_and_resumes(tiny_dir, data, tmp_path, monkeypatch):
    model = ["--model", tiny_dir["1.1"]]
    log = run_both(tmp_path, monkeypatch, model, data)
    assert re.search(r"\[sample 3/3\] c \([12]/3 done over 2 processes\)", log), log  # rank 0's global count
    assert "[rank 1/2] [sample 2/3] b" in log and "[rank 1/2] sample:" not in log  # no step bar on rank 1
    out = tmp_path / "two"
    os.remove(out / "b.mp4")  # the sample to redo
    stale = out / ".tmp-dwm-killed.mp4"  # what a killed writer leaves: never counted, removed
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 60, time.time() - 60))
    kept = {name: os.stat(out / name).st_mtime_ns for name in ("a.mp4", "a_compare.mp4", "c.mp4", "c_compare.mp4")}
    log = generate(dataset_args(model, data, out), processes=2)
    assert log.count("[write]") == 1 and f"[write] {out / 'b.mp4'}, {out / 'b_compare.mp4'}" in log, log
    assert "1 of 3 samples (process 2/2) in" in log and "1 generated" in log and "2 already done" in log, log
    assert {name: os.stat(out / name).st_mtime_ns for name in kept} == kept
    assert not stale.exists()
    assert read_video(str(out / "b.mp4"))[0].shape == (9, 48, 64, 3)


def test_wan_dataset_is_shared_out(wan_base_dir, data, tmp_path, monkeypatch):
    from comfyui_dwm.wan.tiny import make_tiny_wan_release

    release = make_tiny_wan_release(wan_base_dir, str(tmp_path / "release"), seed=0)
    run_both(tmp_path, monkeypatch, ["--model", wan_base_dir, "--lora", release], data)


@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_each_item_has_one_owner(count):
    items = list(range(11))
    owned = [i for rank in range(count) for i, _ in sharding.Processes(rank, count).mine(items)]
    assert sorted(owned) == items
    assert sharding.Processes(1, 2, cfg_parallel=True).mine(items) == list(enumerate(items))  # both run all
    assert not sharding.Processes(1, 2, cfg_parallel=True).writes and sharding.Processes(1, 2).writes


def test_plain_run_is_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    args = SimpleNamespace(device="auto", guidance=6.0, cfg_parallel=False)
    assert sharding.start(args) == sharding.Processes() and args.processes.main and args.device == "auto"


def test_other_ranks_tag_their_lines():
    stream = io.StringIO()
    lines = sharding.RankLines(stream, "[rank 1/2] ")
    lines.write("one\ntw")
    lines.write("o\n")
    assert stream.getvalue() == "[rank 1/2] one\n[rank 1/2] two\n"
