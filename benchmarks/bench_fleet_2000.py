"""A fleet against two consoles on one PostgreSQL: --hosts simulated hosts (--live-share
of them with live runs, the rest idle) report for --seconds to two `opsconsole serve`
on one fresh database, while a person's browser and an API client poll the fleet.

Each simulated host is a real monitor in report mode without its process scan: a
`Monitor` with `fleet.reporting.ReportState` and a `fleet.report.Reporter`, handed each
sample a snapshot of its runs (`simulated_runs.live_session`), exactly as
`Monitor.tick` hands it the runs it found. So what goes over the wire, how often, and
how it is encoded (JSON, gzip above a size) are the real monitor's; whatever protocol
this checkout speaks, the simulator speaks. The Reporter's transport is the one
thing replaced: it posts over a new loopback connection, as the monitor does, to the
two consoles in turn, and times the round trip. A host with live runs has --runs of
them; every process's CPU changes each sample, and one run in ten samples ends (its
completion record lands in the host's spool, as the wrapper writes it) and another
starts.

Measured over the window, after every host reported once: ingest latency (client
side), the fleet page (/live/?host=all), its rows fragment, /api/claude-active?host=all
and the Hosts page; CPU and RSS of each console's process tree, of this database's
PostgreSQL backends and of the whole PostgreSQL server; PostgreSQL's transactions and
rows written per report (pg_stat_database deltas of this database); the load average.
The database (hostsbench_fleet by default) is dropped at the end. Loopback only,
bounded by --seconds.

    .venv/bin/python benchmarks/bench_fleet_2000.py --hosts 200 --seconds 30   # smoke
    .venv/bin/python benchmarks/bench_fleet_2000.py                            # 2,000 x 5 min
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import http.client
import io
import json
import multiprocessing
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import psutil

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).parent)]
from serve_helpers import REPO, free_port, percentile  # noqa: E402

PASSWORD = "bench-password-fleet"  # noqa: S105 - a throwaway database's user
SECRET_KEY = "bench-fleet-shared-secret-key-not-secret-" + "x" * 20


# ---------------------------------------------------------------- simulated hosts


@dataclass
class Posts:
    """What one generator's hosts saw: round trips, by console."""

    ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    bytes_sent: int = 0
    gzipped: int = 0
    by_console: list[int] = field(default_factory=lambda: [0, 0])
    lag_ms: list[float] = field(default_factory=list)  # a sample started late by this much
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, ms: float, status: int, size: int, gzipped: bool, console: int) -> None:
        with self.lock:
            self.ms.append(ms)
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self.bytes_sent += size
            self.gzipped += gzipped
            self.by_console[console] += 1


