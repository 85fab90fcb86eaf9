"""The telemetry receiver at rate: N live runs each exporting E events a second into one
host's `opsconsole monitor`, what that costs the monitor, and what its sample takes.

A real `opsconsole monitor` process (own OPSCONSOLE_HOME, a SQLite database, its default
2 s interval, its OTLP receiver on loopback) watches N real `sleep` processes with
sidecars (bench_monitor.start_runs). A load process plays the runs' Claude Code: each
run keeps one keep-alive connection, as the CLI's exporter does, and POSTs one
`/v1/logs` batch a second (E records: api_request, tool_decision, tool_result), half the
runs protobuf and half JSON, and a `/v1/traces` batch of 5 spans every 5 s. First the
monitor is measured with the runs and no telemetry, then under the load.

    .venv/bin/python benchmarks/bench_telemetry.py                     # 200 runs, 60 s
    .venv/bin/python benchmarks/bench_telemetry.py --runs 50 --seconds 20
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psutil
from bench_monitor import REPO, WORK, start_runs, stop_runs  # sets up Django on WORK
from django.conf import settings
from django.core.management import call_command
from serve_helpers import free_port, percentile

from monitor_app.published import read_local_sample
from monitor_app.telemetry_inbox import Inbox, keep_rollups
from sessions_app.models import RunTelemetry, TelemetrySpan
from sessions_app.otlp import decode
from sessions_app.telemetry_records import stored_rollup, write_rollups, write_spans
from tests.otlp_bodies import Ev, Sp, logs, resource, traces
from wrapper.formats import ensure_private_dir
from wrapper.telemetry import read_receiver_address

SPANS_EVERY = 5  # seconds between a run's trace batches


def log_batch(session_id: str, events: int, protobuf: bool) -> bytes:
    """One run's log batch: `events` records (the same each second, as rollups only add)."""
    kinds = [
        Ev(
            "claude_code.api_request",
            {
                "model": "claude-sonnet-4-5",
                "cost_usd": 0.0021,
                "input_tokens": 1200,
                "output_tokens": 40,
                "query_source": "sdk",
                "duration_ms": 900,
            },
        ),
        Ev(
            "claude_code.tool_decision",
            {"tool_name": "Bash", "tool_use_id": "toolu_1", "decision": "accept"},
        ),
        Ev(
            "claude_code.tool_result",
            {
                "tool_name": "Bash",
                "tool_use_id": "toolu_1",
                "success": "true",
                "duration_ms": "300",
            },
        ),
    ]
    return logs(resource(session_id), [kinds[i % 3] for i in range(events)], protobuf=protobuf)


def trace_batch(session_id: str, protobuf: bool) -> bytes:
    """One run's trace batch: 5 new spans (ids of their own, as each is a new row)."""
    trace = os.urandom(16).hex()
    spans = [Sp("claude_code.interaction", trace_id=trace)]
    spans += [
        Sp("claude_code.llm_request", {"ttft_ms": 300 + i, "attempt": 1}, trace_id=trace)
        for i in range(2)
    ]
    spans += [
        Sp(name, {"tool_name": "Bash"}, trace_id=trace)
        for name in ("claude_code.tool", "claude_code.tool.execution")
    ]
    return traces(resource(session_id), spans, protobuf=protobuf)


def load(port: int, token: str, runs: list[str], events: int, seconds: float) -> None:
    """The load process: runs spread over threads, each run a keep-alive connection
    posting once a second at its own offset. Prints one JSON line of counts."""
    counts = {"posts": 0, "ok": 0, "ok_logs": 0, "records": 0, "busy": 0, "other": 0, "late": 0}
    lock = threading.Lock()
    threads = 8

    def play(mine: list[tuple[int, str]]) -> None:
        conns: dict[str, http.client.HTTPConnection] = {}
        bodies = {sid: log_batch(sid, events, i % 2 == 0) for i, sid in mine}
        began = time.monotonic()
        second = 0
        while second < seconds:
            for i, sid in mine:
                due = began + second + (i % 100) / 100
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                elif wait < -0.5:
                    with lock:
                        counts["late"] += 1
                protobuf = i % 2 == 0
                kind = "application/x-protobuf" if protobuf else "application/json"
                sends = [("/v1/logs", bodies[sid], events)]
                if (second + i) % SPANS_EVERY == 0:
                    sends.append(("/v1/traces", trace_batch(sid, protobuf), 5))
                for path, body, records in sends:
                    status = post(conns, sid, port, path, body, kind, token)
                    with lock:
                        counts["posts"] += 1
                        if status == 200:
                            counts["ok"] += 1
                            counts["ok_logs"] += path == "/v1/logs"
                            counts["records"] += records
                        elif status == 503:
                            counts["busy"] += 1
                        else:
                            counts["other"] += 1
            second += 1
        for conn in conns.values():
            conn.close()

    indexed = list(enumerate(runs))
    workers = [threading.Thread(target=play, args=(indexed[n::threads],)) for n in range(threads)]
    for worker in workers:
        worker.start()
    began = time.monotonic()
    for worker in workers:
        worker.join()
    counts["elapsed"] = time.monotonic() - began
    print(json.dumps(counts), flush=True)


