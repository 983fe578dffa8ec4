"""One batch over one or more ComfyUI servers: a thread per server, one shared list of jobs.

ComfyUI runs one prompt at a time, so each server gets a Worker thread that keeps at most
--max-queued of our prompts on it and collects each as it ends. When a server goes away (refused
connections, its websocket gone, timeouts: each after the client's retries) its worker hands its jobs
back to the shared list, where the next free server takes them, and tries the server again
RETRY_DOWN_S later; after --max-failures failures in a row the server is dropped. When no server is
up the batch stops; the manifest keeps the finished jobs for a rerun.
"""
from __future__ import annotations

import sys
import threading
import time
import uuid
from collections import deque
from pathlib import Path

from tqdm import tqdm

from comfyui_dwm.atomic import atomic_path
from comfyui_dwm import queue_client
from comfyui_dwm.queue_client import Comfy, ServerDown, check_server
from comfyui_dwm.queue_jobs import (Job, Manifest, Recipe, UsageError, describe_failure, describe_node_errors,
                                    output_name)

RETRY_DOWN_S = 30.0  # how long a server that went away rests before it is tried again
CANCEL_WAIT_S = 15.0  # after Ctrl-C, how long to wait for our running prompt to stop


def log(text: str) -> None:
    tqdm.write(text, file=sys.stderr)


class Pool:
    """The jobs not yet handed out, the one manifest and the one progress bar, shared by the workers."""

    def __init__(self, recipe: Recipe, manifest: Manifest, jobs: list[Job]):
        self.recipe, self.manifest, self.jobs = recipe, manifest, jobs
        self.todo = deque(j for j in jobs if not manifest.finished(j))
        self.left = len(self.todo)  # jobs neither done nor failed
        self.lock = threading.Condition()  # guards the jobs, the manifest and the workers' states
        self.over = threading.Event()  # all done, Ctrl-C, no server up, or a worker crashed
        self.interrupted = False
        self.crash: BaseException | None = None
        self.workers: list[Worker] = []
        self.bar = None

    def stop(self, interrupted: bool = False, crash: BaseException | None = None) -> None:
        with self.lock:
            self.interrupted |= interrupted
            self.crash = self.crash or crash
            self.over.set()
            self.lock.notify_all()

    def take(self) -> Job | None:
        with self.lock:
            return self.todo.popleft() if self.todo and not self.over.is_set() else None

    def wait_for_work(self) -> None:
        with self.lock:
            while not self.todo and not self.over.is_set():
                self.lock.wait()

    def save(self) -> None:
        with self.lock:
            self.manifest.save()

    def finish(self, job: Job, status: str, error: str | None = None, outputs=()) -> None:
        with self.lock:
            job.status, job.error, job.outputs = status, error, list(outputs)
            self.manifest.save()
            self.left -= 1
            self.bar.update(1)
            if self.left == 0:
                self.stop()
        if error:
            log(f"[{job.label}] {status}: {error}")

    def requeue(self, jobs: list[Job]) -> None:
        """Jobs of a server that went away: first in line for the others."""
        with self.lock:
            for job in jobs:
                job.status, job.prompt_id = "pending", None
            self.todo.extendleft(reversed(jobs))
            self.manifest.save()
            self.lock.notify_all()

    def wait_for_workers(self) -> None:
        """In short waits, so that Ctrl-C reaches the main thread at once; not Thread.join, which an
        interrupt can leave believing a running thread has ended (Python < 3.12)."""
        for w in self.workers:
            while not w.ended.wait(0.1):
                pass

    def run(self) -> int:
        """Every job once, spread over the workers' servers; the exit code."""
        self.bar = tqdm(total=len(self.jobs), initial=len(self.jobs) - self.left, unit="job", file=sys.stderr)
        if self.left == 0:
            self.over.set()
        try:
            for w in self.workers:
                threading.Thread(target=w.run, name=f"dwm-queue {w.comfy.url}", daemon=True).start()
            self.wait_for_workers()
        except KeyboardInterrupt:
            self.stop(interrupted=True)
            self.wait_for_workers()  # each worker removes its prompts from its server
        finally:
            self.bar.close()
        if self.crash is not None:
            raise self.crash
        if self.interrupted:
            log(f"interrupted: our queued prompts were removed; manifest {self.manifest.path}")
            return 130
        if self.left:
            gone = "; ".join(f"{w.comfy.url}: {w.reason}" for w in self.workers)
            log(f"error: no ComfyUI server left ({gone}): start it again, or pass --server URL of a running "
                f"one (repeat --server for several), and rerun the same command to resume; the manifest "
                f"{self.manifest.path} keeps the finished jobs")
            return 1
        if len(self.workers) > 1:
            for w in self.workers:
                log(f"[{w.comfy.url}] {w.finished} job(s) finished" + ("" if w.state == "up" else f" ({w.state})"))
        failed = sum(j.status != "done" for j in self.jobs)
        log(f"{len(self.jobs) - failed}/{len(self.jobs)} jobs done, {failed} failed; manifest {self.manifest.path}")
        return 1 if failed else 0


