"""Many hosts, one console: simulated hosts posting reports to `opsconsole serve` on
PostgreSQL, while the fleet live page and /api/claude-active?host=all are polled.

Each simulated host reports what a monitor in report mode sends (fleet.reporting):
its published sample (RUNS live sessions with three processes each, built with the
same code as the monitor's), its events, and now and then a completion record (a
run ends, another starts), every INTERVAL seconds, through a host token of its own.
The hosts are split over --generators processes and the readers poll from one more,
so that no timing includes a wait for another thread's share of one interpreter.
Loopback only, bounded by --duration.

    .venv/bin/python benchmarks/bench_hosts.py                            # 200 x 10, 60 s
    .venv/bin/python benchmarks/bench_hosts.py --duration 20 --workers 2
    .venv/bin/python benchmarks/bench_hosts.py --vary-cpu                 # every row changes
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/opsconsole_bench_hosts ...  (the default)
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import http.cookiejar
import json
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(Path(__file__).parent)]
PG = "postgres://postgres@127.0.0.1:5432"
DATABASE = "opsconsole_bench_hosts"
WORK = Path(tempfile.mkdtemp(prefix="opsconsole-bench-hosts-"))
os.environ["OPSCONSOLE_HOME"] = str(WORK / "home")
os.environ["CLAUDE_CONFIG_DIR"] = str(WORK / "claude")
os.environ["OPSCONSOLE_CLAUDE_CONFIG_DIRS"] = str(WORK / "claude")
os.environ["DJANGO_SETTINGS_MODULE"] = "opsconsole.settings"
os.environ.setdefault("DATABASE_URL", f"{PG}/{DATABASE}")
os.environ["OPSCONSOLE_SCHEDULERS"] = "cron"
os.environ["OPSCONSOLE_HOST_NAME"] = "console"
PASSWORD = "bench-password-hosts"  # noqa: S105 - a throwaway database's user

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from simulated_runs import live_session  # noqa: E402
from simulated_runs import login as signed_in  # noqa: E402

from fleet.sample_delta import state_delta  # noqa: E402
from monitor_app import published  # noqa: E402
from monitor_app.models import HostToken  # noqa: E402
from monitor_app.snapshot import LiveSession, Snapshot  # noqa: E402
from opsconsole.models import ApiToken  # noqa: E402
from wrapper.formats import SpoolRecord  # noqa: E402


def fresh_database() -> None:
    url = urllib.parse.urlsplit(os.environ["DATABASE_URL"])
    name = url.path.lstrip("/")
    assert name not in ("", "opsconsole", "postgres"), "use a database of the benchmark's own"
    admin = urllib.parse.urlunsplit(url._replace(path="/postgres"))
    for sql in (f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}"):
        subprocess.run(["psql", admin, "-q", "-c", sql], check=True, capture_output=True)


def manage(*args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "opsconsole.cli", *args],
        cwd=REPO,
        env=os.environ,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


class SimulatedHost:
    """One host's monitor, as the console sees it: a report every interval."""

    def __init__(
        self, name: str, token: str, runs: int, interval: float, vary: bool = False
    ) -> None:
        self.name, self.token, self.interval, self.vary = name, token, interval, vary
        self.seq = int(time.time() * 1000)
        self.sessions = [self.new_session() for _ in range(runs)]
        self.events: list[dict] = []
        self.completions: list[dict] = []
        self.started = {s.session_id for s in self.sessions}
        for live in self.sessions:
            self.event("run_started", live.session_id, f"run_started:{live.session_id}")
        self.posts = 0
        # Report as a monitor of this version does (fleet.sample_delta): once the console
        # holds a sample, the next is a delta of it. Off: a full report every time.
        self.deltas = False
        self.base: tuple[int, dict] | None = None  # (seq, state document) held
        self.sending: tuple[int, dict] | None = None

    def new_session(self) -> LiveSession:
        return live_session(self.name)

    def event(self, kind: str, session_id: str, key: str) -> None:
        self.events.append(
            {
                "at": datetime.now(UTC).isoformat(),
                "host": self.name,
                "kind": kind,
                "message": f"{kind} {session_id}",
                "dedupe_key": f"{self.name}:{key}",
                "session_id": session_id,
                "script_tag": "job",
                "status": "live",
                "detail": {},
            }
        )

    def rotate(self) -> None:
        """One run ends (its completion record is shipped), another starts."""
        ended = self.sessions.pop(0)
        now = datetime.now(UTC).isoformat()
        self.completions.append(
            asdict(
                SpoolRecord(
                    session_id=ended.session_id,
                    script_tag=ended.sidecar.script_tag,
                    platform="linux-bench",
                    host=self.name,
                    attempt=1,
                    started_at=ended.sidecar.started_at,
                    ended_at=now,
                    end_reason="succeeded",
                    exit_code=0,
                    cost_usd=0.12,
                )
            )
        )
        live = self.new_session()
        self.sessions.append(live)
        self.event("run_started", live.session_id, f"run_started:{live.session_id}")

    def body(self) -> bytes:
        self.seq += 1
        if self.sessions and self.posts and self.posts % 10 == 0:
            self.rotate()
        if self.vary:  # every run's CPU moves between samples: no live row reads the same
            for live in self.sessions:
                live.processes = [
                    replace(p, cpu_percent=round(random.uniform(0, 30), 1)) for p in live.processes
                ]
        snapshot = Snapshot(
            taken_at=datetime.now(UTC),
            sessions=list(self.sessions),
            source="monitor",
            seq=self.seq,
            interval_seconds=self.interval,
        )
        sample = {
            "seq": self.seq,
            "taken_at": snapshot.taken_at.isoformat(),
            "interval_seconds": self.interval,
            "sample_ms": 3.0,
            "monitor_pid": 4242,
        }
        state = published.state_dict(snapshot)
        self.sending = (self.seq, state)
        if self.deltas and self.base is not None:
            sample["base"] = {"seq": self.base[0], "monitor_pid": 4242}
            sample |= state_delta(self.base[1], state)
        else:
            document = published.build(snapshot, self.name, self.seq, 4242)
            sample |= {
                "etag": document.etag,
                "api_document": document.api_document,
                "state_document": document.state_document,
            }
        return json.dumps(
            {
                "format": 1,
                "host": self.name,
                "monitor_version": published.MONITOR_VERSION,
                "sent_at": datetime.now(UTC).isoformat(),
                "sample": sample,
                "completions": self.completions,
                "vanished": [],
                "endings": [],
                "leftovers": {},
                "events": self.events,
                "action_results": [],
            },
            separators=(",", ":"),
        ).encode()

    def acknowledged(self, answer: dict) -> None:
        ack = answer.get("ack", {})
        done = set(ack.get("sessions", []))
        self.completions = [c for c in self.completions if c["session_id"] not in done]
        keys = set(ack.get("events", []))
        self.events = [e for e in self.events if e["dedupe_key"] not in keys]
        held = answer.get("base") or {}
        self.base = self.sending if self.sending and held.get("seq") == self.sending[0] else None