def post(conns, sid, port, path, body, kind, token) -> int:
    headers = {"Content-Type": kind, "Authorization": f"Bearer {token}"}
    for attempt in (1, 2):
        conn = conns.get(sid) or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
        except (http.client.HTTPException, OSError):
            conn.close()
            conns.pop(sid, None)
            if attempt == 2:
                return 0
            continue
        if response.will_close:
            conn.close()
            conns.pop(sid, None)
        else:
            conns[sid] = conn
        return response.status
    return 0


class Watch:
    """The monitor process's CPU, RSS, and the scan_ms of every sample it publishes."""

    def __init__(self, pid: int):
        self.process = psutil.Process(pid)
        self.samples: dict[int, float] = {}
        self.rss: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        path = Path(settings.OPSCONSOLE_STATE.home) / "monitor" / "sample.json"
        while not self.stop.wait(0.25):
            sample = read_local_sample(path)
            if sample is not None:
                self.samples.setdefault(sample.seq, json.loads(sample.state_document)["scan_ms"])
            self.rss.append(self.process.memory_info().rss)

    def sample_thread_cpu(self) -> float:
        """CPU seconds of the monitor's main thread, the one that samples (its id is the
        process's): what the sample costs, far less hostage to the machine's load than
        its wall-clock time."""
        for thread in self.process.threads():
            if thread.id == self.process.pid:
                return thread.user_time + thread.system_time
        return float("nan")

    def window(self, seconds: float) -> dict:
        """CPU (% of one core), sample times and RSS over the next `seconds`."""
        seen = set(self.samples)
        self.rss = []
        before, began = self.process.cpu_times(), time.monotonic()
        sampler_before = self.sample_thread_cpu()
        time.sleep(seconds)
        after, ended = self.process.cpu_times(), time.monotonic()
        sampler = self.sample_thread_cpu() - sampler_before
        used = (after.user + after.system) - (before.user + before.system)
        scans = [ms for seq, ms in self.samples.items() if seq not in seen]
        return {
            "cpu": 100 * used / (ended - began),
            "samples": len(scans),
            "p50": percentile(scans, 0.5) if scans else float("nan"),
            "p95": percentile(scans, 0.95) if scans else float("nan"),
            "sample_cpu_ms": 1000 * sampler / len(scans) if scans else float("nan"),
            "rss_mb": max(self.rss) / 2**20 if self.rss else float("nan"),
        }


