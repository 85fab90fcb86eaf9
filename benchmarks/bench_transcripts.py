"""Transcript parser throughput (MB/s) on a generated, realistic transcript.

    .venv/bin/python benchmarks/bench_transcripts.py [--mb 50]

The transcript mixes what the real CLI writes: prompts, streamed assistant lines
(one per content block, repeating usage), tool calls and results of varied size.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sessions_app.transcripts.parse import iter_records, summarize_file, to_entries
from sessions_app.transcripts.tail import read_tail


def generate(path: Path, megabytes: int) -> None:
    rng = random.Random(7)
    usage = {"input_tokens": 1200, "output_tokens": 300, "cache_read_input_tokens": 40_000}
    target = megabytes * 1024 * 1024
    turn = 0
    with path.open("w") as handle:
        while handle.tell() < target:
            turn += 1
            base = {
                "sessionId": "s",
                "cwd": "/srv/app",
                "version": "2.1.197",
                "timestamp": "2026-11-24T02:00:00.000Z",
                "isSidechain": False,
            }
            handle.write(
                json.dumps(
                    {
                        **base,
                        "type": "user",
                        "uuid": f"u{turn}",
                        "message": {"role": "user", "content": "next step"},
                    }
                )
                + "\n"
            )
            message = {
                "id": f"msg_{turn}",
                "role": "assistant",
                "model": "claude-sonnet-4-5",
                "usage": usage,
            }
            blocks = [
                {"type": "thinking", "thinking": "considering " * rng.randint(10, 200)},
                {"type": "text", "text": "I will run the tests. " * rng.randint(1, 30)},
                {
                    "type": "tool_use",
                    "id": f"toolu_{turn}",
                    "name": "Bash",
                    "input": {"command": "pytest -q tests/", "description": "run tests"},
                },
            ]
            for index, block in enumerate(blocks):
                handle.write(
                    json.dumps(
                        {
                            **base,
                            "type": "assistant",
                            "uuid": f"a{turn}-{index}",
                            "requestId": f"req_{turn}",
                            "message": {**message, "content": [block]},
                        }
                    )
                    + "\n"
                )
            output = "PASSED test_x\n" * rng.randint(5, 2000)
            handle.write(
                json.dumps(
                    {
                        **base,
                        "type": "user",
                        "uuid": f"r{turn}",
                        "message": {
                            "role": "user",
                            "content": [
                                {
                                    "type": "tool_result",
                                    "tool_use_id": f"toolu_{turn}",
                                    "content": output,
                                }
                            ],
                        },
                    }
                )
                + "\n"
            )


def rate(path: Path, fn, repeat: int = 3) -> float:
    size_mb = path.stat().st_size / 1e6
    samples = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - began)
    return round(size_mb / statistics.median(samples), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "transcript.jsonl"
        generate(path, args.mb)
        data = path.read_bytes()
        lines = data.count(b"\n")
        print(f"transcript: {len(data) / 1e6:.1f} MB, {lines} lines\n")
        print("| operation | throughput (MB/s) |")
        print("|---|---:|")
        print(
            f"| summarize_file (tokens, deduplicated; streamed in 4 MB chunks) | "
            f"{rate(path, lambda: summarize_file(path))} |"
        )
        print(
            f"| iter_records (parse every line) | "
            f"{rate(path, lambda: sum(1 for _ in iter_records(data)))} |"
        )
        print(
            f"| to_entries (display entries for the whole file) | "
            f"{rate(path, lambda: to_entries(iter_records(data)))} |"
        )
        samples = []
        for _ in range(20):
            began = time.perf_counter()
            chunk = read_tail(path, 200_000)
            to_entries(iter_records(chunk.data, chunk.start))
            samples.append(time.perf_counter() - began)
        print(
            f"\nsession page cost (tail 200 KB + entries): "
            f"{statistics.median(samples) * 1000:.1f} ms"
        )


if __name__ == "__main__":
    main()
