"""comfyui_dwm.queue against an in-process fake ComfyUI: collection, resume, errors, Ctrl-C, retries."""
import _thread
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from comfyui_dwm import queue as q
from comfyui_dwm import queue_client, queue_servers
from comfyui_dwm.queue_jobs import UsageError, find_targets
from tests.fake_comfy_server import CORE_TYPES, FakeComfy

REPO = Path(__file__).resolve().parents[1]
SAMPLES = ["00013", "00017", "00039"]
WORKFLOW = {
    "1": {"class_type": "VHS_LoadVideo", "inputs": {"video": "x.mp4", "force_rate": 0},
          "_meta": {"title": "Static Video"}},
    "2": {"class_type": "LoadVideo", "inputs": {"file": "y.mp4"}, "_meta": {"title": "hand video"}},
    "3": {"class_type": "DWMTextEncode", "inputs": {"prompt": ""}, "_meta": {"title": "Prompt"}},
    "4": {"class_type": "DWMSampler", "inputs": {"seed": 123, "steps": 50, "video": ["1", 0],
                                                  "hands": ["2", 0], "cond": ["3", 0]},
          "_meta": {"title": "sampler"}},
    "5": {"class_type": "VHS_VideoCombine", "inputs": {"images": ["4", 0]}, "_meta": {"title": "out"}},
}


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    monkeypatch.setattr(queue_client, "BACKOFF_S", 0.01)
    monkeypatch.setattr(queue_client, "POLL_S", 0.05)
    monkeypatch.setattr(queue_servers, "RETRY_DOWN_S", 0.05)


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    for sub in ("videos", "videos_static", "videos_hands", "prompts"):
        (root / sub).mkdir(parents=True)
    for s in SAMPLES:
        (root / "videos_static" / f"{s}.mp4").write_bytes(b"static " + s.encode())
        (root / "videos_hands" / f"{s}.mp4").write_bytes(b"hands " + s.encode())
        (root / "prompts" / f"{s}.txt").write_text(f"open the drawer {s}\n")
    lst = tmp_path / "list.txt"
    lst.write_text("# ids\n00013.mp4\n\n00017\n00039  # last\n")
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(WORKFLOW))
    return {"root": root, "list": lst, "wf": wf, "out": tmp_path / "out", "tmp": tmp_path}


def run(fake_url, data, *extra):
    """The CLI on the dataset; fake_url is one URL or a list of them (one --server each)."""
    urls = [fake_url] if isinstance(fake_url, str) else fake_url
    return q.main([arg for url in urls for arg in ("--server", url)] + ["--workflow", str(data["wf"]), "--data-root",
                   str(data["root"]), "--list", str(data["list"]), "--out", str(data["out"]), *extra])


def manifest(data):
    lines = (data["out"] / "manifest.jsonl").read_text().splitlines()
    return {(r["sample"], r["seed"]): r for r in map(json.loads, lines)}


def test_three_jobs_collected_with_manifest(data):
    with FakeComfy() as fake:
        assert run(fake.url, data, "--set", "4.steps=8", "--set", "5.filename_prefix=dwm/run") == 0
    m = manifest(data)
    assert sorted(m) == [(s, 0) for s in SAMPLES]
    assert {r["status"] for r in m.values()} == {"done"}
    assert {r["error"] for r in m.values()} == {None}
    for (sample, seed), rec in m.items():
        assert rec["prompt_id"] in fake.history
        [name] = rec["outputs"]
        assert name.startswith(f"{sample}_seed0_5_out_") and name.endswith(".mp4")
        got = json.loads((data["out"] / name).read_bytes())  # the inputs the server saw
        assert got["1"]["video"] == f"dwm_queue/{sample}_static.mp4"
        assert got["2"]["file"] == f"dwm_queue/{sample}_hands.mp4"
        assert got["3"]["prompt"] == f"open the drawer {sample}"
        assert got["4"]["seed"] == 0 and got["4"]["steps"] == 8
        assert got["5"]["filename_prefix"] == "dwm/run"
        assert fake.uploads[f"dwm_queue/{sample}_hands.mp4"] == b"hands " + sample.encode()
    assert not list(data["out"].glob(".tmp-*"))


