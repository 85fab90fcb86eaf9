"""A stand-in for the `claude` CLI, for tests that need many runs fast.

It behaves like the real one where the product depends on it: honours
--session-id (and refuses one whose transcript exists), appends a transcript at
$CLAUDE_CONFIG_DIR/projects/<encoded cwd>/<id>.jsonl, prints json /
stream-json / text per --output-format, and ends like the real CLI does.

Knobs (environment):
  FAKE_CLAUDE_BEHAVIOUR  comma list, one per invocation (the last repeats):
                           succeed | refuse | 429 | limit:<epoch> | exit:<n> |
                           sleep:<seconds> | spawn:<seconds> | tree:<seconds> |
                           mention-limit
                         `spawn` starts a child and a grandchild (`sleep`) and waits;
                         `tree` adds a grandchild that ignores SIGTERM and a shell
                         that starts a new child when it gets SIGTERM.
  FAKE_CLAUDE_STATE      a directory: `calls` gets one line per invocation
                         (session id), so tests can prove claude did (not) start.
  FAKE_CLAUDE_IGNORE_TERM=1  ignore SIGTERM (a stubborn agent).
  FAKE_CLAUDE_COST       total_cost_usd of a success (default 0.0123).
  FAKE_CLAUDE_WRITE      a path (relative to the cwd): a success writes it first, as an
                         agent's Write tool would (output checks).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path


def encoded(cwd: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]", "-", cwd)[:200]


def arg_value(args: list[str], name: str, default: str | None = None) -> str | None:
    if name in args:
        index = args.index(name)
        if index + 1 < len(args):
            return args[index + 1]
    return default


def behaviour_for_this_call(state: Path | None) -> str:
    plan = (os.environ.get("FAKE_CLAUDE_BEHAVIOUR") or "succeed").split(",")
    calls = 0
    if state is not None:
        calls_file = state / "calls"
        if calls_file.exists():
            calls = len(calls_file.read_text().splitlines())
    return plan[min(calls, len(plan) - 1)].strip()


class Transcript:
    def __init__(self, path: Path, session_id: str, cwd: str):
        self.path = path
        self.session_id = session_id
        self.cwd = cwd
        self.parent: str | None = None

    def append(self, record: dict) -> None:
        record_uuid = str(uuid.uuid4())
        record.update(
            sessionId=self.session_id,
            uuid=record_uuid,
            parentUuid=self.parent,
            timestamp=time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            cwd=self.cwd,
            version="2.1.197-fake",
            isSidechain=False,
        )
        self.parent = record_uuid
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def assistant(self, content: list, message_id: str, usage: dict) -> None:
        for block in content:  # the real CLI writes one line per content block
            self.append(
                {
                    "type": "assistant",
                    "requestId": f"req_{message_id}",
                    "message": {
                        "id": message_id,
                        "role": "assistant",
                        "model": "claude-sonnet-4-5",
                        "content": [block],
                        "usage": usage,
                    },
                }
            )


def main() -> int:
    args = sys.argv[1:]
    session_id = arg_value(args, "--session-id") or str(uuid.uuid4())
    prompt = arg_value(args, "-p", "") or ""
    output_format = arg_value(args, "--output-format", "text")
    state = Path(os.environ["FAKE_CLAUDE_STATE"]) if os.environ.get("FAKE_CLAUDE_STATE") else None
    behaviour = behaviour_for_this_call(state)
    if state is not None:
        with (state / "calls").open("a") as handle:
            handle.write(session_id + "\n")
    if os.environ.get("FAKE_CLAUDE_IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    config_dir = Path(os.environ.get("CLAUDE_CONFIG_DIR") or Path.home() / ".claude")
    cwd = os.getcwd()
    path = config_dir / "projects" / encoded(cwd) / f"{session_id}.jsonl"
    if path.exists():
        print(f"Error: Session ID {session_id} is already in use.", file=sys.stderr)
        return 1
    path.parent.mkdir(parents=True, exist_ok=True)
    transcript = Transcript(path, session_id, cwd)

    def emit(event: dict) -> None:
        if output_format == "stream-json":
            print(json.dumps(event), flush=True)

    emit(
        {
            "type": "system",
            "subtype": "init",
            "session_id": session_id,
            "cwd": cwd,
            "model": "claude-sonnet-4-5",
            "tools": ["Bash"],
            "claude_code_version": "fake",
        }
    )
    transcript.append({"type": "queue-operation", "operation": "enqueue", "content": prompt})
    transcript.append({"type": "user", "message": {"role": "user", "content": prompt}})
    usage = {
        "input_tokens": 120,
        "output_tokens": 30,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    }

    def finish(
        result_text: str,
        *,
        is_error: bool = False,
        stop_reason: str = "end_turn",
        api_error_status: int | None = None,
        cost: float | None = None,
        code: int = 0,
    ) -> int:
        result = {
            "type": "result",
            "subtype": "success",
            "is_error": is_error,
            "duration_ms": 1234,
            "num_turns": 2,
            "result": result_text,
            "stop_reason": stop_reason,
            "session_id": session_id,
            "total_cost_usd": cost if cost is not None else 0,
            "usage": usage,
            "modelUsage": {"claude-sonnet-4-5": {"inputTokens": 120}},
        }
        if api_error_status is not None:
            result["api_error_status"] = api_error_status
        if output_format == "stream-json":
            emit(result)
        elif output_format == "json":
            print(json.dumps(result), flush=True)
        else:
            print(result_text, flush=True)
        return code

    kind, _, value = behaviour.partition(":")
    if kind == "tree":
        for script in (
            "sleep 300 & wait",
            "trap '' TERM; sleep 300 & wait",  # ignored signals are inherited: stubborn
            "trap 'sleep 300 & wait' TERM; sleep 300 & wait",  # a child born after TERM
        ):
            subprocess.Popen(["bash", "-c", script])
        kind = "sleep"
    if kind in ("sleep", "spawn"):
        command = "sleep 300 & wait" if kind == "spawn" else f"sleep {value}"
        block = {
            "type": "tool_use",
            "id": "toolu_fake1",
            "name": "Bash",
            "input": {"command": command, "description": "stand-in work"},
        }
        transcript.assistant([block], "msg_fake_tool", usage)
        emit(
            {
                "type": "assistant",
                "session_id": session_id,
                "message": {"id": "msg_fake_tool", "content": [block]},
            }
        )
        if kind == "spawn":
            subprocess.Popen(["bash", "-c", "sleep 300 & wait"])
        time.sleep(float(value or 30))
    if kind == "refuse":
        emit({"type": "system", "subtype": "model_refusal_no_fallback", "session_id": session_id})
        text = (
            "API Error: Claude Code is unable to respond to this request, which appears "
            "to violate our Usage Policy (https://www.anthropic.com/legal/aup)."
        )
        transcript.assistant([{"type": "text", "text": text}], "msg_refusal", usage)
        return finish(text, is_error=True, stop_reason="refusal", code=1)
    if kind == "429":
        text = "API Error: Request rejected (429) · usage limit for your organization"
        return finish(text, is_error=True, api_error_status=429, cost=0, code=1)
    if kind == "limit":
        return finish(f"Claude AI usage limit reached|{value}", is_error=True, code=1)
    if kind == "exit":
        print("fake claude: exiting as told", file=sys.stderr)
        return int(value)
    answer = "All done."
    if kind == "mention-limit":
        tool = {
            "type": "tool_use",
            "id": "toolu_web",
            "name": "WebFetch",
            "input": {"url": "https://example.com/pricing"},
        }
        transcript.assistant([tool], "msg_web", usage)
        page = "Plans: when you reach your monthly usage limit, usage limit reached|1999999999"
        emit(
            {
                "type": "user",
                "message": {
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_web", "content": page}
                    ]
                },
            }
        )
        answer = (
            "Summary: the page says Request rejected (429) happens past the monthly usage limit."
        )
    written = os.environ.get("FAKE_CLAUDE_WRITE")
    if written:
        target = Path(written)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"written by {session_id}\n")
    transcript.assistant([{"type": "text", "text": answer}], "msg_answer", usage)
    emit(
        {
            "type": "assistant",
            "session_id": session_id,
            "message": {"id": "msg_answer", "content": [{"type": "text", "text": answer}]},
        }
    )
    cost = float(os.environ.get("FAKE_CLAUDE_COST", "0.0123"))
    return finish(answer, cost=cost)


if __name__ == "__main__":
    sys.exit(main())
