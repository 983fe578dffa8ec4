"""Batch-run a DWM workflow over a dataset on a running ComfyUI server.

Jobs are samples x seeds. For each job the sample's static and hand videos are uploaded to
the server's input folder (subfolder dwm_queue), its prompt text and the seed are written
into the API workflow, the prompt is queued, progress is followed over the websocket and
the outputs are downloaded into --out. <out>/manifest.jsonl records every job and is
rewritten after each change, so a rerun skips jobs that are done and whose files exist.

Which workflow inputs get substituted is found by node title (`_meta.title`, any case):
  "static video" -> the loader of videos_static/<id>.mp4
  "hand video"   -> the loader of videos_hands/<id>.mp4
  "prompt"       -> the text of prompts/<id>.txt
  "sampler"      -> the seed
Input names come from the node class (LoadVideo.file, VHS_LoadVideo.video, DWMTextEncode.prompt or
CLIPTextEncode.text, DWMSampler.seed or KSampler.seed, see dwm.queue_jobs.ROLE_INPUTS), so the
CogVideoX and the Wan workflows both work; --target ROLE=NODE_ID.INPUT picks another
node, and --set NODE_ID.INPUT=VALUE sets any input for every job (VALUE is JSON if it parses).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections import deque
from pathlib import Path

import requests
import websocket
from tqdm import tqdm

from dwm.atomic import atomic_path, clean_stale_temporaries
from dwm.dataset import read_list
from dwm.errors import DWMError
from dwm.queue_jobs import (ROLES, Job, Manifest, UsageError, describe_failure, describe_node_errors,
                            find_targets, load_workflow, output_name, parse_seeds, parse_target, parse_value,
                            sample_inputs)
from dwm.safety import interrupt_on_signals

UPLOAD_SUBFOLDER = "dwm_queue"
BACKOFF_S = 0.5  # first retry delay; doubles each try
BACKOFF_MAX_S = 8.0
POLL_S = 1.0  # websocket read timeout; on timeout the queued jobs' history is polled
CANCEL_WAIT_S = 15.0  # after Ctrl-C, how long to wait for our running prompt to stop
TRANSIENT_HTTP = {502, 503, 504}


class ServerDown(Exception):
    """The server stayed unreachable through every retry."""


class _Transient(Exception):
    """A gateway-style HTTP answer worth retrying."""


TRANSIENT = (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError,
             _Transient, websocket.WebSocketException)


def _checked(r: requests.Response) -> requests.Response:
    if r.status_code in TRANSIENT_HTTP:
        raise _Transient(f"HTTP {r.status_code}")
    return r


def _json(r: requests.Response) -> dict:
    try:
        return r.json()
    except ValueError:
        return {"error": {"message": f"HTTP {r.status_code}: {r.text[:200]}"}}


class Comfy:
    """The few ComfyUI endpoints the batch needs, each retried on transient failures."""

    def __init__(self, url: str, retries: int):
        self.url = url.rstrip("/")
        self.retries = retries
        self.client_id = uuid.uuid4().hex
        self.ws = None

    def _retry(self, what, fn):
        """fn() until it stops raising a transient error; bounded, with doubling delays."""
        delay = BACKOFF_S
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except TRANSIENT as e:
                if attempt == self.retries:
                    raise ServerDown(f"{what} failed after {attempt + 1} tries ({e})") from None
            time.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)

    def get(self, path, **params) -> requests.Response:
        r = self._retry(f"GET {path}", lambda: _checked(
            requests.get(self.url + path, params=params, timeout=60)))
        r.raise_for_status()
        return r

    def post(self, path, body) -> requests.Response:
        return self._retry(f"POST {path}", lambda: _checked(
            requests.post(self.url + path, json=body, timeout=60)))

    def upload(self, path: Path, name: str) -> str:
        """Returns the loader value; the server may rename a clashing file, so use its answer."""
        def send():
            with open(path, "rb") as f:
                return _checked(requests.post(
                    self.url + "/upload/image", files={"image": (name, f)},
                    data={"type": "input", "subfolder": UPLOAD_SUBFOLDER}, timeout=300))
        r = self._retry("upload", send)
        r.raise_for_status()
        res = r.json()
        return f"{res['subfolder']}/{res['name']}" if res.get("subfolder") else res["name"]

    def queue_prompt(self, wf: dict, prompt_id: str) -> dict:
        """POST /prompt with our own prompt_id, so a retry after a lost answer is not queued twice."""
        body = {"prompt": wf, "client_id": self.client_id, "prompt_id": prompt_id}
        tried = False

        def send():
            nonlocal tried
            if tried and self.known(prompt_id):
                return {"status": 200, "prompt_id": prompt_id, "node_errors": {}}
            tried = True
            r = _checked(requests.post(self.url + "/prompt", json=body, timeout=60))
            return {"status": r.status_code, **_json(r)}
        return self._retry("POST /prompt", send)

    def queued(self) -> set[str]:
        """Ids of the running and pending prompts (everyone's)."""
        q = self.get("/queue").json()
        return {item[1] for item in q["queue_running"] + q["queue_pending"]}

    def known(self, prompt_id: str) -> bool:
        return prompt_id in self.queued() or bool(self.history(prompt_id))

    def history(self, prompt_id: str) -> dict | None:
        return self.get(f"/history/{prompt_id}").json().get(prompt_id)

    def connect(self) -> None:
        url = "ws" + self.url[len("http"):] + f"/ws?clientId={self.client_id}"
        self.ws = self._retry("websocket connect",
                              lambda: websocket.create_connection(url, timeout=POLL_S))

    def next_message(self) -> dict | None:
        """One json message, or None after POLL_S of silence; binary previews are skipped."""
        try:
            raw = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            return None
        except (websocket.WebSocketConnectionClosedException, OSError):
            self.connect()  # same clientId, so the server routes our prompts' messages here again
            return None
        return json.loads(raw) if isinstance(raw, str) else None

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()


class Batch:
    """Keeps at most max_queued of our prompts on the server and collects each as it ends."""

    def __init__(self, comfy: Comfy, wf: dict, targets: dict, sets: list, files: dict,
                 manifest: Manifest, max_queued: int):
        self.comfy, self.wf, self.targets, self.sets = comfy, wf, targets, sets
        self.files, self.manifest, self.max_queued = files, manifest, max(1, max_queued)
        self.out = manifest.path.parent
        self.uploaded: dict[Path, str] = {}
        self.inflight: dict[str, Job] = {}
        self.bar = None

    def build(self, job: Job) -> dict:
        wf = json.loads(json.dumps(self.wf))
        values = {"sampler": job.seed}
        for role, value in self.files[job.sample].items():
            if isinstance(value, Path):  # a video: uploaded once, then referred to by its server name
                if value not in self.uploaded:
                    self.uploaded[value] = self.comfy.upload(value, f"{job.sample}_{ROLES[role][1]}{value.suffix}")
                value = self.uploaded[value]
            values[role] = value
        for role, (node, inp) in self.targets.items():
            wf[node]["inputs"][inp] = values[role]
        for value, node, inp in self.sets:
            wf[node]["inputs"][inp] = value
        return wf

    def submit(self, job: Job) -> None:
        wf = self.build(job)
        # Registered before the POST, so a Ctrl-C while it is on the wire still deletes it.
        job.prompt_id, job.status = str(uuid.uuid4()), "queued"
        self.inflight[job.prompt_id] = job
        res = self.comfy.queue_prompt(wf, job.prompt_id)
        if res["status"] != 200:
            del self.inflight[job.prompt_id]
            job.prompt_id = None
            self.finish(job, "error", error=describe_node_errors(res, self.wf))
            return
        self.manifest.save()

    def finish(self, job: Job, status: str, error: str | None = None, outputs=()) -> None:
        job.status, job.error, job.outputs = status, error, list(outputs)
        self.inflight.pop(job.prompt_id, None)
        self.manifest.save()
        if error:
            tqdm.write(f"[{job.label}] {status}: {error}", file=sys.stderr)
        self.bar.update(1)

    def collect(self, job: Job) -> bool:
        """Finish the job from its history entry; False while the server has not stored it."""
        entry = self.comfy.history(job.prompt_id)
        if not entry:
            return False
        if entry.get("status", {}).get("status_str") != "success":
            self.finish(job, "error", error=describe_failure(entry))
            return True
        saved = []
        for node, ui in entry.get("outputs", {}).items():
            for items in ui.values():
                for item in items if isinstance(items, list) else []:
                    if isinstance(item, dict) and "filename" in item and "type" in item:
                        saved.append(self.download(job, node, item))
        self.finish(job, "done", outputs=saved)
        return True

    def download(self, job: Job, node: str, item: dict) -> str:
        r = self.comfy.get("/view", filename=item["filename"], subfolder=item.get("subfolder", ""),
                           type=item["type"])
        name = output_name(job, node, item["filename"])
        with atomic_path(str(self.out / name)) as tmp:
            Path(tmp).write_bytes(r.content)
        return name

    def step(self) -> None:
        """Read one websocket message and act on it; poll history when the socket is quiet."""
        msg = self.comfy.next_message()
        data = (msg or {}).get("data") or {}
        job = self.inflight.get(data.get("prompt_id"))
        if msg is None:
            for job in list(self.inflight.values()):
                self.collect(job)
        elif job is None:
            return
        elif msg["type"] == "progress":
            self.bar.set_postfix_str(f"{job.label} step {data['value']}/{data['max']}")
        elif msg["type"] == "execution_start":
            self.bar.set_postfix_str(f"{job.label} started")
        elif msg["type"] in ("execution_success", "execution_error", "execution_interrupted") \
                or (msg["type"] == "executing" and data.get("node") is None):
            self.collect(job)

    def cancel(self) -> None:
        """Ctrl-C: drop our pending prompts and stop our running one; others' are left alone.

        The running prompt stops at its next interrupt check; once it has left the queue its result
        is known: a job that finished before the interrupt reached it keeps its outputs (done), the
        others are recorded as cancelled and run again on the next invocation.
        """
        ours = set(self.inflight)
        if ours:
            self.comfy.post("/queue", {"delete": sorted(ours)})
            for pid in ours:  # the server interrupts only if this id is the running one
                self.comfy.post("/interrupt", {"prompt_id": pid})
            deadline = time.monotonic() + CANCEL_WAIT_S
            while ours & self.comfy.queued() and time.monotonic() < deadline:
                time.sleep(POLL_S / 4)
        for job in list(self.inflight.values()):
            entry = self.comfy.history(job.prompt_id)
            if not (entry and entry.get("status", {}).get("status_str") == "success" and self.collect(job)):
                job.status, job.error = "cancelled", "cancelled by Ctrl-C"
        self.inflight.clear()
        self.manifest.save()

    def run(self, jobs: list[Job]) -> int:
        todo = deque(j for j in jobs if not self.manifest.finished(j))
        self.bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), unit="job", file=sys.stderr)
        try:
            if todo:
                self.comfy.connect()
            while todo or self.inflight:
                while todo and len(self.inflight) < self.max_queued:
                    self.submit(todo.popleft())
                if self.inflight:
                    self.step()
        except KeyboardInterrupt:
            self.bar.close()
            self.cancel()
            print(f"interrupted: our queued prompts were removed; manifest {self.manifest.path}",
                  file=sys.stderr)
            return 130
        finally:
            self.bar.close()
            self.comfy.close()
        failed = sum(j.status != "done" for j in jobs)
        print(f"{len(jobs) - failed}/{len(jobs)} jobs done, {failed} failed; "
              f"manifest {self.manifest.path}", file=sys.stderr)
        return 1 if failed else 0


