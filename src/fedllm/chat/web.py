"""`fedllm ui RUN`: a small local web page to chat with a run (and, beside it, its base model).

The standard library's threading HTTP server on a loopback address by default: GET / is the page
(no external resources), GET /api/info describes the model, POST /api/chat streams one reply as
chunked plain text. One model serves every request, one generation at a time.
"""

from __future__ import annotations

import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fedllm.chat.model import ChatModel
from fedllm.data.schema import DataError, Message
from fedllm.eval.generation import Decoding

MAX_BODY = 1 << 20  # bytes of a request: a conversation, not an upload

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>fedllm chat</title>
<style>
body{font-family:system-ui,sans-serif;margin:0;display:flex;flex-direction:column;height:100vh;color:#222}
header{padding:.6rem 1rem;border-bottom:1px solid #ddd;font-size:.9rem}header b{font-size:1rem}
#log{flex:1;overflow:auto;padding:1rem}
.turn{display:flex;gap:1rem;margin:.5rem 0}.msg{flex:1;white-space:pre-wrap;padding:.5rem .7rem;border-radius:.4rem}
.user{background:#eef3ff}.run{background:#f3f3f3}.base{background:#fff7e6}
.who{font-size:.75rem;color:#666;margin-bottom:.2rem}
form{display:flex;gap:.5rem;padding:.6rem 1rem;border-top:1px solid #ddd;align-items:center}
textarea{flex:1;height:3rem;font:inherit}label{font-size:.85rem}
</style></head><body>
<header><b id="title">fedllm chat</b> <span id="about"></span></header>
<div id="log"></div>
<form id="form"><textarea id="input" placeholder="Message (Enter sends, Shift+Enter: new line)"></textarea>
<label><input type="checkbox" id="compare"> base model beside it</label>
<button id="send" type="submit">Send</button> <button id="reset" type="button">Reset</button></form>
<script>
"use strict";
const log = document.getElementById("log"), input = document.getElementById("input");
const send = document.getElementById("send"), compare = document.getElementById("compare");
let history = [];
function bubble(row, kind, label) {
  const box = document.createElement("div"); box.className = "msg " + kind;
  const who = document.createElement("div"); who.className = "who"; who.textContent = label;
  const text = document.createElement("div"); text.className = "text";
  box.append(who, text); row.append(box); return text;
}
async function stream(messages, adapter, target) {
  const r = await fetch("/api/chat", {method: "POST", headers: {"Content-Type": "application/json"},
                                      body: JSON.stringify({messages, adapter})});
  if (!r.ok) { target.textContent = "error: " + await r.text(); return ""; }
  const reader = r.body.getReader(), dec = new TextDecoder();
  let all = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    all += dec.decode(value, {stream: true}); target.textContent = all; log.scrollTop = log.scrollHeight;
  }
  return all;
}
document.getElementById("form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = input.value.trim(); if (!text || send.disabled) return;
  input.value = ""; send.disabled = true;
  history.push({role: "user", content: text});
  const u = document.createElement("div"); u.className = "turn"; log.append(u); bubble(u, "user", "you").textContent = text;
  const row = document.createElement("div"); row.className = "turn"; log.append(row);
  const mine = bubble(row, "run", window.runLabel || "run");
  const other = compare.checked && window.hasAdapter ? bubble(row, "base", "base model") : null;
  const reply = await stream(history, true, mine);
  if (other) await stream(history, false, other);
  history.push({role: "assistant", content: reply});
  send.disabled = false; input.focus();
});
input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); document.getElementById("form").requestSubmit(); }
});
document.getElementById("reset").addEventListener("click", () => { history = []; log.textContent = ""; });
fetch("/api/info").then((r) => r.json()).then((info) => {
  window.runLabel = info.label; window.hasAdapter = info.adapter;
  document.getElementById("title").textContent = info.label;
  document.getElementById("about").textContent = info.model + " · template " + info.template +
    (info.client ? " · client " + info.client + "'s personal adapter" : "") +
    (info.adapter ? "" : " · no adapter (the base model)");
  if (!info.adapter) compare.disabled = true;
});
</script></body></html>
"""


def _messages(raw: Any) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise DataError("messages: a non-empty list of {role, content}")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or set(m) - {"role", "content"}:
            raise DataError(f"messages[{i}]: expected {{role, content}}")
        out.append(Message(str(m.get("role")), m.get("content")))
    if out[-1].role != "user":
        raise DataError("the last message must be the user's")
    return out


class ChatServer(ThreadingHTTPServer):
    """Serves the page and the model; ``decoding`` bounds every reply."""

    daemon_threads = True

    def __init__(self, model: ChatModel, decoding: Decoding, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__((host, port), _Handler)
        self.model, self.decoding = model, decoding
        self.generating = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


class _Handler(BaseHTTPRequestHandler):
    server: ChatServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet: the terminal is the user's
        pass

    def _send(self, status: int, body: str, kind: str = "text/plain; charset=utf-8") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/favicon.ico":
            self.send_response(HTTPStatus.NO_CONTENT)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, PAGE, "text/html; charset=utf-8")
        elif self.path == "/api/info":
            m = self.server.model
            info = {"label": m.target.label, "model": m.target.cfg.model.name, "template": m.target.cfg.data.template,
                    "adapter": m.has_adapter, "client": m.client}
            self._send(HTTPStatus.OK, json.dumps(info), "application/json")
        else:
            self._send(HTTPStatus.NOT_FOUND, "not found")

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/api/chat":
            self._send(HTTPStatus.NOT_FOUND, "not found")
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            if not 0 < length <= MAX_BODY:
                raise DataError(f"a request body of 1 byte to {MAX_BODY} bytes is expected")
            body = json.loads(self.rfile.read(length))
            messages = _messages(body.get("messages") if isinstance(body, dict) else None)
            adapter = bool(body.get("adapter", True))
        except (ValueError, DataError) as e:
            self._send(HTTPStatus.BAD_REQUEST, f"bad request: {e}")
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        with self.server.generating:
            try:
                for piece in self.server.model.reply(messages, self.server.decoding, adapter=adapter):
                    data = piece.encode()
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):  # the page went away mid-reply
                return
        self.wfile.write(b"0\r\n\r\n")
