"""In-process stand-in for ComfyUI 0.8: the routes and websocket messages dwm.queue uses.

Shapes follow the real host (server.py /upload/image, /prompt, /queue, /interrupt, /history,
/view, /ws; execution.py messages and history entries), so the CLI's tests exercise the same
parsing it does against a real server. Stdlib only: http.server plus a minimal websocket.
"""
from __future__ import annotations

import base64
import email
import hashlib
import json
import socket
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CORE_TYPES = ["LoadVideo", "SaveVideo", "VHS_LoadVideo", "VHS_VideoCombine"]
DWM_TYPES = ["DWMTextEncode", "DWMSampler"]


def ws_frame(text: str) -> bytes:
    data = text.encode()
    n = len(data)
    if n < 126:
        head = bytes([0x81, n])
    elif n < 65536:
        head = bytes([0x81, 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x81, 127]) + n.to_bytes(8, "big")
    return head + data


class FakeComfy:
    """Knobs: node_types, fail(prompt)->error text, reject(prompt)->node_errors, hold (True, or
    hold(prompt)->bool: the running prompt waits for /interrupt), gate (an Event every prompt waits
    for), drop[path]=n (close n connections unanswered; drop_after: after handling them); kill() stops
    it as a killed process would. Records: prompts, deleted, interrupts, uploads, pending, history."""

    def __init__(self, node_types=CORE_TYPES + DWM_TYPES, port: int = 0):
        self.node_types = list(node_types)
        self.fail = lambda prompt: None
        self.reject = lambda prompt: None
        self.hold = False
        self.gate: threading.Event | None = None
        self.drop: dict[str, int] = {}
        self.drop_after: dict[str, int] = {}
        self.prompts, self.deleted, self.interrupts = [], [], []
        self.uploads: dict[str, bytes] = {}
        self.files: dict[tuple[str, str], bytes] = {}
        self.pending: list[tuple] = []
        self.running: tuple | None = None
        self.history: dict[str, dict] = {}
        self.sockets: dict[str, tuple] = {}
        self.cond = threading.Condition()
        self.stopped = False
        self.interrupted: set[str] = set()
        self.number = 0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        threading.Thread(target=self._worker, daemon=True).start()
        return self

    def __exit__(self, *exc):
        if not self.stopped:
            self.kill()

    def kill(self) -> None:
        """Gone: connections refused, websockets closed, nothing more run or answered."""
        with self.cond:
            self.stopped = True
            self.cond.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()
        for sock, _lock in list(self.sockets.values()):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def restarted(self) -> "FakeComfy":
        """Killed, then a new, started server on the same port: our queue and history are lost."""
        self.kill()
        return FakeComfy(self.node_types, port=self.httpd.server_address[1]).__enter__()

    # -- websocket side -------------------------------------------------------------------
    def send(self, event: str, data: dict, sid: str | None) -> None:
        frame = ws_frame(json.dumps({"type": event, "data": data}))
        targets = list(self.sockets.values()) if sid is None else [self.sockets.get(sid)]
        for sock, lock in filter(None, targets):
            try:
                with lock:
                    sock.sendall(frame)
            except OSError:
                pass

    # -- executor ---------------------------------------------------------------------------
    def _worker(self):
        while True:
            with self.cond:
                while not self.pending and not self.stopped:
                    self.cond.wait()
                if self.stopped:
                    return
                self.running = self.pending.pop(0)
            self._execute(*self.running)

    def _execute(self, number, pid, prompt, extra, outs):
        cid = extra["client_id"]
        self.send("execution_start", {"prompt_id": pid}, cid)
        self.send("execution_cached", {"nodes": [], "prompt_id": pid}, cid)
        messages = [["execution_start", {"prompt_id": pid}]]
        for nid, node in prompt.items():
            self.send("executing", {"node": nid, "display_node": nid, "prompt_id": pid}, cid)
            if node["class_type"] == "DWMSampler":
                for step in range(1, 4):
                    self.send("progress", {"value": step, "max": 3, "prompt_id": pid, "node": nid}, cid)
        held = self.hold(prompt) if callable(self.hold) else self.hold
        with self.cond:
            while held and pid not in self.interrupted and not self.stopped:
                self.cond.wait()
        while self.gate is not None and not self.gate.wait(0.05) and not self.stopped:
            pass
        if self.stopped:
            return
        error = self.fail(prompt)
        outputs = {}
        if pid in self.interrupted:
            msg = {"prompt_id": pid, "node_id": outs[0], "node_type": prompt[outs[0]]["class_type"],
                   "executed": []}
            self.send("execution_interrupted", msg, None)
            messages.append(["execution_interrupted", msg])
        elif error:
            nid = next(iter(prompt))
            msg = {"prompt_id": pid, "node_id": nid, "node_type": prompt[nid]["class_type"],
                   "executed": [], "exception_message": error, "exception_type": "RuntimeError",
                   "traceback": [], "current_inputs": {}, "current_outputs": []}
            self.send("execution_error", msg, cid)
            messages.append(["execution_error", msg])
        else:
            for nid in outs:
                outputs[nid] = self._save(pid, nid, prompt)
                self.send("executed", {"node": nid, "display_node": nid, "output": outputs[nid],
                                       "prompt_id": pid}, cid)
            self.send("execution_success", {"prompt_id": pid}, cid)
            messages.append(["execution_success", {"prompt_id": pid}])
        ok = not error and pid not in self.interrupted
        with self.cond:
            self.history[pid] = {
                "prompt": [number, pid, prompt, extra, outs], "outputs": outputs,
                "status": {"status_str": "success" if ok else "error", "completed": ok,
                           "messages": messages},
                "meta": {nid: {"node_id": nid, "display_node": nid, "parent_node": None,
                               "real_node_id": nid} for nid in outputs}}
            self.running = None
        self.send("status", {"status": {"exec_info": {"queue_remaining": len(self.pending)}}}, None)
        self.send("executing", {"node": None, "prompt_id": pid}, cid)

    def _save(self, pid, nid, prompt):
        """An output file whose bytes tell which inputs the job really got."""
        inputs = {n: node["inputs"] for n, node in prompt.items()}
        name = f"out_{pid[:8]}_{nid}.mp4"
        self.files[("dwm", name)] = json.dumps(inputs, sort_keys=True).encode()
        item = {"filename": name, "subfolder": "dwm", "type": "output"}
        if prompt[nid]["class_type"] == "VHS_VideoCombine":
            return {"gifs": [{**item, "format": "video/h264-mp4", "frame_rate": 8.0,
                              "workflow": name[:-4] + ".png", "fullpath": "/out/" + name}]}
        return {"images": [item], "animated": [True]}

    # -- HTTP routes ----------------------------------------------------------------------------
    def post_prompt(self, body):
        prompt = body["prompt"]
        node_errors = self.reject(prompt)
        if node_errors:
            return 400, {"error": {"type": "prompt_outputs_failed_validation",
                                   "message": "Prompt outputs failed validation", "details": "",
                                   "extra_info": {}}, "node_errors": node_errors}
        pid = str(body.get("prompt_id") or uuid.uuid4())
        outs = [n for n, node in prompt.items()
                if node["class_type"] in ("SaveVideo", "VHS_VideoCombine")]
        with self.cond:
            self.number += 1
            self.pending.append((self.number, pid, prompt, {"client_id": body.get("client_id")}, outs))
            self.prompts.append(pid)
            self.cond.notify_all()
        return 200, {"prompt_id": pid, "number": self.number, "node_errors": {}}

    def post_queue(self, body):
        with self.cond:
            for pid in body.get("delete", []):
                self.deleted.append(pid)
                self.pending = [p for p in self.pending if p[1] != pid]
        return 200, None

    def post_interrupt(self, body):
        with self.cond:
            pid = body.get("prompt_id")
            self.interrupts.append(pid)
            if self.running and (pid is None or self.running[1] == pid):
                self.interrupted.add(self.running[1])
                self.cond.notify_all()
        return 200, None

    def get_queue(self):
        with self.cond:
            return 200, {"queue_running": [list(self.running)] if self.running else [],
                         "queue_pending": [list(p) for p in self.pending]}