class SimulatedHost:
    """One host's monitor in report mode, its process scan replaced by `runs`."""

    def __init__(
        self, name: str, token: str, runs: int, interval: float, home: Path, consoles, posts
    ) -> None:
        from fleet.report import Reporter
        from fleet.reporting import ReportState
        from monitor_app.monitor import Monitor
        from wrapper.formats import StatePaths

        self.name, self.consoles, self.posts, self.interval = name, consoles, posts, interval
        self.sent = 0
        self.samples = 0
        reporter = Reporter(consoles[0], token, transport=self.post)
        self.monitor = Monitor(
            paths=StatePaths(home=home, active=home / "active"),
            config_dirs=[home / "claude"],
            host=name,
            interval=interval,
            cadences=False,  # no scheduler jobs, watchdog or leftover rule on a fake host
            reporting=lambda monitor: ReportState(monitor, reporter),
        )
        from simulated_runs import live_session

        self.runs = [live_session(name) for _ in range(runs)]

    def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        """The Reporter's transport: a new connection to the consoles in turn, timed."""
        console = self.sent % len(self.consoles)
        self.sent += 1
        address = self.consoles[console].removeprefix("http://")
        host, port = address.rsplit(":", 1)
        began = time.perf_counter()
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            connection.request("POST", "/api/hosts/report", body, headers)
            response = connection.getresponse()
            status, answer = response.status, response.read()
        except (OSError, http.client.HTTPException):
            status, answer = 0, b""
        finally:
            connection.close()
        ms = (time.perf_counter() - began) * 1000
        self.posts.add(ms, status, len(body), "Content-Encoding" in headers, console)
        return status, answer

    def sample(self, now: datetime) -> float:
        """One monitor round in report mode (Monitor.tick without the process scan):
        the runs change, the reporting state notes them and reports as it sees fit.
        Returns the seconds until this host's next round."""
        from monitor_app.snapshot import Snapshot

        self.samples += 1
        if self.runs:
            self.change_runs(now)
        monitor = self.monitor
        snapshot = Snapshot(
            taken_at=now,
            sessions=list(self.runs),
            source="monitor",
            seq=monitor.seq,
            interval_seconds=monitor.interval,
        )
        monitor.reporting.note(snapshot, [], now)
        monitor.reporting.report(snapshot, now)
        monitor.seq += 1
        return monitor.interval

    def change_runs(self, now: datetime) -> None:
        """Every process's CPU moves; one run in ten samples ends and another starts."""
        from simulated_runs import live_session

        from wrapper.formats import SpoolRecord, ensure_private_dir, write_json_atomic

        if self.samples % 10 == 0:
            ended = self.runs.pop(0)
            paths = self.monitor.paths
            ensure_private_dir(paths.spool)
            record = SpoolRecord(
                session_id=ended.session_id,
                script_tag=ended.sidecar.script_tag,
                platform="linux-bench",
                host=self.name,
                attempt=1,
                started_at=ended.sidecar.started_at,
                ended_at=now.isoformat(),
                end_reason="succeeded",
                exit_code=0,
                # A success as the result event tells it (without it, exit 0 is a false
                # success: an incident for every run).
                is_error=False,
                subtype="success",
                stop_reason="end_turn",
                claude_started=True,
                transcript_written=True,
                cost_usd=round(random.uniform(0.01, 2.0), 4),
                num_turns=random.randint(3, 40),
                duration_ms=random.randint(10_000, 1_800_000),
                model="claude-sonnet-4-5",
                usage={"input_tokens": 12_000, "output_tokens": 3_400},
                result_text="done: nightly work finished",
            )
            write_json_atomic(paths.spool_path(record.session_id), record.to_dict())
            self.runs.append(live_session(self.name, now))
        for live in self.runs:
            live.processes = [
                replace(p, cpu_percent=round(random.uniform(0, 30), 1)) for p in live.processes
            ]


def generate(shard: int, hosts: list, args, consoles: list[str], start, ready, results) -> None:
    """One load generator process: its share of the hosts, each sampling on its own
    cadence (a round starts when due, or when its previous report is answered)."""
    random.seed(shard)
    posts = Posts()
    work = Path(tempfile.mkdtemp(prefix=f"hostsbench-gen{shard}-"))
    simulated = [
        SimulatedHost(name, token, runs, args.interval, work / name, consoles, posts)
        for name, token, runs in hosts
    ]
    # Warm-up: every host reports once, so the fleet holds every run before the window;
    # hosts with live runs last, as they are called silent soonest (three intervals).
    with ThreadPoolExecutor(args.clients) as pool:
        order = sorted(simulated, key=lambda h: len(h.runs))
        list(pool.map(lambda h: h.sample(datetime.now(UTC)), order))
    warm = posts.statuses.copy()
    ready.put((shard, warm))
    while start.value == 0:
        time.sleep(0.05)
    began, ends = start.value, start.value + args.seconds
    measured = Posts()
    for host in simulated:
        host.posts = measured
    cpu_before = time.process_time()
    # (due, index): every host's first round spread over one interval.
    due = [(began + args.interval * i / len(simulated), i) for i in range(len(simulated))]
    heapq.heapify(due)
    wake = threading.Condition()

    def round_of(index: int, when: float) -> None:
        lag = (time.time() - when) * 1000
        host = simulated[index]
        try:
            wait = host.sample(datetime.now(UTC))
        except Exception as exc:  # a bug in one round must not end the benchmark
            print(f"{host.name}: round failed: {exc!r}", file=sys.stderr)
            wait = args.interval
        with wake:
            measured.lag_ms.append(lag)
            heapq.heappush(due, (max(when + wait, time.time()), index))
            wake.notify()

    with ThreadPoolExecutor(args.clients) as pool:
        while True:
            with wake:
                while not due:
                    wake.wait(0.5)
                when, index = due[0]
                now = time.time()
                if when >= ends:
                    break
                if when > now:
                    wake.wait(when - now)
                    continue
                heapq.heappop(due)
            pool.submit(round_of, index, when)
    results.put(
        (
            "hosts",
            {
                "ms": measured.ms,
                "statuses": measured.statuses,
                "bytes": measured.bytes_sent,
                "gzipped": measured.gzipped,
                "by_console": measured.by_console,
                "lag_ms": measured.lag_ms,
                "cpu": time.process_time() - cpu_before,
                "warm": warm,
            },
        )
    )


