"""A scripted stand-in of the Anthropic Messages API, on loopback.

The real `claude` CLI runs against it offline (ANTHROPIC_BASE_URL). It streams
SSE the way the real API does, and what it answers is scripted per prompt: the
first rule whose keyword appears in the conversation's first user prompt wins.

Behaviours:
  {"kind": "text", "text": "..."}                  answer with text
  {"kind": "bash", "command": "...", "text": "..."} call the Bash tool, then answer
  {"kind": "refuse", "times": N}                   stop_reason "refusal" (the first N
                                                   conversations only, if N is given)
  {"kind": "429"}                                  HTTP 429, unified status rejected
  {"kind": "401"}                                  HTTP 401 authentication_error (a bad key)
  {"kind": "500", "times": N}                      HTTP 500 api_error (the CLI retries)
  {"kind": "stall", "seconds": N, "text": "..."}   hold the stream open, then answer

Run it for a demo: python -m tests.messages_api --port 8765 [--script rules.json]
where rules.json is [["keyword", {behaviour}], ...].
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT = {"kind": "text", "text": "Done."}
# Error answers the real API gives: (HTTP status, error type, message).
API_ERRORS = {
    "401": (401, "authentication_error", "invalid x-api-key"),
    "500": (500, "api_error", "Internal server error"),
}
MODEL = "claude-sonnet-4-5-20250929"


def first_prompt(messages: list[dict[str, Any]]) -> str:
    """The first user message's text, skipping <system-reminder> blocks."""
    for message in messages:
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        for block in content or []:
            if isinstance(block, dict) and block.get("type") == "text":
                text = str(block.get("text", ""))
                if not text.lstrip().startswith("<system-reminder>"):
                    return text
        return ""
    return ""


def ends_with_tool_result(messages: list[dict[str, Any]]) -> bool:
    users = [m for m in messages if m.get("role") == "user"]
    if not users:
        return False
    content = users[-1].get("content")
    return isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in content
    )


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


class ScriptedApi:
    def __init__(self, rules: list[tuple[str, dict[str, Any]]] | None = None):
        self.rules: list[tuple[str, dict[str, Any]]] = list(rules or [])
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()  # ends every stall early when set
        self._used: dict[str, int] = {}  # how often a rule with "times" has applied
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ scripting

    def script(self, keyword: str, behaviour: dict[str, Any]) -> None:
        self.rules.append((keyword, behaviour))

    def behaviour_for(self, prompt: str, *, new_conversation: bool) -> dict[str, Any]:
        for keyword, behaviour in self.rules:
            if keyword not in prompt:
                continue
            times = behaviour.get("times")
            if times is not None:
                with self._lock:
                    used = self._used.get(keyword, 0)
                    if used >= times:
                        return DEFAULT
                    if new_conversation:
                        self._used[keyword] = used + 1
            return behaviour
        return DEFAULT

    # ------------------------------------------------------------------ serving

    def start(self, port: int = 0) -> ScriptedApi:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                api.requests.append({"path": self.path, "body": body})
                if self.path.startswith("/v1/messages/count_tokens"):
                    return self._json(200, {"input_tokens": 42})
                if not self.path.startswith("/v1/messages"):
                    return self._json(404, {"type": "error", "error": {"type": "not_found"}})
                api.answer(self, body)

            def do_GET(self):
                self._json(404, {"type": "error", "error": {"type": "not_found_error"}})

            def do_HEAD(self):
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _json(self, status: int, payload: dict, headers: dict | None = None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("request-id", f"req_{uuid.uuid4().hex[:20]}")
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # ------------------------------------------------------------------ answers

    def answer(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        messages = body.get("messages") or []
        main_request = bool(body.get("tools"))
        behaviour = self.behaviour_for(
            first_prompt(messages),
            new_conversation=main_request and not ends_with_tool_result(messages),
        )
        kind = behaviour["kind"]
        if kind == "429":
            reset = int(time.time()) + 3600
            handler._json(
                429,
                {
                    "type": "error",
                    "error": {
                        "type": "rate_limit_error",
                        "message": "This request would exceed your organization's rate limit.",
                    },
                },
                {
                    "anthropic-ratelimit-unified-status": "rejected",
                    "anthropic-ratelimit-unified-reset": str(reset),
                    "retry-after": "3600",
                    "x-should-retry": "false",
                },
            )
            return
        if kind in API_ERRORS:
            status, error_type, message = API_ERRORS[kind]
            handler._json(
                status,
                {"type": "error", "error": {"type": error_type, "message": message}},
                {"x-should-retry": "false"} if status == 401 else None,
            )
            return
        if not main_request:
            blocks: list[dict[str, Any]] = [{"type": "text", "text": "ok"}]
            stop_reason = "end_turn"
        elif kind == "refuse":
            blocks, stop_reason = [], "refusal"
        elif kind == "bash" and not ends_with_tool_result(messages):
            tool_input = {"command": behaviour["command"], "description": "scripted command"}
            blocks = [
                {
                    "type": "tool_use",
                    "id": f"toolu_{uuid.uuid4().hex[:24]}",
                    "name": "Bash",
                    "input": tool_input,
                }
            ]
            stop_reason = "tool_use"
        else:
            if kind == "stall":
                self.release.wait(float(behaviour.get("seconds", 30)))
            blocks = [{"type": "text", "text": behaviour.get("text", "Done.")}]
            stop_reason = "end_turn"
        if body.get("stream"):
            self._stream(handler, blocks, stop_reason)
        else:
            handler._json(200, self._message(blocks, stop_reason))

    def _message(self, blocks: list[dict[str, Any]], stop_reason: str) -> dict[str, Any]:
        return {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": MODEL,
            "content": blocks,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 1200,
                "output_tokens": 40,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        }

    def _stream(self, handler, blocks: list[dict[str, Any]], stop_reason: str) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Cache-Control", "no-cache")
        handler.send_header("Connection", "close")
        handler.send_header("request-id", f"req_{uuid.uuid4().hex[:20]}")
        handler.end_headers()
        message = self._message([], None)  # type: ignore[arg-type]
        message["usage"] = {
            "input_tokens": 1200,
            "output_tokens": 1,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
        parts = [sse("message_start", {"type": "message_start", "message": message})]
        for index, block in enumerate(blocks):
            if block["type"] == "text":
                start = {"type": "text", "text": ""}
                delta = {"type": "text_delta", "text": block["text"]}
            else:
                start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
                delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
            parts += [
                sse(
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": start},
                ),
                sse(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                ),
                sse("content_block_stop", {"type": "content_block_stop", "index": index}),
            ]
        parts += [
            sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                    "usage": {"output_tokens": 40},
                },
            ),
            sse("message_stop", {"type": "message_stop"}),
        ]
        try:
            for part in parts:
                handler.wfile.write(part)
                handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        handler.close_connection = True


def main() -> None:
    parser = argparse.ArgumentParser(description="Scripted Messages API stand-in (loopback).")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--script", help="JSON file: [[keyword, behaviour], ...]")
    args = parser.parse_args()
    rules = []
    if args.script:
        with open(args.script) as handle:
            rules = [(keyword, behaviour) for keyword, behaviour in json.load(handle)]
    api = ScriptedApi(rules).start(args.port)
    print(f"scripted Messages API on {api.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        api.stop()


if __name__ == "__main__":
    main()