class Connection(threading.local):
    pass


def post_report(port: int, local: Connection, host: SimulatedHost) -> tuple[float, int]:
    conn = getattr(local, "conn", None)
    if conn is None:
        conn = local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = host.body()
    began = time.perf_counter()
    try:
        conn.request(
            "POST",
            "/api/hosts/report",
            body,
            {"Authorization": f"Bearer {host.token}", "Content-Type": "application/json"},
        )
        response = conn.getresponse()
        answer = response.read()
    except (OSError, http.client.HTTPException):
        local.conn = None
        return (time.perf_counter() - began) * 1000, 0
    elapsed = (time.perf_counter() - began) * 1000
    if response.status == 200:
        host.acknowledged(json.loads(answer))
    host.posts += 1
    return elapsed, response.status


def login(base: str) -> urllib.request.OpenerDirector:
    return signed_in(base, "ops", PASSWORD)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


class DatabaseCPU:
    """CPU seconds used by the machine's PostgreSQL processes since the first look,
    sampled as they come and go (a web thread's connection is replaced every minute,
    and an exited backend's CPU can no longer be read)."""

    def __init__(self) -> None:
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.look()
        self.first = dict(self.last)

    def look(self) -> None:
        for process in psutil.process_iter(["name", "cpu_times"]):
            times = process.info["cpu_times"]
            if process.info["name"] in ("postgres", "postmaster") and times:
                self.last[process.pid] = sum(times[:2])

    def used(self) -> float:
        return sum(cpu - self.first.get(pid, 0.0) for pid, cpu in self.last.items())


