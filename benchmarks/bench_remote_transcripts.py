"""Remote transcripts in object storage: what one shipped piece costs the console as the
transcript grows, now (one immutable object per piece) against before (the whole object
read, deleted and saved again on every append), and what a page read costs.

django-storages' S3 backend against moto's S3 server, started here as its own process on
loopback (both come with the test extra). Bounded: --appends pieces of --piece bytes.

    .venv/bin/python benchmarks/bench_remote_transcripts.py
    .venv/bin/python benchmarks/bench_remote_transcripts.py --appends 800 --piece 8192
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).parent)]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "opsconsole.settings")

from serve_helpers import free_port  # noqa: E402

KEYS = {"access_key": "bench", "secret_key": "bench", "region_name": "us-east-1"}


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    import urllib.request

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()
            return server, endpoint
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("moto.server did not start (pip install -e '.[test]')")


def mean_ms(samples: list[float]) -> float:
    return statistics.mean(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=400)
    parser.add_argument("--piece", type=int, default=4096, help="bytes per shipped piece")
    args = parser.parse_args()
    if not 50 <= args.appends <= 5000 or not 1 <= args.piece <= 256 * 1024:
        parser.error("--appends from 50 to 5000, --piece from 1 to 262144 bytes")

    import boto3
    import django

    django.setup()
    from django.core.files.base import ContentFile
    from django.test import override_settings

    from sessions_app import remote_transcripts
    from wrapper.formats import StatePaths

    server, endpoint = start_moto()
    try:
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=KEYS["access_key"],
            aws_secret_access_key=KEYS["secret_key"],
            region_name=KEYS["region_name"],
        ).create_bucket(Bucket=bucket)
        home = Path(tempfile.mkdtemp(prefix="bench-remote-transcripts-"))
        line = b'{"type":"user","message":{"content":"' + b"x" * args.piece
        line = line[: args.piece - 4] + b'"}}\n'
        storage = {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {"bucket_name": bucket, "endpoint_url": endpoint, **KEYS},
        }
        with override_settings(
            STORAGES={"opsconsole_transcripts": storage},
            OPSCONSOLE_STATE=StatePaths(home=home, active=home / "active"),
        ):
            session_id = str(uuid.uuid4())
            pieces = []
            for index in range(args.appends):
                started = time.perf_counter()
                remote_transcripts.append_chunk("h", session_id, index * len(line), line)
                pieces.append(time.perf_counter() - started)

            copy = remote_transcripts.cache_path("h", session_id)
            started = time.perf_counter()
            remote_transcripts.readable_copy("h", session_id)
            kept = time.perf_counter() - started
            copy.unlink()  # as on a console that did not store the pieces itself
            started = time.perf_counter()
            remote_transcripts.readable_copy("h", session_id)
            cold = time.perf_counter() - started

            store = remote_transcripts.storage()
            name = f"before/transcript_{session_id}.jsonl"
            rewrites = []
            for _ in range(args.appends):  # what append_chunk did before the pieces
                started = time.perf_counter()
                old = store.open(name).read() if store.exists(name) else b""
                if old:
                    store.delete(name)
                store.save(name, ContentFile(old + line))
                rewrites.append(time.perf_counter() - started)
    finally:
        server.terminate()
        server.wait(timeout=10)

    total = args.appends * len(line)
    print(f"{args.appends} appends of {len(line)} B ({total / 1e6:.1f} MB), moto S3 on loopback")
    print("| measure | first 50 appends | last 50 appends |")
    print("|---|---:|---:|")
    print(f"| pieces (now), mean ms | {mean_ms(pieces[:50]):.1f} | {mean_ms(pieces[-50:]):.1f} |")
    print(
        f"| whole-object rewrite (before), mean ms | {mean_ms(rewrites[:50]):.1f} "
        f"| {mean_ms(rewrites[-50:]):.1f} |"
    )
    print(f"page read, copy kept as pieces arrived: {kept * 1000:.1f} ms")
    print(f"page read, copy deleted (every piece fetched): {cold * 1000:.0f} ms")


if __name__ == "__main__":
    main()