def breakdown(runs: int, events: int, rounds: int = 5) -> None:
    """In process: what the monitor does with one sample interval (2 s) of the load, piece
    by piece: the round drains the inbox; the telemetry writer's thread does write_rollups,
    write_spans and keep_rollups (every changed rollup here, not only those due)."""
    inbox = Inbox()
    sids = [str(uuid.uuid4()) for _ in range(runs)]
    logs_of = {sid: log_batch(sid, events, n % 2 == 0) for n, sid in enumerate(sids)}
    host = settings.OPSCONSOLE_HOST
    print(f"\nOne round's telemetry writes, {runs} runs, 2 s of the load each, in process:\n")
    print("| round | drain (ms) | write_rollups (ms) | write_spans (ms) | keep_rollups (ms) |")
    print("|---:|---:|---:|---:|---:|")
    for n in range(rounds):
        for i, sid in enumerate(sids):
            protobuf = i % 2 == 0
            for _ in range(2):
                inbox.take(decode("logs", logs_of[sid], protobuf=protobuf))
            if (n + i) % (SPANS_EVERY // 2) == 0:
                inbox.take(decode("traces", trace_batch(sid, protobuf), protobuf=protobuf))
        began = time.perf_counter()
        drained = inbox.drain()
        drain = time.perf_counter()
        write_rollups(drained.rollups, host)
        rollups = time.perf_counter()
        write_spans(drained.spans, host)
        spans = time.perf_counter()
        keep_rollups(settings.OPSCONSOLE_STATE, inbox, set(sids), datetime.now(UTC))
        kept = time.perf_counter()
        print(
            f"| {n + 1} | {1000 * (drain - began):.1f} | {1000 * (rollups - drain):.1f} "
            f"| {1000 * (spans - rollups):.1f} ({len(drained.spans)} spans) "
            f"| {1000 * (kept - spans):.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--events", type=int, default=5, help="events per run per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="the load's duration")
    parser.add_argument("--quiet-seconds", type=float, default=20.0)
    parser.add_argument(
        "--breakdown", action="store_true", help="only the round's telemetry writes, in process"
    )
    parser.add_argument("--load", nargs=3, help=argparse.SUPPRESS)  # port token runs-file
    args = parser.parse_args()
    if args.load:
        port, token, runs_file = args.load
        runs = Path(runs_file).read_text().split()
        load(int(port), token, runs, args.events, args.seconds)
        shutil.rmtree(WORK, ignore_errors=True)  # bench_monitor's, made on import
        return

    call_command("migrate", verbosity=0)
    print(f"Machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, SQLite")
    print(f"load average before: {os.getloadavg()[0]:.1f}\n")
    if args.breakdown:
        ensure_private_dir(settings.OPSCONSOLE_STATE.home / "monitor")
        breakdown(args.runs, args.events)
        print(f"\nload average after: {os.getloadavg()[0]:.1f}")
        shutil.rmtree(WORK, ignore_errors=True)
        return
    procs = start_runs(args.runs)
    port = free_port()
    env = dict(os.environ, OPSCONSOLE_OTLP_PORT=str(port))
    env.pop("OPSCONSOLE_SAMPLE_SECONDS", None)
    monitor = subprocess.Popen(
        [sys.executable, "-m", "opsconsole.cli", "monitor"],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=(WORK / "monitor.log").open("wb"),
    )
    try:
        deadline = time.monotonic() + 60
        while (address := read_receiver_address(settings.OPSCONSOLE_STATE)) is None:
            if time.monotonic() > deadline:
                raise SystemExit("the monitor's receiver did not start")
            time.sleep(0.2)
        watch = Watch(monitor.pid)
        watch.thread.start()
        # Start-up (Django, the first samples writing the runs' rows) is not the steady state.
        deadline = time.monotonic() + 120
        while len(watch.samples) < 3 and time.monotonic() < deadline:
            time.sleep(0.5)
        quiet = watch.window(args.quiet_seconds)

        # The runs' session ids: telemetry joined to the live runs the monitor sees.
        runs = [
            json.loads(path.read_text())["session_id"]
            for path in settings.OPSCONSOLE_STATE.active.glob("*.json")
        ]
        runs_file = WORK / "runs.txt"
        runs_file.write_text("\n".join(runs))
        loader = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--events",
                str(args.events),
                "--seconds",
                str(args.seconds),
                "--load",
                str(port),
                address.token,
                str(runs_file),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
        )
        time.sleep(min(5.0, args.seconds / 4))  # connections opened, the load steady
        loaded = watch.window(max(1.0, args.seconds - min(5.0, args.seconds / 4) - 2))
        out, _ = loader.communicate(timeout=args.seconds + 120)
        counts = json.loads(out.decode().strip().splitlines()[-1])
        log_records = counts["ok_logs"] * args.events

        def on_record() -> tuple[int, int]:
            rollups = RunTelemetry.objects.values_list("rollup", flat=True)
            events = sum(whole.events for r in rollups if (whole := stored_rollup(r or {})))
            return events, TelemetrySpan.objects.count()

        deadline = time.monotonic() + 60  # the last batches written by the next samples
        while on_record()[0] < log_records and time.monotonic() < deadline:
            time.sleep(1)
        events_on_record, spans_on_record = on_record()
        watch.stop.set()
    finally:
        monitor.terminate()
        monitor.wait(30)
        stop_runs(procs)

    taken = counts["records"] / counts["elapsed"]
    print(
        f"{args.runs} live runs, {args.events} events/s each, {args.seconds:g} s "
        f"(logs every 1 s, 5 spans every {SPANS_EVERY} s; half protobuf, half JSON)\n"
    )
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print(
        f"posts {counts['posts']}, answered 200: {counts['ok']}, busy (503): {counts['busy']}, "
        f"other/failed: {counts['other']}, sent late (>0.5 s): {counts['late']}"
    )
    print(
        f"records taken {counts['records']} in {counts['elapsed']:.1f} s ({taken:.0f}/s); "
        "on record: "
        f"{events_on_record} events in rollups, {spans_on_record} spans\n"
    )
    print(
        "| monitor | CPU (% of a core) | samples | sample p50 (ms) | p95 (ms) "
        "| sampling thread's CPU per sample (ms) | RSS max (MiB) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, w in (
        (f"{args.runs} runs, no telemetry", quiet),
        (f"{args.runs} runs, {taken:.0f} records/s", loaded),
    ):
        print(
            f"| {label} | {w['cpu']:.1f} | {w['samples']} | {w['p50']:.1f} | {w['p95']:.1f} "
            f"| {w['sample_cpu_ms']:.1f} | {w['rss_mb']:.0f} |"
        )
    extra = loaded["cpu"] - quiet["cpu"]
    if extra > 0:
        print(
            f"\ntelemetry's share (receiver and writes): {extra:.1f}% of a core, "
            f"{taken / (extra / 100):.0f} records per CPU-second"
        )
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