def read_fleet(consoles: list[str], api_token: str, args, start, results) -> None:
    """A person's browser and an API client, polling the fleet every half second, each
    poll on the next console; the Hosts page every ten seconds."""
    from simulated_runs import login

    opener = login(consoles[0], "ops", PASSWORD)  # the session is in the shared database
    timings: dict[str, list[float]] = {"api": [], "page": [], "rows": [], "hosts": []}
    failures: dict[str, int] = {}
    # Polling starts at once (the baseline before the window counts what reading costs),
    # and is timed within the window.
    turn, next_hosts = 0, time.time()
    while start.value == 0 or time.time() < start.value + args.seconds:
        base = consoles[turn % len(consoles)]
        turn += 1
        asks = [
            (
                "api",
                urllib.request.Request(  # noqa: S310 - loopback
                    base + "/api/claude-active?host=all",
                    headers={"Authorization": f"Bearer {api_token}"},
                ),
                urllib.request.urlopen,
            ),
            ("page", base + "/live/?host=all", opener.open),
            ("rows", base + "/live/rows/?host=all", opener.open),
        ]
        if time.time() >= next_hosts:
            asks.append(("hosts", base + "/hosts/", opener.open))
            next_hosts += 10
        for name, request, fetch in asks:
            began = time.perf_counter()
            try:
                with fetch(request, timeout=60) as response:
                    response.read()
            except OSError as exc:
                failures[f"{name}: {exc}"[:120]] = failures.get(f"{name}: {exc}"[:120], 0) + 1
                continue
            if start.value and time.time() >= start.value:
                timings[name].append((time.perf_counter() - began) * 1000)
        time.sleep(0.5)
    results.put(("readers", {"timings": timings, "failures": failures}))


# ---------------------------------------------------------------- measuring


class ProcessCPU:
    """CPU seconds of a changing set of processes since the first look (a process that
    exits between looks keeps what it used until its last look)."""

    def __init__(self) -> None:
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}

    def look(self, processes: list[psutil.Process], private: bool = False) -> int:
        """Note each process's CPU; returns their RSS in bytes, or with `private` their RSS
        less the pages they share (PostgreSQL's shared buffers, counted once per backend
        in RSS)."""
        rss = 0
        for process in processes:
            with contextlib.suppress(psutil.Error):
                with process.oneshot():
                    cpu = sum(process.cpu_times()[:2])
                    memory = process.memory_info()
                    rss += memory.rss - (memory.shared if private else 0)
                self.first.setdefault(process.pid, cpu)
                self.last[process.pid] = cpu
        return rss

    def used(self) -> float:
        return sum(cpu - self.first[pid] for pid, cpu in self.last.items())


