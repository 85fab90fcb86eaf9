"""Does password guessing starve the API? 16 parallel wrong-password posters against
`opsconsole serve` (gunicorn, loopback) while one client times `GET /api/claude-active`.

Two attacks: from one address (what per-address throttling stops), and spread over
many loopback addresses and user names (what it cannot stop: only the bound on
concurrent password checks keeps the API answering).

    .venv/bin/python benchmarks/bench_login.py                # 16 posters, 10 s each
    .venv/bin/python benchmarks/bench_login.py --posters 16 --seconds 20
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import re
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_helpers import percentile, serve

CSRF_RE = re.compile(rb'name="csrfmiddlewaretoken" value="([^"]+)"')


def wrong_login(host: str, port: int, source: str, username: str) -> int:
    """GET the form (CSRF cookie + token), POST a wrong password; the POST's status."""
    connection = http.client.HTTPConnection(host, port, timeout=60, source_address=(source, 0))
    try:
        connection.request("GET", "/login/")
        form = connection.getresponse()
        body = form.read()
        cookie = form.getheader("Set-Cookie", "")
        match = CSRF_RE.search(body)
        csrf_cookie = re.search(r"csrftoken=([^;]+)", cookie)
        if not match or not csrf_cookie:
            return form.status
        data = (
            f"csrfmiddlewaretoken={match.group(1).decode()}&username={username}"
            "&password=wrong-password"
        )
        connection.request(
            "POST",
            "/login/",
            body=data,
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Cookie": f"csrftoken={csrf_cookie.group(1)}",
                "Referer": f"http://{host}:{port}/login/",
            },
        )
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def time_api(served, seconds: float) -> list[float]:
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        status, _ = served.get("/api/claude-active")
        samples.append(time.monotonic() - started)
        assert status == 200, status
    return samples


def attack(served, posters: int, seconds: float, spread: bool) -> tuple[list[float], Counter]:
    statuses: Counter = Counter()
    stop = threading.Event()
    counter = itertools.count()

    def poster(index: int) -> None:
        while not stop.is_set():
            n = next(counter)
            # Spread: a new loopback address and user name for every guess.
            source = f"127.0.{1 + n // 250 % 250}.{2 + n % 250}" if spread else "127.0.0.1"
            username = f"user{n}" if spread else "ops"
            try:
                statuses[wrong_login(served.host, served.port, source, username)] += 1
            except OSError as exc:
                statuses[type(exc).__name__] += 1

    threads = [threading.Thread(target=poster, args=(i,), daemon=True) for i in range(posters)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # let the attack reach its steady state
    samples = time_api(served, seconds)
    stop.set()
    for thread in threads:
        thread.join(timeout=90)
    return samples, statuses


def describe(name: str, samples: list[float], statuses: Counter | None = None) -> str:
    median = statistics.median(samples) * 1000
    p90 = percentile(samples, 0.9) * 1000
    worst = max(samples) * 1000
    guesses = f" | {dict(statuses)}" if statuses is not None else " |"
    return f"| {name} | {len(samples)} | {median:.1f} | {p90:.1f} | {worst:.0f}{guesses}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--posters", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with serve() as served:
        print("| API under | requests | median ms | p90 ms | max ms | login POST statuses |")
        print("|---|---|---|---|---|---|")
        print(describe("no attack", time_api(served, args.seconds)))
        for spread in (False, True):
            samples, statuses = attack(served, args.posters, args.seconds, spread)
            where = "spread over many addresses" if spread else "one address"
            print(describe(f"{args.posters} posters, {where}", samples, statuses))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