def check_server(comfy: Comfy, wf: dict) -> None:
    """Fail up front when the server is down or lacks a node type the workflow uses."""
    try:
        info = comfy.get("/object_info").json()
    except (ServerDown, requests.RequestException, ValueError):
        raise UsageError(f"cannot reach ComfyUI at {comfy.url}: start it with `python main.py "
                         "--listen 127.0.0.1 --port 8188` in your ComfyUI folder, or pass --server") from None
    missing = sorted({n["class_type"] for n in wf.values()} - set(info))
    if missing:
        raise UsageError(f"ComfyUI at {comfy.url} lacks node types {', '.join(missing)}: "
                         "install ComfyUI-DWM into custom_nodes and restart ComfyUI")


EXAMPLE = """example:
  python -m dwm.queue --server http://127.0.0.1:8188 --workflow workflows/api/dwm_basic.json \\
      --data-root /data/realworld_dynamic --list ids.txt --seeds 0,1 \\
      --set 10.steps=30 --out runs/batch1

the workflow must be in API format (ComfyUI: Workflow > Export (API)). Title the nodes
"static video", "hand video", "prompt" and "sampler" to mark what each job replaces, or
point at inputs with --target static_video=12.video. Ctrl-C removes our queued prompts
from the server and keeps the manifest; rerun the same command to resume."""


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m dwm.queue", allow_abbrev=False,
                                description=__doc__.split("\n\n")[0],
                                epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", default="http://127.0.0.1:8188",
                   help="ComfyUI base URL (default http://127.0.0.1:8188)")
    p.add_argument("--workflow", required=True, help="API-format workflow json")
    p.add_argument("--data-root", required=True,
                   help="dataset root with videos_static/, videos_hands/, prompts/")
    p.add_argument("--list", required=True, help="text file of sample ids, one per line")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    p.add_argument("--set", action="append", default=[], metavar="NODE_ID.INPUT=VALUE",
                   help="set an input in every job; VALUE is JSON if it parses, else a string")
    p.add_argument("--target", action="append", default=[], metavar="ROLE=NODE_ID.INPUT",
                   help=f"input a role writes to, instead of the titled node ({', '.join(ROLES)})")
    p.add_argument("--out", default="dwm_queue_out", help="output folder (default dwm_queue_out)")
    p.add_argument("--max-queued", type=int, default=2,
                   help="most of our prompts in the server queue at once (default 2)")
    p.add_argument("--retries", type=int, default=4,
                   help="retries of a failed connection, with doubling delays (default 4)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    started = time.time()
    args = parse_args(argv)
    try:
        wf = load_workflow(args.workflow)
        targets = find_targets(wf, args.target)
        sets = [(parse_value(v), node, inp) for v, node, inp in
                (parse_target(s, wf, "--set") for s in args.set)]
        samples = read_list(args.data_root, args.list)
        seeds = parse_seeds(args.seeds)
        files = {s.slug: sample_inputs(s, targets) for s in samples}
        comfy = Comfy(args.server, args.retries)
        check_server(comfy, wf)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        clean_stale_temporaries(str(out), started, suffix=None)  # what a killed run left half-written
    except (UsageError, DWMError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    manifest = Manifest(out)
    jobs = manifest.plan(list(files), seeds)
    manifest.save()
    try:
        with interrupt_on_signals():
            return Batch(comfy, wf, targets, sets, files, manifest, args.max_queued).run(jobs)
    except ServerDown as e:
        manifest.save()
        print(f"error: lost ComfyUI at {comfy.url}: {e}; rerun the same command to resume",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