def process_tree(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    return []


def postgres_processes(database: str) -> tuple[list[psutil.Process], list[psutil.Process]]:
    """(every process of the PostgreSQL server, the backends serving `database`): the
    server is the postgres process whose parent is not one, the rest its children."""
    server = []
    for process in psutil.process_iter(["name", "ppid"]):
        if process.info["name"] in ("postgres", "postmaster"):
            with contextlib.suppress(psutil.Error):
                if psutil.Process(process.info["ppid"]).name() not in ("postgres", "postmaster"):
                    server = process_tree(process.pid)
                    break
    mine = []
    for process in server[1:]:
        with contextlib.suppress(psutil.Error):
            # "postgres: [cluster: ]user database address state"
            words = " ".join(process.cmdline()).split()
            if database in words[:5]:
                mine.append(process)
    return server, mine


class Meter:
    """CPU and memory of the consoles' process trees and of PostgreSQL, looked at every
    second from now until stop(), with this database's pg_stat_database counters."""

    def __init__(self, console_pids: list[int], database: str, url: str) -> None:
        self.console_pids, self.database, self.url = console_pids, database, url
        self.consoles = [ProcessCPU() for _ in console_pids]
        self.backends, self.server = ProcessCPU(), ProcessCPU()
        self.console_rss: list[list[int]] = [[] for _ in console_pids]
        self.backend_memory: list[int] = []
        self.backend_count: list[int] = []
        self.loads: list[float] = []
        self.look()
        self.counters = database_counters(url, database)
        self.began = time.time()

    def look(self) -> None:
        for i, pid in enumerate(self.console_pids):
            self.console_rss[i].append(self.consoles[i].look(process_tree(pid)))
        server, mine = postgres_processes(self.database)
        self.server.look(server)
        self.backend_memory.append(self.backends.look(mine, private=True))
        self.backend_count.append(len(mine))
        self.loads.append(os.getloadavg()[0])

    def stop(self) -> None:
        self.wall = time.time() - self.began
        self.look()
        time.sleep(1.5)  # backends flush their statistics at most once a second
        after = database_counters(self.url, self.database)
        self.delta = {k: after[k] - self.counters[k] for k in after}

    def console_cpu(self) -> float:
        return sum(c.used() for c in self.consoles)


def database_counters(url: str, database: str) -> dict[str, int]:
    """This database's counters from pg_stat_database (as the server has flushed them)."""
    columns = (
        "xact_commit",
        "xact_rollback",
        "tup_inserted",
        "tup_updated",
        "tup_deleted",
        "tup_fetched",
        "blks_read",
        "blks_hit",
    )
    sql = (
        "SELECT pg_stat_clear_snapshot(), xact_commit, xact_rollback, tup_inserted, "
        "tup_updated, tup_deleted, tup_fetched, blks_read, blks_hit "
        "FROM pg_stat_database WHERE datname = :'db'"
    )
    out = subprocess.run(
        ["psql", url, "-At", "-v", f"db={database}"],
        input=sql,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    values = out.split("|")[1:]
    counters = dict(zip(columns, (int(v) for v in values), strict=True))
    # What overload sets off: hosts called silent, and the incidents the alerts open.
    fleet = (
        "SELECT (SELECT count(*) FROM monitor_app_event WHERE kind = 'monitor_silent'), "
        "(SELECT count(*) FROM alerts_app_incident)"
    )
    out = subprocess.run(
        ["psql", url, "-At", "-c", fleet],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    counters["silent_events"], counters["incidents"] = (int(v) for v in out.split("|"))
    return counters


# ---------------------------------------------------------------- consoles


def start_console(index: int, database_url: str, work: Path, workers: int) -> tuple:
    root = work / f"console-{index}"
    for folder in ("home", "claude"):
        (root / folder).mkdir(mode=0o700, parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSCONSOLE_")}
    env.update(
        DATABASE_URL=database_url,
        OPSCONSOLE_HOME=str(root / "home"),
        OPSCONSOLE_HOST_NAME=f"console-{index}",
        CLAUDE_CONFIG_DIR=str(root / "claude"),
        OPSCONSOLE_CLAUDE_CONFIG_DIRS=str(root / "claude"),
        OPSCONSOLE_SECRET_KEY=SECRET_KEY,
        OPSCONSOLE_SCHEDULERS="cron",
        OPSCONSOLE_TELEMETRY_RECEIVER="0",
        OPSCONSOLE_LOG_LEVEL="WARNING",
        DJANGO_SETTINGS_MODULE="opsconsole.settings",
        PYTHONPATH=str(REPO),
    )
    log = (root / "serve.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "opsconsole.cli",
            "serve",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
        ],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return process, f"http://127.0.0.1:{port}", root / "serve.log"


def wait_until_serving(base: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(base + "/login/", timeout=5) as response:  # noqa: S310
                if response.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"opsconsole serve did not start; see {log}")
        time.sleep(0.3)


def stop_console(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


# ---------------------------------------------------------------- the run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=300.0, help="length of the window")
    parser.add_argument("--live-share", type=float, default=0.10, help="hosts with live runs")
    parser.add_argument("--runs", type=int, default=3, help="live runs of such a host")
    parser.add_argument("--interval", type=float, default=2.0, help="a host's sample interval")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per console")
    parser.add_argument("--generators", type=int, default=2, help="load generator processes")
    parser.add_argument(
        "--clients", type=int, default=64, help="threads per generator (hosts in flight)"
    )
    parser.add_argument("--database", default="hostsbench_fleet")
    parser.add_argument(
        "--baseline",
        type=float,
        default=30.0,
        help="seconds of readers alone before the window (0: none), subtracted per report",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if not (args.database.isidentifier() and args.database.startswith("hostsbench_")):
        parser.error("--database is a plain name starting with hostsbench_")
    if not 1 <= args.hosts <= 20_000 or not 5 <= args.seconds <= 3600:
        parser.error("--hosts from 1 to 20000, --seconds from 5 to 3600")

    # A SIGTERM stops the consoles and drops the database too (the `finally` below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    pg = os.environ.get("OPSCONSOLE_BENCH_PG", "postgres://postgres@127.0.0.1:5432")
    database_url = f"{pg}/{args.database}"
    from serve_helpers import console_in_process

    console_in_process(args.database, "hostsbench-main-")
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connections

    get_user_model().objects.create_superuser("ops", password=PASSWORD)

    def command(*words: str) -> str:
        out = io.StringIO()
        call_command(*words, stdout=out, stderr=io.StringIO())
        return out.getvalue().strip().splitlines()[-1]

    api_token = command("create_api_token", "ops")
    live_hosts = round(args.hosts * args.live_share)
    step = args.hosts / live_hosts if live_hosts else 0
    live_indexes = {int(i * step) for i in range(live_hosts)}
    hosts = [
        (name, command("create_host_token", name), args.runs if i in live_indexes else 0)
        for i, name in enumerate(f"host-{i:05d}" for i in range(args.hosts))
    ]
    connections.close_all()

    work = Path(tempfile.mkdtemp(prefix="hostsbench-fleet-"))
    consoles = [start_console(i, database_url, work, args.workers) for i in (1, 2)]
    context = multiprocessing.get_context("fork")
    children: list = []
    try:
        for process, base, log in consoles:
            wait_until_serving(base, process, log)
        bases = [base for _process, base, _log in consoles]
        results, ready = context.Queue(), context.Queue()
        start = context.Value("d", 0.0)
        reader = context.Process(target=read_fleet, args=(bases, api_token, args, start, results))
        reader.start()
        children = [reader]
        pids = [process.pid for process, _base, _log in consoles]
        baseline = None
        if args.baseline:
            # Readers polling an empty fleet, the consoles' own monitors: what the window
            # costs without any report. Before the hosts' first reports, so that no host
            # falls silent meanwhile; reading 2,000 hosts costs more than an empty fleet,
            # so what is left per report is, if anything, too high.
            baseline = Meter(pids, args.database, database_url)
            while time.time() < baseline.began + args.baseline:
                time.sleep(1)
                baseline.look()
            baseline.stop()
        generators = [
            context.Process(
                target=generate,
                args=(shard, hosts[shard :: args.generators], args, bases, start, ready, results),
            )
            for shard in range(args.generators)
        ]
        children += generators
        for child in generators:
            child.start()
        warm = [ready.get(timeout=900) for _ in range(args.generators)]
        print(f"warm-up reports (status: count) by generator: {warm}", flush=True)
        logs = [log for _process, _base, log in consoles]
        restarts_before = monitor_restarts(logs)
        meter = Meter(pids, args.database, database_url)
        start.value = meter.began
        while time.time() < meter.began + args.seconds:
            time.sleep(1)
            meter.look()
        gathered = [results.get(timeout=300) for _ in children]
        meter.stop()
        for child in children:
            child.join(timeout=30)
        figures = summarize(args, gathered, live_hosts, meter, baseline)
        figures["monitor_restarts_as_silent"] = [
            after - before
            for before, after in zip(restarts_before, monitor_restarts(logs), strict=True)
        ]
        print_figures(figures)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
    finally:
        for child in children:
            if child.is_alive():
                child.terminate()
        for process, _base, _log in consoles:
            stop_console(process)
        if not args.keep:
            subprocess.run(
                [
                    "psql",
                    f"{pg}/postgres",
                    "-qc",
                    f"DROP DATABASE IF EXISTS {args.database} WITH (FORCE)",
                ],
                check=False,
            )


def summarize(args, gathered, live_hosts, meter: Meter, baseline: Meter | None) -> dict:
    ms: list[float] = []
    lag: list[float] = []
    statuses: dict[str, int] = {}
    sent = gzipped = generator_cpu = 0
    by_console = [0, 0]
    readers: dict = {}
    for kind, data in gathered:
        if kind == "readers":
            readers = data
            continue
        ms += data["ms"]
        lag += data["lag_ms"]
        for status, n in data["statuses"].items():
            statuses[str(status)] = statuses.get(str(status), 0) + n
        sent += data["bytes"]
        gzipped += data["gzipped"]
        generator_cpu += data["cpu"]
        by_console = [a + b for a, b in zip(by_console, data["by_console"], strict=True)]
    reports = sum(statuses.values())
    taken = statuses.get("200", 0) or 1
    wall = meter.wall
    delta = meter.delta
    rows = delta["tup_inserted"] + delta["tup_updated"] + delta["tup_deleted"]
    consoles_cpu, database_cpu = meter.console_cpu(), meter.backends.used()
    # What the window would have cost without a report: the baseline's rates (readers
    # polling, the consoles' own monitors and duties), over the window's length.
    fixed_consoles = fixed_database = fixed_xacts = fixed_rows = 0.0
    if baseline is not None:
        share = wall / baseline.wall
        fixed_consoles = baseline.console_cpu() * share
        fixed_database = baseline.backends.used() * share
        fixed_xacts = baseline.delta["xact_commit"] * share
        fixed_rows = share * sum(
            baseline.delta[k] for k in ("tup_inserted", "tup_updated", "tup_deleted")
        )

    def median(values: list[float]) -> float | None:
        return round(statistics.median(values), 1) if values else None

    def per_report(value: float) -> float:
        return round(value / taken, 2)

    timings = readers.get("timings", {})
    return {
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "protocol": "deltas and heartbeats" if has_deltas() else "a full report every sample",
        "hosts": args.hosts,
        "hosts_with_live_runs": live_hosts,
        "runs_per_live_host": args.runs,
        "live_runs": live_hosts * args.runs,
        "interval_s": args.interval,
        "window_s": round(wall, 1),
        "workers_per_console": args.workers,
        "cores": psutil.cpu_count(),
        "load_average_1min": {
            "min": round(min(meter.loads), 2),
            "mean": round(statistics.mean(meter.loads), 2),
            "max": round(max(meter.loads), 2),
        },
        "reports": reports,
        "statuses": statuses,
        "reports_by_console": by_console,
        "reports_per_s": round(reports / wall, 1),
        "gzipped_share": round(gzipped / reports, 3) if reports else None,
        "mean_body_bytes": round(sent / reports) if reports else None,
        "ingest_ms": {
            "p50": round(percentile(ms, 0.5), 1),
            "p90": round(percentile(ms, 0.9), 1),
            "p99": round(percentile(ms, 0.99), 1),
            "max": round(max(ms), 1) if ms else None,
        },
        "round_start_lag_ms": {
            "p50": round(percentile(lag, 0.5), 1),
            "p99": round(percentile(lag, 0.99), 1),
        },
        "fleet_page_ms_median": median(timings.get("page", [])),
        "fleet_page_ms_p90": round(percentile(timings.get("page", []), 0.9), 1),
        "fleet_rows_ms_median": median(timings.get("rows", [])),
        "api_all_ms_median": median(timings.get("api", [])),
        "hosts_page_ms_median": median(timings.get("hosts", [])),
        "reader_polls": {k: len(v) for k, v in timings.items()},
        "reader_failures": readers.get("failures", {}),
        "console_cpu_pct_of_core": [round(100 * c.used() / wall, 1) for c in meter.consoles],
        "console_rss_mib_peak": [round(max(r) / 2**20) for r in meter.console_rss],
        "console_rss_mib_mean": [round(statistics.mean(r) / 2**20) for r in meter.console_rss],
        "pg_backends_cpu_pct_of_core": round(100 * database_cpu / wall, 1),
        "pg_server_cpu_pct_of_core_all_databases": round(100 * meter.server.used() / wall, 1),
        "pg_backends_private_mib_peak": round(max(meter.backend_memory) / 2**20),
        "pg_backends_peak": max(meter.backend_count),
        "generator_cpu_pct_of_core": round(100 * generator_cpu / wall, 1),
        "baseline": None
        if baseline is None
        else {
            "seconds": round(baseline.wall, 1),
            "console_cpu_pct_of_core": round(100 * baseline.console_cpu() / baseline.wall, 1),
            "pg_backends_cpu_pct_of_core": round(100 * baseline.backends.used() / baseline.wall, 1),
            "pg_transactions_per_s": round(baseline.delta["xact_commit"] / baseline.wall, 1),
        },
        "cpu_ms_per_report": {
            "consoles": per_report(1000 * consoles_cpu),
            "postgresql": per_report(1000 * database_cpu),
            "consoles_net_of_baseline": per_report(1000 * (consoles_cpu - fixed_consoles)),
            "postgresql_net_of_baseline": per_report(1000 * (database_cpu - fixed_database)),
        },
        "reports_per_s_per_core": round(taken / (consoles_cpu + database_cpu), 1),
        "reports_per_s_per_core_net_of_baseline": round(
            taken / (consoles_cpu + database_cpu - fixed_consoles - fixed_database), 1
        ),
        "pg_per_report": {
            "transactions": per_report(delta["xact_commit"]),
            "rows_written": per_report(rows),
            "inserted": per_report(delta["tup_inserted"]),
            "updated": per_report(delta["tup_updated"]),
            "deleted": per_report(delta["tup_deleted"]),
            "transactions_net_of_baseline": per_report(delta["xact_commit"] - fixed_xacts),
            "rows_written_net_of_baseline": per_report(rows - fixed_rows),
        },
        "pg_delta": delta,
    }


def monitor_restarts(logs: list[Path]) -> list[int]:
    """How often each console's supervisor restarted its monitor for being silent."""
    return [log.read_text(errors="replace").count("alive but silent") for log in logs]


def has_deltas() -> bool:
    """Whether this checkout's monitor sends deltas and heartbeats (fleet.sample_delta)."""
    return (REPO / "fleet" / "sample_delta.py").exists()


def print_figures(f: dict) -> None:
    print(
        f"\n{f['protocol']}: {f['hosts']} hosts ({f['hosts_with_live_runs']} with "
        f"{f['runs_per_live_host']} live runs each), two consoles x "
        f"{f['workers_per_console']} workers, one PostgreSQL, "
        f"{f['window_s']:.0f} s, {f['cores']} cores, load average {f['load_average_1min']}\n"
    )
    rows = [
        ("reports (HTTP status: count)", f["statuses"]),
        ("reports per console", f["reports_by_console"]),
        ("reports per second", f["reports_per_s"]),
        ("mean body (bytes); share gzipped", f"{f['mean_body_bytes']}; {f['gzipped_share']}"),
        ("ingest p50 / p90 / p99 / max (ms)", " / ".join(map(str, f["ingest_ms"].values()))),
        ("a host's round started late by, p50 / p99 (ms)", f["round_start_lag_ms"]),
        (
            "fleet page /live/?host=all median / p90 (ms)",
            (f["fleet_page_ms_median"], f["fleet_page_ms_p90"]),
        ),
        ("its rows /live/rows/?host=all median (ms)", f["fleet_rows_ms_median"]),
        ("/api/claude-active?host=all median (ms)", f["api_all_ms_median"]),
        ("/hosts/ median (ms)", f["hosts_page_ms_median"]),
        (
            "hosts called silent (events); incidents opened; consoles' monitors restarted",
            (
                f["pg_delta"]["silent_events"],
                f["pg_delta"]["incidents"],
                f.get("monitor_restarts_as_silent"),
            ),
        ),
        ("reader polls; failures", f"{f['reader_polls']}; {f['reader_failures']}"),
        ("console CPU, % of a core (each)", f["console_cpu_pct_of_core"]),
        (
            "console RSS peak / mean (MiB, each tree)",
            (f["console_rss_mib_peak"], f["console_rss_mib_mean"]),
        ),
        ("PostgreSQL backends of this database, CPU % of a core", f["pg_backends_cpu_pct_of_core"]),
        (
            "PostgreSQL server, all databases, CPU % of a core",
            f["pg_server_cpu_pct_of_core_all_databases"],
        ),
        (
            "PostgreSQL backends of this database: peak count; private memory peak (MiB)",
            (f["pg_backends_peak"], f["pg_backends_private_mib_peak"]),
        ),
        ("load generator CPU, % of a core", f["generator_cpu_pct_of_core"]),
        ("CPU ms per report taken: consoles / PostgreSQL", f["cpu_ms_per_report"]),
        ("baseline: readers alone, no reports", f["baseline"]),
        (
            "reports per second per core (consoles + PostgreSQL); net of the baseline",
            (f["reports_per_s_per_core"], f["reports_per_s_per_core_net_of_baseline"]),
        ),
        ("PostgreSQL per report", f["pg_per_report"]),
    ]
    print("| measure | value |\n|---|---:|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print(f"\n{f['command']}")


if __name__ == "__main__":
    main()
