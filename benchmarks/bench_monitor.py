"""The monitor: one sample's cost, the monitor's CPU, and /api/claude-active through
`opsconsole serve` side by side with the reference system's naive handler.

Real processes (one `sleep` per live run), real sidecars and transcripts, a real
SQLite database, a real `opsconsole serve` (gunicorn + monitor) and the
reference handler (`node ../shared/reference/reference_active_handler.js PORT
ACTIVE_DIR`) reading the same sidecar directory. Loopback only, bounded.

    .venv/bin/python benchmarks/bench_monitor.py                      # everything
    .venv/bin/python benchmarks/bench_monitor.py --counts 10 200      # sample + CPU only
    .venv/bin/python benchmarks/bench_monitor.py --counts --poll-seconds 30
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
# ../shared beside the repository (a worktree under /work/wt/ finds /work/shared).
REFERENCE = next(
    (
        parent / "shared" / "reference" / "reference_active_handler.js"
        for parent in REPO.parents
        if (parent / "shared" / "reference" / "reference_active_handler.js").exists()
    ),
    REPO.parent / "shared" / "reference" / "reference_active_handler.js",
)
sys.path.insert(0, str(REPO))
WORK = Path(tempfile.mkdtemp(prefix="opsconsole-bench-monitor-"))
os.environ["OPSCONSOLE_HOME"] = str(WORK / "home")
os.environ["CLAUDE_CONFIG_DIR"] = str(WORK / "claude")
os.environ["OPSCONSOLE_CLAUDE_CONFIG_DIRS"] = str(WORK / "claude")
os.environ["DJANGO_SETTINGS_MODULE"] = "opsconsole.settings"
os.environ["DATABASE_URL"] = f"sqlite:///{WORK / 'bench.sqlite3'}"
os.environ["OPSCONSOLE_SCHEDULERS"] = "cron"

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from serve_helpers import free_port, percentile  # noqa: E402

from monitor_app.monitor import Monitor  # noqa: E402
from opsconsole.models import ApiToken  # noqa: E402
from tests.live_helpers import sidecar_for  # noqa: E402
from wrapper.formats import ensure_private_dir, write_json_atomic  # noqa: E402

TRANSCRIPT = (
    b'{"type":"assistant","message":{"id":"m1","content":[{"type":"tool_use","name":"Bash",'
    b'"input":{"command":"make test"}}],"usage":{"input_tokens":10,"output_tokens":5}},'
    b'"uuid":"u1","sessionId":"s"}\n'
)


def start_runs(count: int) -> list[subprocess.Popen]:
    paths = settings.OPSCONSOLE_STATE
    ensure_private_dir(paths.active)
    procs = [subprocess.Popen(["sleep", "3600"]) for _ in range(count)]
    for proc in procs:
        sidecar = sidecar_for(
            proc.pid, tag=f"bench-{proc.pid}", cwd=str(WORK), config_dir=WORK / "claude"
        )
        transcript = Path(sidecar.transcript_path)
        transcript.parent.mkdir(parents=True, exist_ok=True)
        transcript.write_bytes(TRANSCRIPT * 20)
        write_json_atomic(paths.sidecar_path(proc.pid), sidecar.to_dict())
    return procs


def stop_runs(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.kill()
    for proc in procs:
        proc.wait()
    for sidecar in settings.OPSCONSOLE_STATE.active.glob("*.json"):
        sidecar.unlink()


def ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 2)


def p99(samples: list[float]) -> float:
    return round(percentile(samples, 0.99) * 1000, 2)


# ----------------------------------------------------------------------------- sample + CPU


def bench_sample(count: int) -> float:
    monitor = Monitor(cadences=False, publish=True)
    monitor.tick()  # first sight writes the live rows and events
    monitor.tick()
    samples = []
    for _ in range(10):
        began = time.perf_counter()
        monitor.tick()
        samples.append(time.perf_counter() - began)
    return ms(samples)


def bench_monitor_cpu(seconds: float) -> float:
    """CPU of `opsconsole monitor` at its default interval, as % of one core."""
    env = dict(os.environ)
    env.pop("OPSCONSOLE_SAMPLE_SECONDS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "opsconsole.cli", "monitor"],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    watched = psutil.Process(proc.pid)
    time.sleep(6)  # start-up (Django import, first samples) is not the steady state
    before, began = watched.cpu_times(), time.monotonic()
    time.sleep(seconds)
    after, ended = watched.cpu_times(), time.monotonic()
    proc.terminate()
    proc.wait(20)
    used = (after.user + after.system) - (before.user + before.system)
    return round(100 * used / (ended - began), 2)


# ----------------------------------------------------------------------------- side by side


_kept: dict[int, http.client.HTTPConnection] = {}


def get(port: int, path: str, headers: dict, keep_alive: bool = False):
    """(seconds, status, body) of one GET; keep_alive reuses a connection, as a browser's
    poller does (and reconnects when the server closed it)."""
    began = time.perf_counter()
    for attempt in (1, 2):
        conn = _kept.get(port) if keep_alive else None
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            body = response.read()
            break
        except (http.client.HTTPException, OSError):
            conn.close()
            _kept.pop(port, None)
            if attempt == 2:
                raise
            began = time.perf_counter()  # a closed idle connection is not the server's time
    elapsed = time.perf_counter() - began
    if keep_alive and not response.will_close:
        _kept[port] = conn
    else:
        conn.close()
        _kept.pop(port, None)
    return elapsed, response.status, body


def wait_for(port: int, headers: dict) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if get(port, "/api/claude-active", headers)[1] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"nothing answered on port {port}")


def poll_side_by_side(
    console: int,
    reference: int,
    token: str,
    every: float,
    duration: float,
    count: int,
    keep_alive: bool,
) -> dict:
    auth = {"Authorization": f"Bearer {token}"}
    samples: dict[str, list[float]] = {"console": [], "reference": []}
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        began = time.monotonic()
        elapsed, status, body = get(console, "/api/claude-active", auth, keep_alive)
        assert status == 200 and len(json.loads(body)["sessions"]) == count, status
        samples["console"].append(elapsed)
        elapsed, status, body = get(reference, "/api/claude-active", {}, keep_alive)
        assert status == 200 and len(json.loads(body)["sessions"]) == count
        samples["reference"].append(elapsed)
        time.sleep(max(0.0, every - (time.monotonic() - began)))
    return {name: values for name, values in samples.items() if values}


def conditional_polls(console: int, token: str, duration: float) -> list[float]:
    """A client that sends If-None-Match, as a browser's cache does: mostly 304s."""
    auth = {"Authorization": f"Bearer {token}"}
    conn = http.client.HTTPConnection("127.0.0.1", console, timeout=10)
    conn.request("GET", "/api/claude-active", headers=auth)
    response = conn.getresponse()
    response.read()
    etag = response.getheader("ETag")
    conn.close()
    samples = []
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        elapsed, status, _ = get(console, "/api/claude-active", {**auth, "If-None-Match": etag})
        if status == 200:
            conn = http.client.HTTPConnection("127.0.0.1", console, timeout=10)
            conn.request("GET", "/api/claude-active", headers=auth)
            fresh = conn.getresponse()
            fresh.read()
            etag = fresh.getheader("ETag")
            conn.close()
        samples.append(elapsed)
        time.sleep(0.05)
    return samples