def _handler(fake: FakeComfy):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _reply(self, status, body=None, raw=None):
            data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if raw is None else "video/mp4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _dropped(self, table) -> bool:
            path = urlparse(self.path).path
            if table.get(path, 0) > 0:
                table[path] -= 1
                self.close_connection = True
                return True
            return False

        def do_GET(self):
            if self._dropped(fake.drop):
                return
            url = urlparse(self.path)
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            if url.path == "/ws":
                return self._websocket(q.get("clientId") or uuid.uuid4().hex)
            if url.path == "/object_info":
                return self._reply(200, {t: {"input": {"required": {}}, "name": t} for t in fake.node_types})
            if url.path == "/queue":
                return self._reply(*fake.get_queue())
            if url.path.startswith("/history/"):
                pid = url.path.rsplit("/", 1)[1]
                with fake.cond:
                    return self._reply(200, {pid: fake.history[pid]} if pid in fake.history else {})
            if url.path == "/view":
                data = fake.files.get((q.get("subfolder", ""), q.get("filename")))
                return self._reply(404) if data is None else self._reply(200, raw=data)
            self._reply(404)

        def do_POST(self):
            if self._dropped(fake.drop):
                return
            data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            path = urlparse(self.path).path
            if path == "/upload/image":
                status, body = self._upload(data)
            else:
                route = {"/prompt": fake.post_prompt, "/queue": fake.post_queue,
                         "/interrupt": fake.post_interrupt}.get(path)
                status, body = route(json.loads(data or b"{}")) if route else (404, None)
            if not self._dropped(fake.drop_after):
                self._reply(status, body)

        def _upload(self, data):
            msg = email.message_from_bytes(
                b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + data)
            fields, image = {}, None
            for part in msg.get_payload():
                name = part.get_param("name", header="content-disposition")
                if name == "image":
                    image = (part.get_filename(), part.get_payload(decode=True))
                else:
                    fields[name] = part.get_payload(decode=True).decode()
            if image is None or not image[0]:
                return 400, None
            sub = fields.get("subfolder", "")
            fake.uploads[f"{sub}/{image[0]}" if sub else image[0]] = image[1]
            return 200, {"name": image[0], "subfolder": sub, "type": fields.get("type", "input")}

        def _websocket(self, sid):
            key = self.headers["Sec-WebSocket-Key"]
            accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept", accept)
            self.end_headers()
            self.wfile.flush()
            sock, lock = self.connection, threading.Lock()
            fake.sockets[sid] = (sock, lock)
            fake.send("status", {"status": {"exec_info": {"queue_remaining": len(fake.pending)}},
                                 "sid": sid}, sid)
            try:
                while True:  # the client only ever sends a close frame: answer it and end
                    head = sock.recv(4096)
                    if not head or head[0] & 0x0F == 0x8:
                        with lock:
                            sock.sendall(b"\x88\x00")
                        break
            except OSError:
                pass
            finally:
                if fake.sockets.get(sid, (None,))[0] is sock:
                    del fake.sockets[sid]
                self.close_connection = True

    return Handler