def test_wan_workflow_gets_videos_prompt_and_seed(data):
    """The shipped Wan workflow: core LoadVideo, CLIPTextEncode titled prompt, KSampler titled sampler;
    the negative prompt and every other input stay as shipped."""
    shipped = json.loads((REPO / "workflows" / "api" / "dwm_wan_basic.json").read_text("utf-8"))
    data["wf"].write_text(json.dumps(shipped))
    data["list"].write_text("00017\n")
    types = sorted({n["class_type"] for n in shipped.values()})
    with FakeComfy(node_types=types) as fake:
        assert run(fake.url, data, "--seeds", "7") == 0
    job = manifest(data)[("00017", 7)]
    assert job["status"] == "done" and len(job["outputs"]) == 2  # the result and the comparison
    got = json.loads((data["out"] / job["outputs"][0]).read_bytes())
    changed = {(nid, k) for nid, n in shipped.items() for k, v in n["inputs"].items() if got[nid][k] != v}
    role = {n["_meta"]["title"]: nid for nid, n in shipped.items()}
    assert changed == {(role["static video"], "file"), (role["hand video"], "file"),
                       (role["prompt"], "text"), (role["sampler"], "seed")}
    assert got[role["static video"]]["file"] == "dwm_queue/00017_static.mp4"
    assert got[role["hand video"]]["file"] == "dwm_queue/00017_hands.mp4"
    assert got[role["prompt"]]["text"] == "open the drawer 00017"
    assert got[role["sampler"]]["seed"] == 7


@pytest.mark.parametrize("cls, inp", [("CLIPTextEncode", "text"), ("DWMTextEncode", "prompt")])
def test_prompt_role_by_text_encoder_class(cls, inp):
    wf = {"5": {"class_type": cls, "inputs": {}, "_meta": {"title": "Prompt "}},
          "6": {"class_type": "CLIPTextEncode", "inputs": {}, "_meta": {"title": "negative prompt"}},
          "7": {"class_type": "KSamplerAdvanced", "inputs": {}, "_meta": {"title": "sampler"}}}
    assert find_targets(wf, []) == {"prompt": ("5", inp), "sampler": ("7", "noise_seed")}


def test_target_replaces_title_lookup_of_its_role():
    """A titled node of a class the queue does not know needs --target, which then wins outright."""
    wf = {"5": {"class_type": "MyTextNode", "inputs": {}, "_meta": {"title": "prompt"}},
          "6": {"class_type": "KSampler", "inputs": {}, "_meta": {"title": "sampler"}},
          "7": {"class_type": "KSampler", "inputs": {}, "_meta": {"title": "sampler"}}}
    with pytest.raises(UsageError, match="node 5 titled 'prompt' is a MyTextNode"):
        find_targets(wf, ["sampler=7.seed"])
    assert find_targets(wf, ["prompt=5.words", "sampler=7.seed"]) == {"prompt": ("5", "words"),
                                                                       "sampler": ("7", "seed")}


def test_rerun_skips_finished_jobs(data):
    data["list"].write_text("00013\n00017\n")
    with FakeComfy() as fake:
        assert run(fake.url, data, "--seeds", "0,1") == 0
        first = manifest(data)
        (data["out"] / first[("00017", 1)]["outputs"][0]).unlink()  # lost output: redo that job
        assert run(fake.url, data, "--seeds", "0,1") == 0
    second = manifest(data)
    assert len(fake.prompts) == 5
    assert second[("00017", 1)]["prompt_id"] == fake.prompts[-1]
    for key in [("00013", 0), ("00013", 1), ("00017", 0)]:
        assert second[key] == first[key]
    assert all((data["out"] / r["outputs"][0]).is_file() for r in second.values())


