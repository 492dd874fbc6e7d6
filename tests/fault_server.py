"""A tiny fault-injecting OpenAI-compatible chat completions server for judge tests (stdlib only).

It listens on 127.0.0.1 on an ephemeral port in a daemon thread. Each request takes the next mode from `script`
(then `default`), so a test can say "two 429s, then a correct verdict" and assert what the client counted.

Modes:
    correct / incorrect   200 with a reasoning line and `VERDICT: CORRECT` / `VERDICT: INCORRECT`
    grade                 200, CORRECT iff the quoted candidate equals the quoted reference (reads the prompt)
    garbage               200 with text that is not a verdict ("Score: 1 ... correct")
    echo                  200 whose content is the user message, unchanged
    hang                  sleeps `hang_s` before answering (longer than the client's timeout)
    429 / 429:N           HTTP 429 without / with `Retry-After: N`
    503:N, 500            HTTP 503 with Retry-After N, HTTP 500
    truncated             200 with a cut-off JSON body
    trickle               200 with a correct verdict, the body sent one byte every `trickle_s` (bounded: it stops
                          when the server stops or the client goes away)
    huge:N                200 with a VALID completion (`VERDICT: CORRECT`) padded with spaces to about N bytes,
                          streamed without Content-Length; `bytes_sent` records how much went out
    huge-declared:N       the same with Content-Length: N declared up front
    logprobs:P            200 with a verdict line and `logprobs` whose top_logprobs at the verdict token give
                          P(CORRECT) = P (the verdict word is CORRECT when P >= 0.5)
    word:TEXT             200 whose content is TEXT (e.g. a bare verdict word), without logprobs

    with FaultServer(script=["429:1", "correct"]) as server:
        ... OpenAIJudgeConfig(base_url=server.base_url, ...)
        server.modes_served  # ["429:1", "correct"]

`closed_port()` returns a port with nothing listening (connection refused).
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections import deque
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def closed_port() -> int:
    """A local port nobody listens on (bind, read the number, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _quoted(prompt: str, label: str) -> str | None:
    match = re.search(rf"^BEGIN {label}\n((?:\| .*\n?)*)END {label}$", prompt, re.MULTILINE)
    if match is None:
        return None
    return "\n".join(line[2:] for line in match.group(1).rstrip("\n").split("\n"))


def _completion(content: str, logprobs: dict[str, Any] | None = None) -> bytes:
    choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
    if logprobs is not None:
        choice["logprobs"] = logprobs
    body = {"id": "chatcmpl-test", "object": "chat.completion", "model": "fault-server", "choices": [choice]}
    return json.dumps(body).encode()


def _logprobs_completion(p_correct: float) -> bytes:
    """A verdict line whose verdict token carries top_logprobs with P(CORRECT) = p_correct."""
    import math

    word = "CORRECT" if p_correct >= 0.5 else "INCORRECT"
    tokens = ["Looks", " fine", ".\n", "VER", "DICT", ":", f" {word}"]
    top = [{"token": " CORRECT", "logprob": math.log(p_correct)},
           {"token": " IN", "logprob": math.log(1 - p_correct)}]
    content = [{"token": t, "logprob": -0.1, "top_logprobs": top if i == 6 else []} for i, t in enumerate(tokens)]
    return _completion("".join(tokens), {"content": content})


class FaultServer:
    """Context manager running the server; records modes served and request headers/bodies."""

    def __init__(self, script: Iterable[str] = (), default: str = "correct", hang_s: float = 3.0,
                 trickle_s: float = 0.2) -> None:
        self.script: deque[str] = deque(script)
        self.default, self.hang_s, self.trickle_s = default, hang_s, trickle_s
        self.bytes_sent = 0
        self.modes_served: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def _next_mode(self) -> str:
        with self._lock:
            mode = self.script.popleft() if self.script else self.default
            self.modes_served.append(mode)
            return mode

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def _trickle(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.flush()
                for i in range(len(body)):
                    if server._stop.wait(server.trickle_s):
                        return
                    try:
                        self.wfile.write(body[i : i + 1])
                        self.wfile.flush()
                    except OSError:  # the client hung up (deadline passed): stop
                        return
                    with server._lock:
                        server.bytes_sent += 1

            def _huge(self, size: int, declared: bool) -> None:
                head, tail = _completion("PAD").split(b"PAD")
                pad = size - len(head) - len(tail) - len("\\nVERDICT: CORRECT")
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if declared:
                    self.send_header("Content-Length", str(len(head) + max(0, pad) + len(tail) + 18))
                self.send_header("Connection", "close")
                self.end_headers()
                chunk = b" " * 65536
                try:
                    self.wfile.write(head)
                    left = max(0, pad)
                    while left > 0 and not server._stop.is_set():
                        part = chunk[: min(left, len(chunk))]
                        self.wfile.write(part)
                        left -= len(part)
                        with server._lock:
                            server.bytes_sent += len(part)
                    self.wfile.write(b"\\nVERDICT: CORRECT" + tail)
                    self.wfile.flush()
                except OSError:  # the client stopped reading and closed: expected
                    return

            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                length = int(self.headers.get("Content-Length", 0))
                payload = json.loads(self.rfile.read(length) or b"{}")
                with server._lock:
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "body": payload})
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self._respond(payload)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _respond(self, payload: dict[str, Any]) -> None:
                mode = server._next_mode()
                user = next((m["content"] for m in payload.get("messages", []) if m.get("role") == "user"), "")
                if mode == "hang":
                    server._stop.wait(server.hang_s)
                    mode = "correct"
                name, _, arg = mode.partition(":")
                if name in ("429", "503", "500"):
                    headers = {"Retry-After": arg} if arg else {}
                    self._send(int(name), b'{"error": {"message": "injected"}}', headers)
                elif name == "trickle":
                    self._trickle(_completion("Looks correct.\nVERDICT: CORRECT"))
                elif name in ("huge", "huge-declared"):
                    self._huge(int(arg or 50_000_000), declared=name == "huge-declared")
                elif name == "truncated":
                    self._send(200, _completion("fine\nVERDICT: CORRECT")[:40])
                elif name == "garbage":
                    self._send(200, _completion("Score: 1\nThe answer is correct, 1"))
                elif name == "echo":
                    self._send(200, _completion(user))
                elif name == "grade":
                    same = _quoted(user, "CANDIDATE ANSWER") == _quoted(user, "REFERENCE ANSWER")
                    self._send(200, _completion(f"Compared.\nVERDICT: {'CORRECT' if same else 'INCORRECT'}"))
                elif name == "logprobs":
                    self._send(200, _logprobs_completion(float(arg)))
                elif name == "word":
                    self._send(200, _completion(arg))
                elif name in ("correct", "incorrect"):
                    self._send(200, _completion(f"Looks {name}.\nVERDICT: {name.upper()}"))
                else:
                    self._send(400, b'{"error": {"message": "unknown test mode"}}')

        return Handler

    def __enter__(self) -> FaultServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