def poll_readers(base: str, api_request, stop, results) -> None:
    """A person's browser and an API client, polling the fleet every half second."""
    opener = login(base)
    api_ms: list[float] = []
    page_ms: list[float] = []
    while not stop.is_set():
        began = time.perf_counter()
        body = urllib.request.urlopen(api_request).read()  # noqa: S310 - loopback
        api_ms.append((time.perf_counter() - began) * 1000)
        assert body
        began = time.perf_counter()
        opener.open(base + "/live/rows/?host=all").read()
        page_ms.append((time.perf_counter() - began) * 1000)
        stop.wait(0.5)
    results.put(("readers", api_ms, page_ms))


def simulate_hosts(port: int, hosts: list, shard: int, args, began: float, results) -> None:
    """Every args.generators-th host, each posting in its own slot of every interval."""
    local = Connection()
    mine = list(enumerate(hosts))[shard :: args.generators]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    with ThreadPoolExecutor(max(1, args.clients // args.generators)) as pool:
        round_no = 0
        while time.monotonic() - began < args.duration:
            round_start = began + round_no * args.interval
            futures = []
            for index, host in mine:
                delay = round_start + args.interval * index / len(hosts) - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                futures.append(pool.submit(post_report, port, local, host))
            for future in futures:
                elapsed, status = future.result()
                latencies.append(elapsed)
                statuses[status] = statuses.get(status, 0) + 1
            round_no += 1
    results.put(("hosts", latencies, statuses, time.process_time()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--runs", type=int, default=10, help="live runs per host")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between posts")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers")
    parser.add_argument("--clients", type=int, default=24, help="load generator threads, in all")
    parser.add_argument(
        "--generators", type=int, default=2, help="load generator processes (hosts split)"
    )
    parser.add_argument(
        "--vary-cpu",
        action="store_true",
        help="every process's CPU changes with each sample (by default a run's figures hold)",
    )
    args = parser.parse_args()

    fresh_database()
    manage("migrate", "--noinput")
    get_user_model().objects.create_superuser("ops", password=PASSWORD)
    _row, api_token = ApiToken.issue(get_user_model().objects.get(username="ops"))
    hosts = [
        SimulatedHost(name, HostToken.issue(name)[1], args.runs, args.interval, args.vary_cpu)
        for name in (f"host-{i:03d}" for i in range(args.hosts))
    ]
    from django.db import connections

    connections.close_all()

    port = 18000 + os.getpid() % 1000
    log = WORK / "serve.log"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "opsconsole.cli",
            "serve",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(args.workers),
        ],
        cwd=REPO,
        env=os.environ,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(base + "/login/", timeout=2).read()  # noqa: S310
                break
            except OSError:
                time.sleep(0.3)
        opener = login(base)
        api_request = urllib.request.Request(  # noqa: S310 - loopback
            base + "/api/claude-active?host=all", headers={"Authorization": f"Bearer {api_token}"}
        )

        # Warm-up: every host reports once, so the fleet holds hosts x runs live runs.
        local = Connection()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(lambda h: post_report(port, local, h), hosts))
        fleet_body = urllib.request.urlopen(api_request).read()  # noqa: S310
        live = len(json.loads(fleet_body)["sessions"])
        page = opener.open(base + "/live/rows/?host=all").read().decode()
        shown = page.count("/sessions/")
        assert "host-000" in page or "job-" in page, "the fleet live page lists the runs"

        # The readers and the simulated hosts each run in processes of their own, as
        # browsers and hosts are other machines: sharing one interpreter's lock with two
        # dozen threads encoding reports, a reader would time its own wait for the lock.
        context = multiprocessing.get_context("fork")
        results = context.Queue()
        stop = context.Event()
        processes = tree(server.pid)
        cpu_before = sum(sum(p.cpu_times()[:2]) for p in processes)
        database = DatabaseCPU()
        load_before = os.getloadavg()[0]
        began = time.monotonic()
        children = [
            context.Process(target=poll_readers, args=(base, api_request, stop, results))
        ] + [
            context.Process(target=simulate_hosts, args=(port, hosts, shard, args, began, results))
            for shard in range(args.generators)
        ]
        for child in children:
            child.start()
        rss_peak = 0
        while time.monotonic() - began < args.duration:
            with contextlib.suppress(psutil.Error):
                rss_peak = max(rss_peak, sum(p.memory_info().rss for p in tree(server.pid)))
            database.look()
            time.sleep(1)
        stop.set()
        gathered = [results.get(timeout=120) for _ in children]
        for child in children:
            child.join(timeout=30)
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        api_ms: list[float] = []
        page_ms: list[float] = []
        generator_cpu = 0.0
        for item in gathered:
            if item[0] == "readers":
                api_ms, page_ms = item[1], item[2]
            else:
                latencies += item[1]
                for status, count in item[2].items():
                    statuses[status] = statuses.get(status, 0) + count
                generator_cpu += item[3]
        wall = time.monotonic() - began
        processes = tree(server.pid)
        cpu_after = sum(sum(p.cpu_times()[:2]) for p in processes)
        database.look()
        database_used = database.used()
        cores = psutil.cpu_count()
        print(
            f"\n{args.hosts} hosts x {args.runs} live runs, a post every {args.interval:g} s "
            f"for {wall:.0f} s, {args.workers} gunicorn workers, PostgreSQL, {cores} cores; "
            f"{live} live runs in the fleet view ({shown} session links on the live page); "
            f"load average {load_before:.1f} before the load, {os.getloadavg()[0]:.1f} after"
            f"{'; CPU of every run varies per sample' if args.vary_cpu else ''}\n"
        )
        print("| measure | value |\n|---|---:|")
        print(f"| reports posted (HTTP status: count) | {statuses} |")
        print(f"| reports per second | {sum(statuses.values()) / wall:.1f} |")
        print(f"| ingest p50 (ms) | {percentile(latencies, 0.5):.1f} |")
        print(f"| ingest p99 (ms) | {percentile(latencies, 0.99):.1f} |")
        print(
            f"| GET /api/claude-active?host=all median (ms), {live} runs | "
            f"{statistics.median(api_ms):.1f} (n={len(api_ms)}) |"
        )
        print(
            f"| fleet live page (/live/rows/?host=all) median (ms) | "
            f"{statistics.median(page_ms):.1f} (n={len(page_ms)}) |"
        )
        print(f"| fleet live page p90 (ms) | {percentile(page_ms, 0.9):.1f} |")
        print(
            f"| server CPU (serve + workers + monitor), % of one core | "
            f"{100 * (cpu_after - cpu_before) / wall:.0f} |"
        )
        print(
            "| PostgreSQL CPU (all its processes), % of one core | "
            f"{100 * database_used / wall:.0f} |"
        )
        print(
            "| load generator CPU (simulated hosts), % of one core | "
            f"{100 * generator_cpu / wall:.0f} |"
        )
        print(f"| server RSS peak, all processes (MiB) | {rss_peak / 2**20:.0f} |")

        # The readers alone, no posts, at their pace: what a person polling sees at rest.
        quiet_api, quiet_page = [], []
        for _ in range(20):
            t0 = time.perf_counter()
            urllib.request.urlopen(api_request).read()  # noqa: S310
            quiet_api.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            opener.open(base + "/live/rows/?host=all").read()
            quiet_page.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.5)  # as the readers poll under load
        print(
            f"| at rest: /api/claude-active?host=all median (ms) | "
            f"{statistics.median(quiet_api):.1f} |"
        )
        print(f"| at rest: fleet live page median (ms) | {statistics.median(quiet_page):.1f} |")
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