def test_node_errors_recorded_and_batch_goes_on(data, capsys):
    def reject(prompt):
        if prompt["3"]["inputs"]["prompt"].endswith("00013"):
            return {"1": {"errors": [{"type": "custom_validation_failed",
                                      "message": "Custom validation failed for node",
                                      "details": "video - Invalid video file: nope.mp4",
                                      "extra_info": {"input_name": "video"}}],
                          "dependent_outputs": ["5"], "class_type": "VHS_LoadVideo"}}
    with FakeComfy() as fake:
        fake.reject = reject
        fake.fail = lambda p: "CUDA out of memory" if p["3"]["inputs"]["prompt"].endswith("17") else None
        assert run(fake.url, data) == 1
    m = manifest(data)
    assert m[("00013", 0)]["status"] == "error" and m[("00013", 0)]["prompt_id"] is None
    assert "node 1 (VHS_LoadVideo)" in m[("00013", 0)]["error"]
    assert "Invalid video file: nope.mp4" in m[("00013", 0)]["error"]
    assert m[("00017", 0)]["status"] == "error"
    assert m[("00017", 0)]["error"] == "node 1 (VHS_LoadVideo) raised RuntimeError: CUDA out of memory"
    assert m[("00039", 0)]["status"] == "done" and m[("00039", 0)]["outputs"]
    err = capsys.readouterr().err
    assert "[00013 seed 0] error: Prompt outputs failed validation" in err
    assert "[00017 seed 0] error: node 1 (VHS_LoadVideo) raised RuntimeError: CUDA out of memory" in err
    assert "1/3 jobs done, 2 failed" in err


def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith("error: ")
    return err


