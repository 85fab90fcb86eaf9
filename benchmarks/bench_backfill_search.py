"""Backfill throughput on a generated ~/.claude, and transcript search latency.

    .venv/bin/python benchmarks/bench_backfill_search.py --files 5000 --mb 5500 --lines 1000000

1. Generates a Claude config dir of `--files` transcript files (main sessions in the
   2.1.x layout with `<id>/subagents/agent-*.jsonl`, 2.0.x sessions with
   `agent-<id>.jsonl` beside them, a few phantom files) summing to about `--mb` MB,
   with a heavy tail (one file of a tenth of the total), as a real ~/.claude looks.
2. Runs `backfill` (price, archive, index for search) in a child process on SQLite,
   and reports MB/s, files/s and the child's peak RSS.
3. Fills the search index to `--lines` lines (the backfilled ones plus generated
   rows) and times queries of common, rare and absent words.

Everything runs under a temporary directory, removed at the end. Loopback only.
`--database-url postgres://...` runs it on an empty PostgreSQL database instead.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WORDS = [
    "build",
    "test",
    "deploy",
    "cache",
    "token",
    "agent",
    "session",
    "transcript",
    "refactor",
    "module",
    "parser",
    "index",
    "query",
    "latency",
    "memory",
    "archive",
    "schedule",
    "cron",
    "timer",
    "retry",
    "quota",
    "refusal",
    "compaction",
    "summary",
    "subagent",
    "needle",
    "haystack",
    "python",
    "django",
    "sqlite",
    "postgres",
]


def _line(record: dict) -> str:
    return json.dumps(record, separators=(",", ":")) + "\n"


def _session_lines(rng: random.Random, session_id: str, target: int, agent: str | None):
    """Lines of one transcript of about `target` bytes, in the CLI's shapes."""
    written = 0
    turn = 0
    base = {
        "isSidechain": agent is not None,
        "userType": "external",
        "cwd": "/srv/agents/bench",
        "sessionId": session_id,
        "version": "2.1.39" if agent is None or not agent.startswith("2.0") else "2.0.76",
        "gitBranch": "main",
    }
    if agent:
        base["agentId"] = agent
    while written < target:
        turn += 1
        stamp = (
            f"2026-02-12T{10 + turn // 3600 % 10:02d}:{turn // 60 % 60:02d}:{turn % 60:02d}.000Z"
        )
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40)))
        lines = [
            _line(
                {
                    **base,
                    "type": "user",
                    "uuid": f"u{turn}-{session_id[:8]}",
                    "timestamp": stamp,
                    "message": {"role": "user", "content": f"step {turn}: {words}"},
                }
            )
        ]
        usage = {
            "input_tokens": rng.randint(1, 50),
            "cache_creation_input_tokens": 1200,
            "cache_read_input_tokens": rng.randint(10_000, 150_000),
            "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 200},
            "output_tokens": rng.randint(50, 2000),
        }
        message_id = f"msg_{uuid.uuid4().hex[:24]}"
        for block in (
            {"type": "thinking", "thinking": words * rng.randint(1, 6), "signature": "x"},
            {"type": "text", "text": f"Now: {words}"},
            {
                "type": "tool_use",
                "id": f"toolu_{turn}",
                "name": "Bash",
                "input": {"command": f"grep -rn {rng.choice(WORDS)} src/"},
            },
        ):
            lines.append(
                _line(
                    {
                        **base,
                        "type": "assistant",
                        "uuid": f"a{turn}-{block['type']}-{session_id[:8]}",
                        "timestamp": stamp,
                        "requestId": f"req_{message_id[4:]}",
                        "message": {
                            "model": "claude-sonnet-4-5-20250929",
                            "id": message_id,
                            "role": "assistant",
                            "content": [block],
                            "usage": usage,
                        },
                    }
                )
            )
        lines.append(
            _line(
                {
                    **base,
                    "type": "user",
                    "uuid": f"r{turn}-{session_id[:8]}",
                    "timestamp": stamp,
                    "message": {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": f"toolu_{turn}",
                                "content": (words + "\n") * rng.randint(1, 60),
                            }
                        ],
                    },
                }
            )
        )
        lines.append(
            _line({"type": "progress", "data": {"type": "hook_progress"}, "timestamp": stamp})
        )
        chunk = "".join(lines)
        written += len(chunk)
        yield chunk


