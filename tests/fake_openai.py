"""A loopback fake OpenAI-compatible server for fault tests: a small real HTTP server (``http.server`` in a thread)
on 127.0.0.1 and a free port, told per test how to answer.

    def test_x(fake_server):
        fake_server.reply("error", status=500, times=2)   # the next two requests get HTTP 500 ...
        fake_server.reply("ok", text="hi")                # ... every later one a normal completion
        gen = OpenAIGenerator(fake_server.base_url, "m", timeout=1, backoff=0.01)
        ...
        assert fake_server.count == 3

Modes (``reply(mode, times=None, **options)``; ``times=None`` sets what every request gets once the queued
replies are used up):

* ``ok`` -- a normal chat completion (``text``, or ``fn``: a function of the request's JSON body that returns the
  text; ``usage`` False to leave usage out);
* ``garbage`` -- HTTP 200 with a body that is not JSON (``body``, default an HTML page; ``ctype``, default
  ``text/html``);
* ``bad_utf8`` -- HTTP 200 with bytes that are not UTF-8;
* ``empty_choices`` -- ``{"choices": []}``; ``no_content`` -- a choice without a message;
* ``json`` -- HTTP ``status`` (default 200) with the JSON ``body`` given;
* ``error`` -- HTTP ``status`` (default 500) with an OpenAI-style error body (``message``);
* ``slow`` -- a normal completion after ``delay`` seconds;
* ``hang`` -- reads the request and never answers (until the server is closed).

``count`` is the number of chat-completion requests received; ``requests`` their JSON bodies; ``headers`` their
headers. ``GET /v1/models`` answers a model list (it is not counted) unless the mode is ``hang`` or ``error``.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

MODES = ("ok", "garbage", "bad_utf8", "empty_choices", "no_content", "json", "error", "slow", "hang")


def completion(text: str, model: str = "fake", usage: bool = True) -> dict:
    body = {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
    if usage:
        body["usage"] = {"prompt_tokens": 1, "completion_tokens": len(text.split()), "total_tokens": 1}
    return body


class FakeOpenAI:
    """The server; ``base_url`` ends in ``/v1`` as the OpenAI client expects."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[tuple[str, dict]] = []
        self._default: tuple[str, dict] = ("ok", {"text": "fake answer"})
        self._closed = threading.Event()
        self.count = 0
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                mode, opts = fake._peek()
                if mode == "hang":
                    fake._closed.wait(60)
                    return
                if mode == "error":
                    self._send(opts.get("status", 500), json.dumps({"error": {"message": "down"}}).encode())
                    return
                self._send(200, json.dumps({"object": "list", "data": [{"id": "fake", "object": "model"}]}).encode())

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    payload = json.loads(raw or b"{}")
                except ValueError:
                    payload = {"unparsed": raw.decode("utf-8", "replace")}
                mode, opts = fake._take(payload, dict(self.headers))
                fake._answer(self, mode, opts, payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-openai", daemon=True)
        self._thread.start()

    # -- telling it what to answer ---------------------------------------------------------------

    def reply(self, mode: str, times: int | None = None, **options) -> FakeOpenAI:
        """Answer the next ``times`` requests with ``mode`` (after the replies queued before), or every request
        once the queue is empty when ``times`` is None."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
        with self._lock:
            if times is None:
                self._default = (mode, options)
            else:
                self._queue += [(mode, options)] * times
        return self

    def _peek(self) -> tuple[str, dict]:
        with self._lock:
            return self._queue[0] if self._queue else self._default

    def _take(self, payload: dict, headers: dict) -> tuple[str, dict]:
        with self._lock:
            self.count += 1
            self.requests.append(payload)
            self.headers.append({k.lower(): v for k, v in headers.items()})
            return self._queue.pop(0) if self._queue else self._default

    def _answer(self, h, mode: str, opts: dict, payload: dict) -> None:
        model = str(payload.get("model", "fake"))
        if mode == "hang":
            self._closed.wait(60)  # never answers within any client timeout a test sets
            return
        if mode == "slow":
            time.sleep(float(opts.get("delay", 1.0)))
            mode = "ok"
        if mode == "ok":
            text = opts["fn"](payload) if "fn" in opts else opts.get("text", "fake answer")
            h._send(200, json.dumps(completion(text, model, opts.get("usage", True))).encode())
        elif mode == "garbage":
            h._send(200, opts.get("body", b"<html><body>502 Bad Gateway\x07</body></html>\n" * 20),
                    opts.get("ctype", "text/html"))
        elif mode == "bad_utf8":
            h._send(200, b'{"choices": [{"message": {"content": "caf\xe9 \xff\xfe"}}]}')
        elif mode == "empty_choices":
            h._send(200, json.dumps({"id": "x", "object": "chat.completion", "choices": []}).encode())
        elif mode == "no_content":
            h._send(200, json.dumps({"id": "x", "object": "chat.completion",
                                     "choices": [{"index": 0, "finish_reason": "stop"}]}).encode())
        elif mode == "json":
            h._send(opts.get("status", 200), json.dumps(opts.get("body", {})).encode())
        elif mode == "error":
            message = opts.get("message", "internal error")
            h._send(opts.get("status", 500), json.dumps({"error": {"message": message, "type": "server_error",
                                                                    "code": opts.get("status", 500)}}).encode())

    def close(self) -> None:
        self._closed.set()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def fake_server():
    """A fresh :class:`FakeOpenAI` per test, closed afterwards."""
    server = FakeOpenAI()
    try:
        yield server
    finally:
        server.close()