def test_server_down_is_one_line(data, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    assert run(url, data, "--retries", "1") == 2
    err = one_line_error(capsys)
    assert f"cannot reach ComfyUI at {url}" in err and "or pass --server" in err


def test_ui_format_workflow_is_one_line(data, capsys):
    data["wf"].write_text(json.dumps({"nodes": [], "links": [], "version": 0.4}))
    assert run("http://127.0.0.1:9", data) == 2
    err = one_line_error(capsys)
    assert "UI format" in err and "Export (API)" in err


def test_missing_sample_names_sample_and_path(data, capsys):
    (data["root"] / "videos_hands" / "00017.mp4").unlink()
    assert run("http://127.0.0.1:9", data) == 2
    err = one_line_error(capsys)
    assert "sample 00017" in err and str(data["root"] / "videos_hands" / "00017.mp4") in err


def test_empty_list_file(data, capsys):
    data["list"].write_text("# nothing yet\n\n")
    assert run("http://127.0.0.1:9", data) == 2
    assert "lists no samples" in one_line_error(capsys)


def test_missing_node_types(data, capsys):
    with FakeComfy(node_types=CORE_TYPES) as fake:
        assert run(fake.url, data) == 2
        assert fake.prompts == [] and fake.uploads == {}
    err = one_line_error(capsys)
    assert "lacks node types DWMSampler, DWMTextEncode" in err
    assert "install ComfyUI-DWM into custom_nodes and restart" in err


def test_ctrl_c_removes_our_pending_prompts(data, capsys):
    with FakeComfy() as fake:
        fake.hold = True
        other = fake.post_prompt({"prompt": {"9": {"class_type": "SaveVideo", "inputs": {}}},
                                  "client_id": "someone-else"})[1]["prompt_id"]

        def press_ctrl_c():  # once our two prompts sit behind the other client's running one
            deadline = time.time() + 5
            while time.time() < deadline and len(fake.prompts) < 3:
                time.sleep(0.01)
            _thread.interrupt_main()
        threading.Thread(target=press_ctrl_c, daemon=True).start()
        assert run(fake.url, data) == 130
        ours = fake.prompts[1:]
        assert len(ours) == 2
        assert not [p for p in fake.pending if p[1] in ours]
        assert sorted(fake.deleted) == sorted(ours)
        assert fake.running[1] == other and other not in fake.interrupted
    m = manifest(data)
    assert [m[(s, 0)]["status"] for s in SAMPLES] == ["cancelled", "cancelled", "pending"]
    assert "our queued prompts were removed" in capsys.readouterr().err


def test_ctrl_c_interrupts_our_running_prompt(data):
    data["list"].write_text("00013\n")
    with FakeComfy() as fake:
        fake.hold = True
        threading.Thread(target=lambda: (time.sleep(0.3), _thread.interrupt_main()),
                         daemon=True).start()
        assert run(fake.url, data) == 130
        assert fake.interrupts == fake.prompts and fake.prompts[0] in fake.interrupted
    assert manifest(data)[("00013", 0)]["status"] == "cancelled"


def test_ctrl_c_keeps_a_job_that_finished_before_it(data, monkeypatch):
    """The server finished the job, Ctrl-C came before we read that: its outputs are still collected."""
    data["list"].write_text("00013\n")
    with FakeComfy() as fake:
        def finished_then_ctrl_c(self):
            deadline = time.time() + 5
            while not fake.history and time.time() < deadline:
                time.sleep(0.01)
            raise KeyboardInterrupt

        monkeypatch.setattr(queue_client.Comfy, "next_message", finished_then_ctrl_c)
        assert run(fake.url, data) == 130
        assert fake.interrupted == set()
    job = manifest(data)[("00013", 0)]
    assert job["status"] == "done" and job["outputs"]
    assert all((data["out"] / name).is_file() for name in job["outputs"])


def test_max_queued_bounds_our_prompts(data):
    seen = []
    with FakeComfy() as fake:
        orig = fake.post_prompt

        def counting(body):
            res = orig(body)
            seen.append(len(fake.pending) + (fake.running is not None))
            return res
        fake.post_prompt = counting
        assert run(fake.url, data, "--seeds", "0,1", "--max-queued", "1") == 0
    assert len(seen) == 6 and max(seen) == 1


def test_transient_errors_are_retried(data):
    with FakeComfy() as fake:
        fake.drop = {"/prompt": 1, "/upload/image": 1}
        fake.drop_after = {"/prompt": 1}  # queued, but the answer is lost: must not queue twice
        assert run(fake.url, data) == 0
        assert fake.drop["/prompt"] == 0 and fake.drop_after["/prompt"] == 0
        assert len(fake.prompts) == 3
    assert {r["status"] for r in manifest(data).values()} == {"done"}


def test_rerun_removes_what_a_killed_run_left_half_written(data):
    data["out"].mkdir()
    stale = [data["out"] / ".tmp-dwm-abc123.mp4", data["out"] / ".tmp-dwm-def456.jsonl"]
    for path in stale:
        path.write_bytes(b"half")
        os.utime(path, (time.time() - 60, time.time() - 60))
    mine = data["out"] / "notes.mp4"  # not ours by name: kept
    mine.write_bytes(b"keep")
    with FakeComfy() as fake:
        assert run(fake.url, data) == 0
    assert not any(p.exists() for p in stale) and mine.read_bytes() == b"keep"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_a_queue_started_with_sigint_ignored(data, signum):
    """As under `nohup` or `cmd &`: the inherited SIG_IGN must not make Ctrl-C (or a kill) a no-op."""
    data["list"].write_text("00013\n")
    with FakeComfy() as fake:
        fake.hold = True
        cmd = [sys.executable, "-m", "comfyui_dwm.queue", "--server", fake.url, "--workflow", str(data["wf"]),
               "--data-root", str(data["root"]), "--list", str(data["list"]), "--out", str(data["out"])]
        proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        deadline = time.time() + 30
        while time.time() < deadline and not fake.prompts:
            time.sleep(0.05)
        assert fake.prompts, "the queue never submitted its job"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "our queued prompts were removed" in err
    assert manifest(data)[("00013", 0)]["status"] == "cancelled"


@pytest.mark.parametrize("node, filename", [("..\\..\\x", "a.mp4"), ("7", "..\\..\\evil.mp4"),
                                            ("7", "/etc/passwd"), ("CON", "NUL.mp4"), ("9:1", ".hidden")])
def test_output_names_stay_inside_out_on_every_platform(node, filename):
    from comfyui_dwm.queue_jobs import Job, output_name

    name = output_name(Job(sample="..\\s", seed=0), node, filename)
    assert not any(c in name for c in "/\\:") and not name.startswith(".")
    assert name.startswith("s_seed0_") and name.split(".")[0].upper() not in {"CON", "NUL"}


def test_safe_part_avoids_device_names_dots_and_separators():
    from comfyui_dwm.names import base_name, safe_part

    assert safe_part("CON") == "_CON" and safe_part("nul.mp4") == "_nul.mp4"
    assert safe_part("..") == "_" and safe_part("") == "_" and safe_part("a/b\\c") == "a-b-c"
    assert base_name("..\\..\\evil.mp4") == "evil.mp4" and base_name("x/y/z.mp4") == "z.mp4"


def test_sample_slug_from_a_hostile_list_line_is_a_plain_name():
    from comfyui_dwm.dataset import Sample

    assert Sample("..\\..\\x", "root", "x").slug == "_.._x"
    assert Sample("realworld_dynamic/videos/00055.mp4", "root", "00055").slug == "realworld_dynamic_videos_00055"