class Worker:
    """One server: takes jobs from the pool, keeps at most max_queued of them queued there, follows
    them over the websocket and downloads their outputs. State: up, down (retried later) or dropped."""

    def __init__(self, comfy: Comfy, pool: Pool, max_queued: int, max_failures: int):
        self.comfy, self.pool = comfy, pool
        self.max_queued, self.max_failures = max(1, max_queued), max(1, max_failures)
        self.inflight: dict[str, Job] = {}
        self.uploaded: dict[Path, str] = {}
        self.moved: set[str] = set()  # our prompts left on it when it went away: removed when it is back
        self.state, self.reason, self.failures, self.finished = "up", "", 0, 0
        self.retry_at = 0.0
        self.ended = threading.Event()
        pool.workers.append(self)

    # -- the thread ---------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self.work()
        except KeyboardInterrupt:  # raised in this thread (e.g. by a test's fake): the same as Ctrl-C
            self.pool.stop(interrupted=True)
        except BaseException as e:  # a bug or an unexpected answer: stop the batch, the main thread raises it
            self.pool.stop(crash=e)
        try:
            if self.pool.interrupted and self.state == "up":
                self.cancel()
            self.comfy.close()
        finally:
            self.ended.set()

    def work(self) -> None:
        while not self.pool.over.is_set() and self.state != "dropped":
            try:
                if self.state == "down":
                    self.recover()
                    continue
                if self.comfy.ws is None:
                    self.comfy.connect()
                while len(self.inflight) < self.max_queued and (job := self.pool.take()):
                    self.submit(job)
                if self.inflight:
                    self.step()
                else:
                    self.pool.wait_for_work()
            except ServerDown as e:
                self.went_down(str(e))

    # -- a server that goes away and comes back -----------------------------------------------
    def went_down(self, reason: str, final: bool = False) -> None:
        """Hand our jobs back to the pool; rest, or drop the server (after max_failures in a row, or final)."""
        jobs = list(self.inflight.values())
        self.moved |= set(self.inflight)
        self.inflight.clear()
        self.comfy.close()
        with self.pool.lock:
            self.failures = self.max_failures if final else self.failures + 1
            self.reason = reason
            self.state = "dropped" if self.failures >= self.max_failures else "down"
            self.retry_at = time.monotonic() + RETRY_DOWN_S
            self.pool.requeue(jobs)
            if not any(w.state == "up" for w in self.pool.workers):
                self.pool.stop()  # the batch ends: Pool.run names every server and what to do
                return
        moved = f"; {len(jobs)} job(s) moved to the other servers" if jobs else ""
        if self.state == "dropped":
            after = "" if final else f" after {self.failures} failures in a row"
            log(f"[{self.comfy.url}] dropped{after} ({reason}){moved}")
        else:
            log(f"[{self.comfy.url}] down ({reason}){moved}; trying it again in {RETRY_DOWN_S:g}s "
                f"(failure {self.failures}/{self.max_failures})")

    def recover(self) -> None:
        """After the rest: check the server, reconnect, remove our prompts it may still hold."""
        if self.pool.over.wait(max(0.0, self.retry_at - time.monotonic())):
            return
        try:
            check_server(self.comfy, self.pool.recipe.wf)
        except UsageError as e:  # it came back without our nodes: no use retrying
            self.went_down(str(e), final=True)
            return
        self.comfy.connect()
        if self.moved:
            self.comfy.post("/queue", {"delete": sorted(self.moved)})
            for pid in self.moved:
                self.comfy.post("/interrupt", {"prompt_id": pid})
            self.moved.clear()
        self.uploaded.clear()  # a restarted server may have lost its input folder
        with self.pool.lock:
            self.state = "up"
            self.pool.lock.notify_all()
        log(f"[{self.comfy.url}] back: taking jobs again")

    # -- one job --------------------------------------------------------------------------------
    def upload(self, path: Path, name: str) -> str:
        if path not in self.uploaded:
            self.uploaded[path] = self.comfy.upload(path, name)
        return self.uploaded[path]

    def submit(self, job: Job) -> None:
        # Registered before the uploads and the POST, so a server going away hands it back, and a
        # Ctrl-C while it is on the wire still deletes it.
        job.prompt_id, job.status = str(uuid.uuid4()), "queued"
        self.inflight[job.prompt_id] = job
        res = self.comfy.queue_prompt(self.pool.recipe.prompt(job, self.upload), job.prompt_id)
        if res["status"] != 200:
            del self.inflight[job.prompt_id]
            job.prompt_id = None
            self.pool.finish(job, "error", error=describe_node_errors(res, self.pool.recipe.wf))
            return
        self.pool.save()

    def finish(self, job: Job, status: str, error: str | None = None, outputs=()) -> None:
        self.inflight.pop(job.prompt_id, None)
        if status == "done":
            self.failures = 0
        self.finished += 1
        self.pool.finish(job, status, error, outputs)

    def collect(self, job: Job) -> bool:
        """Finish the job from its history entry; False while the server has not stored it."""
        entry = self.comfy.history(job.prompt_id)
        if not entry:
            return False
        if entry.get("status", {}).get("status_str") != "success":
            self.finish(job, "error", error=describe_failure(entry))
            return True
        saved = []
        try:
            for node, ui in entry.get("outputs", {}).items():
                for items in ui.values():
                    for item in items if isinstance(items, list) else []:
                        if isinstance(item, dict) and "filename" in item and "type" in item:
                            saved.append(self.download(job, node, item))
        except ServerDown:  # the job runs again elsewhere, under that server's file names
            for name in saved:
                (self.pool.manifest.path.parent / name).unlink(missing_ok=True)
            raise
        self.finish(job, "done", outputs=saved)
        return True

    def download(self, job: Job, node: str, item: dict) -> str:
        r = self.comfy.get("/view", filename=item["filename"], subfolder=item.get("subfolder", ""),
                           type=item["type"])
        name = output_name(job, node, item["filename"])
        with atomic_path(str(self.pool.manifest.path.parent / name)) as tmp:
            Path(tmp).write_bytes(r.content)
        return name

    def step(self) -> None:
        """Read one websocket message and act on it; poll the queue and history when the socket is quiet."""
        msg = self.comfy.next_message()
        data = (msg or {}).get("data") or {}
        job = self.inflight.get(data.get("prompt_id"))
        bar = self.pool.bar
        if msg is None:
            queued = self.comfy.queued()  # asked first: a prompt leaves the queue once its history is stored
            for job in list(self.inflight.values()):
                if not self.collect(job) and job.prompt_id not in queued:
                    raise ServerDown(f"our prompt for {job.label} is neither queued nor done there: restarted?")
        elif job is None:
            return
        elif msg["type"] == "progress":
            bar.set_postfix_str(f"{job.label} step {data['value']}/{data['max']}")
        elif msg["type"] == "execution_start":
            bar.set_postfix_str(f"{job.label} started")
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
        try:
            if ours:
                self.comfy.post("/queue", {"delete": sorted(ours)})
                for pid in ours:  # the server interrupts only if this id is the running one
                    self.comfy.post("/interrupt", {"prompt_id": pid})
                deadline = time.monotonic() + CANCEL_WAIT_S
                while ours & self.comfy.queued() and time.monotonic() < deadline:
                    time.sleep(queue_client.POLL_S / 4)
            for job in list(self.inflight.values()):
                entry = self.comfy.history(job.prompt_id)
                if entry and entry.get("status", {}).get("status_str") == "success":
                    self.collect(job)
        except ServerDown:
            pass  # gone with our prompts: nothing left there to remove
        with self.pool.lock:
            for job in self.inflight.values():
                job.status, job.error = "cancelled", "cancelled by Ctrl-C"
            self.inflight.clear()
            self.pool.manifest.save()