SERVE_ARGS: list[str] = []


def bench_api(count: int, poll_seconds: float, fast_seconds: float) -> list[tuple]:
    user = get_user_model().objects.create_user(f"bench-{secrets.token_hex(4)}")
    token = ApiToken.issue(user)[1]
    console_port, reference_port = free_port(), free_port()
    env = dict(os.environ, OPSCONSOLE_ALLOWED_HOSTS="127.0.0.1,localhost")
    log = (WORK / "serve.log").open("wb")
    serve = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "opsconsole.cli",
            "serve",
            "--bind",
            f"127.0.0.1:{console_port}",
            *SERVE_ARGS,
        ],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    node = shutil.which("node")
    reference = subprocess.Popen(
        [node, str(REFERENCE), str(reference_port), str(settings.OPSCONSOLE_STATE.active)]
    )
    rows = []
    try:
        wait_for(console_port, {"Authorization": f"Bearer {token}"})
        wait_for(reference_port, {})
        time.sleep(5)  # the monitor's first samples (it writes the live rows once)
        for label, every, duration, keep_alive in (
            (f"every {poll_seconds:g} s, new connection", poll_seconds, poll_seconds * 30, False),
            (f"every {poll_seconds:g} s, keep-alive", poll_seconds, poll_seconds * 30, True),
            ("every 0.05 s, new connection", 0.05, fast_seconds, False),
            ("every 0.05 s, keep-alive", 0.05, fast_seconds, True),
        ):
            samples = poll_side_by_side(
                console_port, reference_port, token, every, duration, count, keep_alive
            )
            rows.append(
                (
                    label,
                    len(samples["console"]),
                    ms(samples["console"]),
                    p99(samples["console"]),
                    ms(samples["reference"]),
                    p99(samples["reference"]),
                    round(ms(samples["console"]) / ms(samples["reference"]), 2),
                )
            )
        cond = conditional_polls(console_port, token, fast_seconds)
        rows.append(
            (
                "every 0.05 s, new connection, If-None-Match",
                len(cond),
                ms(cond),
                p99(cond),
                "",
                "",
                "",
            )
        )
    finally:
        os.killpg(serve.pid, 15)
        serve.wait(30)
        reference.terminate()
        reference.wait(10)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="*", default=[10, 200, 1000])
    parser.add_argument("--cpu-seconds", type=float, default=30.0)
    parser.add_argument("--api-runs", type=int, default=200)
    parser.add_argument("--poll-seconds", type=float, default=2.1)
    parser.add_argument("--fast-seconds", type=float, default=20.0)
    parser.add_argument("--no-api", action="store_true")
    parser.add_argument(
        "--serve-args", default="", help="extra `opsconsole serve` arguments, e.g. '--workers 1'"
    )
    args = parser.parse_args()
    SERVE_ARGS.extend(args.serve_args.split())
    call_command("migrate", verbosity=0)
    print(f"Machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, SQLite\n")
    if args.counts:
        print("| live runs | one sample (ms) | monitor CPU, default 2 s interval (% of a core) |")
        print("|---:|---:|---:|")
        for count in args.counts:
            procs = start_runs(count)
            try:
                sample = bench_sample(count)
                cpu = bench_monitor_cpu(args.cpu_seconds)
            finally:
                stop_runs(procs)
                Monitor(cadences=False).tick()  # GC records them; not timed
            print(f"| {count} | {sample} | {cpu} |", flush=True)
    if not args.no_api:
        procs = start_runs(args.api_runs)
        try:
            rows = bench_api(args.api_runs, args.poll_seconds, args.fast_seconds)
        finally:
            stop_runs(procs)
        print(
            f"\n`GET /api/claude-active`, {args.api_runs} live runs, one client, console and "
            "reference alternating request by request:\n"
        )
        print(
            "| polled | requests | opsconsole serve median (ms) | p99 (ms) "
            "| reference handler median (ms) | p99 (ms) | console / reference (medians) |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for row in rows:
            print("| " + " | ".join(str(v) for v in row) + " |")
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
