"""Against two real ComfyUI servers: python -m comfyui_dwm.queue spreads the jobs over both, and when one
is stopped mid-run its job moves to the other and every job still finishes, once."""
import subprocess
import time

import pytest

from comfyui_dwm.video_io import read_video

from .conftest import FRAMES, REPO, own_group, start_server
from .test_host_run import RUN_TIMEOUT_S, data_root, manifest, queue_cmd  # noqa: F401 (fixture)

pytestmark = pytest.mark.host
SEEDS = (1, 2, 3, 4, 5, 6)


@pytest.fixture
def second(comfy, tmp_path_factory):
    """Another server, sharing the first one's models; the test may stop it."""
    server = start_server(tmp_path_factory.mktemp("comfy_second"), models=comfy.base / "models")
    try:
        yield server
    finally:
        server.stop()


def ours_on(server, jobs) -> tuple[set, set]:
    """Prompt ids of our jobs the server has finished, and of those it is running or holds."""
    ids = {j["prompt_id"] for j in jobs if j["prompt_id"]}
    queue = server.get("/queue").json()
    done = ids & set(server.get("/history").json())  # read second: a job may finish between the two reads
    return done, ids & {item[1] for item in queue["queue_running"] + queue["queue_pending"]} - done


def test_jobs_spread_over_two_servers_and_survive_one_stopped(comfy, second, data_root):
    cmd = queue_cmd(comfy, data_root, ",".join(map(str, SEEDS)), steps=2) + \
        ["--server", second.url, "--max-queued", "1"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **own_group())
    deadline, done_there, running_there = time.monotonic() + RUN_TIMEOUT_S, set(), set()
    while proc.poll() is None and time.monotonic() < deadline and not (done_there and running_there):
        done_there, running_there = ours_on(second, manifest(data_root))
        time.sleep(0.2)
    assert done_there and running_there, "the second server never finished one job and held another"
    second.stop()  # terminate its process with our job on it
    _out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, err[-3000:]
    jobs = manifest(data_root)
    assert [(j["seed"], j["status"]) for j in jobs] == [(s, "done") for s in SEEDS]
    ids = {j["prompt_id"] for j in jobs}
    assert done_there <= ids and not running_there & ids  # the stopped server's last job ran elsewhere
    assert ids - done_there <= set(comfy.get("/history").json())
    assert f"[{second.url}] down (" in err and "1 job(s) moved to the other servers" in err
    outputs = sorted(o for j in jobs for o in j["outputs"])
    assert len(outputs) == 2 * len(SEEDS)  # the output video and the comparison, each once
    assert sorted(p.name for p in (data_root / "out").glob("*.mp4")) == outputs
    for out in outputs:
        assert read_video(str(data_root / "out" / out))[0].shape[0] == FRAMES