def generate_home(config_dir: Path, files: int, megabytes: int, seed: int = 7) -> tuple[int, int]:
    """A ~/.claude of `files` transcript files, about `megabytes` MB. Returns (files, bytes)."""
    rng = random.Random(seed)
    total_target = megabytes * 1024 * 1024
    big = total_target // 10  # one file holds a tenth: the heavy tail
    per_file = max(2000, (total_target - big) // files)
    made = 0
    size = 0
    project = 0
    while made < files:
        project += 1
        folder = config_dir / "projects" / f"-srv-agents-bench-{project}"
        folder.mkdir(parents=True, exist_ok=True)
        for _ in range(50):
            if made >= files:
                break
            session_id = str(uuid.uuid4())
            main = folder / f"{session_id}.jsonl"
            target = big if made == 0 else int(per_file * rng.uniform(0.3, 1.7))
            layout = rng.random()
            with main.open("w") as handle:
                for chunk in _session_lines(rng, session_id, target, None):
                    handle.write(chunk)
            made += 1
            size += main.stat().st_size
            agents = rng.randint(0, 2) if made > 1 else 0
            for index in range(min(agents, files - made)):
                if layout < 0.3:  # 2.0.x: beside the main file, tied by sessionId
                    path = folder / f"agent-{uuid.uuid4().hex[:8]}.jsonl"
                    agent = f"2.0-{index}"
                else:
                    path = folder / session_id / "subagents" / f"agent-a{index}{made}.jsonl"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    agent = f"a{index}{made}"
                with path.open("w") as handle:
                    for chunk in _session_lines(rng, session_id, target // 3, agent):
                        handle.write(chunk)
                made += 1
                size += path.stat().st_size
            if made < files and rng.random() < 0.02:  # a phantom: only snapshots
                phantom = folder / f"{uuid.uuid4()}.jsonl"
                phantom.write_text(_line({"type": "file-history-snapshot", "snapshot": {}}))
                made += 1
                size += phantom.stat().st_size
    return made, size


def _env(root: Path, database_url: str = "") -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OPSCONSOLE_HOME=str(root / "home"),
        OPSCONSOLE_ACTIVE_DIR=str(root / "home" / "active"),
        OPSCONSOLE_CLAUDE_CONFIG_DIRS=str(root / "claude"),
        CLAUDE_CONFIG_DIR=str(root / "claude"),
        DJANGO_SETTINGS_MODULE="opsconsole.settings",
        PYTHONPATH=str(REPO),
    )
    env.pop("DATABASE_URL", None)
    if database_url:
        env["DATABASE_URL"] = database_url
    return env


def child_backfill() -> None:
    """Runs in the child: backfill everything, print seconds and peak RSS as JSON."""
    import django

    django.setup()
    from django.conf import settings

    from sessions_app.backfill import backfill

    started = time.perf_counter()
    result = backfill(settings.OPSCONSOLE_STATE, list(settings.OPSCONSOLE_CLAUDE_CONFIG_DIRS))
    seconds = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss_mb": peak_kb / 1024,
                "imported": result.imported,
                "phantoms": result.phantoms,
                "failed": len(result.failed or []),
            }
        )
    )


def child_search(lines: int) -> None:
    """Runs in the child: pad the index to `lines`, then time queries."""
    import django

    django.setup()
    from django.db import connection

    from sessions_app import search

    have = search.indexed_lines()
    rng = random.Random(11)
    started = time.perf_counter()
    with connection.cursor() as cursor:
        batch = []
        for index in range(max(0, lines - have)):
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 60)))
            batch.append(
                (str(uuid.UUID(int=index % 20000 + 1)), "", index * 500, "tool_result", words)
            )
            if len(batch) == 5000:
                cursor.executemany(
                    f"INSERT INTO {search.TABLE} (session_id, part, byte_offset, kind, text) "  # noqa: S608
                    "VALUES (%s, %s, %s, %s, %s)",
                    batch,
                )
                batch.clear()
        if batch:
            cursor.executemany(
                f"INSERT INTO {search.TABLE} (session_id, part, byte_offset, kind, text) "  # noqa: S608
                "VALUES (%s, %s, %s, %s, %s)",
                batch,
            )
    fill_seconds = time.perf_counter() - started
    timings = {}
    for query in ("needle", "sqlite latency", "compaction subagent quota", "xylophone"):
        samples = []
        for _ in range(7):
            t0 = time.perf_counter()
            hits = search.search(query)
            samples.append((time.perf_counter() - t0) * 1000)
        timings[query] = {"median_ms": statistics.median(samples), "hits": len(hits)}
    print(
        json.dumps(
            {"lines": search.indexed_lines(), "fill_seconds": fill_seconds, "queries": timings}
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--mb", type=int, default=800)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument(
        "--database-url",
        default="",
        help="an EMPTY PostgreSQL database to use instead of SQLite (its tables are made)",
    )
    parser.add_argument("--child", choices=["backfill", "search"])
    args = parser.parse_args()
    if args.child == "backfill":
        return child_backfill()
    if args.child == "search":
        return child_search(args.lines)

    root = Path(tempfile.mkdtemp(prefix="opsconsole-bench-"))
    try:
        t0 = time.perf_counter()
        files, size = generate_home(root / "claude", args.files, args.mb)
        print(f"generated {files} files, {size / 2**20:.0f} MB in {time.perf_counter() - t0:.0f} s")
        env = _env(root, args.database_url)
        subprocess.run(
            [sys.executable, str(REPO / "manage.py"), "migrate", "-v", "0"], env=env, check=True
        )
        out = subprocess.run(
            [sys.executable, __file__, "--child", "backfill"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        figures = json.loads(out.stdout.strip().splitlines()[-1])
        seconds = figures["seconds"]
        print(
            f"backfill: {seconds:.1f} s, {size / 2**20 / seconds:.1f} MB/s, "
            f"{files / seconds:.0f} files/s, peak RSS {figures['peak_rss_mb']:.0f} MB, "
            f"{figures['imported']} runs imported, {figures['phantoms']} phantoms skipped, "
            f"{figures['failed']} failed"
        )
        out = subprocess.run(
            [sys.executable, __file__, "--child", "search", "--lines", str(args.lines)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        found = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"search index: {found['lines']} lines (padding took {found['fill_seconds']:.0f} s)")
        for query, figure in found["queries"].items():
            print(f"  {query!r}: {figure['median_ms']:.1f} ms median, {figure['hits']} hits")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
