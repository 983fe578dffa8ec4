"""comfyui_dwm.queue over several fake ComfyUI servers: jobs spread, a killed server's job moves, all gone."""
import _thread
import threading
import time

from comfyui_dwm import queue_servers
from tests.fake_comfy_server import FakeComfy
from tests.test_queue import data, fast, manifest, run  # noqa: F401 (fixtures)


def when(ready, then) -> None:
    """then() once ready() holds (at most 10 s later), from a helper thread."""
    def wait():
        deadline = time.time() + 10
        while not ready() and time.time() < deadline:
            time.sleep(0.01)
        then()
    threading.Thread(target=wait, daemon=True).start()


def of_sample(name):
    return lambda prompt: prompt["3"]["inputs"]["prompt"].endswith(name)


def watch_drops(monkeypatch) -> threading.Event:
    """An event set when a worker drops its server."""
    dropped, went_down = threading.Event(), queue_servers.Worker.went_down

    def watched(self, reason, final=False):
        went_down(self, reason, final)
        if self.state == "dropped":
            dropped.set()
    monkeypatch.setattr(queue_servers.Worker, "went_down", watched)
    return dropped


def test_jobs_spread_over_two_servers_each_done_once(data):
    gate = threading.Event()  # nothing runs until each server holds one of our jobs
    with FakeComfy() as a, FakeComfy() as b:
        a.gate = b.gate = gate
        when(lambda: a.prompts and b.prompts, gate.set)
        assert run([a.url, b.url], data, "--seeds", "0,1", "--max-queued", "1") == 0
    m = manifest(data)
    assert len(m) == 6 and {r["status"] for r in m.values()} == {"done"}
    assert a.prompts and b.prompts and len(a.prompts) + len(b.prompts) == 6  # none queued twice
    assert {r["prompt_id"] for r in m.values()} == set(a.history) | set(b.history)
    for (sample, seed), rec in m.items():
        [name] = rec["outputs"]
        assert f'"prompt": "open the drawer {sample}"' in (data["out"] / name).read_text()
        assert f'"seed": {seed},' in (data["out"] / name).read_text()


def test_a_killed_servers_job_moves_and_every_job_finishes(data, monkeypatch, capsys):
    dropped = watch_drops(monkeypatch)
    with FakeComfy() as a, FakeComfy() as b:
        a.hold, b.gate = True, threading.Event()
        when(lambda: a.prompts and b.prompts, a.kill)  # each holds one job: kill a

        def b_runs_once_a_is_dropped():
            dropped.wait(10)
            b.gate.set()
        threading.Thread(target=b_runs_once_a_is_dropped, daemon=True).start()
        assert run([a.url, b.url], data, "--max-queued", "1", "--max-failures", "2") == 0
    m = manifest(data)
    assert {r["status"] for r in m.values()} == {"done"}
    assert len(a.prompts) == 1 and len(b.prompts) == 3 and not a.history
    assert {r["prompt_id"] for r in m.values()} == set(b.history)
    assert len(list(data["out"].glob("*.mp4"))) == 3  # each job's output once
    err = capsys.readouterr().err
    assert f"[{a.url}] down (" in err and "1 job(s) moved to the other servers" in err
    assert f"[{a.url}] dropped after 2 failures in a row (" in err
    assert f"[{b.url}] 3 job(s) finished" in err and "3/3 jobs done, 0 failed" in err


def test_all_servers_gone_stops_with_one_message_and_a_rerun_resumes(data, capsys):
    with FakeComfy() as a, FakeComfy() as b:
        a.hold = b.hold = of_sample("00039")  # the last two jobs: one held on each server
        when(lambda: len(a.prompts) + len(b.prompts) == 6 and a.running and b.running,
             lambda: (a.kill(), b.kill()))
        assert run([a.url, b.url], data, "--seeds", "0,1", "--max-queued", "1") == 1
    [line] = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert line.startswith("error: no ComfyUI server left (") and a.url in line and b.url in line
    assert "pass --server URL of a running one" in line and "rerun the same command to resume" in line
    m = manifest(data)
    assert {k: r["status"] for k, r in m.items() if r["status"] != "done"} == \
        {("00039", 0): "pending", ("00039", 1): "pending"}
    with FakeComfy() as c:
        assert run(c.url, data, "--seeds", "0,1") == 0
    assert len(c.prompts) == 2
    again = manifest(data)
    assert {r["status"] for r in again.values()} == {"done"}
    assert all(again[k] == r for k, r in m.items() if r["status"] == "done")


def test_a_server_down_at_start_is_retried_while_the_other_works(data, capsys):
    with FakeComfy() as gone:
        pass  # and so refuses connections from now on
    with FakeComfy() as a:
        assert run([gone.url, a.url], data, "--retries", "1") == 0
    assert {r["status"] for r in manifest(data).values()} == {"done"} and len(a.prompts) == 3
    err = capsys.readouterr().err
    assert f"[{gone.url}] down (" in err and "trying it again in" in err


def test_ctrl_c_removes_our_prompts_from_every_server(data):
    with FakeComfy() as a, FakeComfy() as b:
        a.hold = b.hold = True
        when(lambda: a.prompts and b.prompts, _thread.interrupt_main)
        assert run([a.url, b.url], data, "--max-queued", "1") == 130
        for fake in (a, b):
            assert fake.interrupts == fake.prompts and fake.prompts[0] in fake.interrupted
    statuses = sorted(r["status"] for r in manifest(data).values())
    assert statuses == ["cancelled", "cancelled", "pending"]


def test_a_restarted_server_takes_jobs_again(data, capsys):
    """Killed, then up again on its port: our lost prompt is noticed (gone from its queue and history),
    moved, removed from the new server should it hold it, and the server takes jobs again."""
    with FakeComfy() as a, FakeComfy() as b:
        a.hold, b.gate = True, threading.Event()
        again = []
        when(lambda: a.prompts and b.prompts,
             lambda: again.append(a.restarted()))
        when(lambda: again and again[0].prompts, b.gate.set)
        try:
            assert run([a.url, b.url], data, "--max-queued", "1") == 0
        finally:
            again[0].__exit__(None, None, None)
    m = manifest(data)
    assert {r["status"] for r in m.values()} == {"done"}
    assert again[0].deleted == a.prompts and again[0].prompts
    assert {r["prompt_id"] for r in m.values()} == set(b.history) | set(again[0].history)
    err = capsys.readouterr().err
    assert f"[{a.url}] down (" in err and f"[{a.url}] back: taking jobs again" in err
