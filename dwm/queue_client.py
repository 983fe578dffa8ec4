"""The ComfyUI endpoints the batch queue uses, each call retried on transient failures.

One Comfy talks to one server. A call that still fails after --retries tries (connection refused,
timeout, 502/503/504, the websocket gone and not reconnectable) raises ServerDown, which the queue
takes to mean the server went away: its jobs move to another server (dwm.queue_servers).
"""
from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import requests
import websocket

from comfyui_dwm.queue_jobs import UsageError

UPLOAD_SUBFOLDER = "dwm_queue"
BACKOFF_S = 0.5  # first retry delay; doubles each try
BACKOFF_MAX_S = 8.0
POLL_S = 1.0  # websocket read timeout; on timeout the queued jobs' history is polled
TRANSIENT_HTTP = {502, 503, 504}


class ServerDown(Exception):
    """The server stayed unreachable through every retry."""


class _Transient(Exception):
    """A gateway-style HTTP answer worth retrying."""


TRANSIENT = (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError,
             _Transient, websocket.WebSocketException)


def _why(e: Exception) -> str:
    """The cause of a failed call in a few words: requests wraps it in pool and URL details."""
    if isinstance(e, (requests.Timeout, TimeoutError, websocket.WebSocketTimeoutException)):
        return "timed out"
    errno = re.search(r"\[Errno -?\d+\][^'\"()]*", str(e))
    return errno.group(0).strip() if errno else str(e) or type(e).__name__


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
                    raise ServerDown(f"{what} failed after {attempt + 1} tries ({_why(e)})") from None
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
            self.ws = None


def check_server(comfy: Comfy, wf: dict) -> None:
    """ServerDown when the server cannot be reached; UsageError when it lacks a node type the workflow uses."""
    try:
        info = comfy.get("/object_info").json()
    except (requests.RequestException, ValueError) as e:
        raise ServerDown(f"GET /object_info failed ({e})") from None
    missing = sorted({n["class_type"] for n in wf.values()} - set(info))
    if missing:
        raise UsageError(f"ComfyUI at {comfy.url} lacks node types {', '.join(missing)}: "
                         "install ComfyUI-DWM into custom_nodes and restart ComfyUI")
