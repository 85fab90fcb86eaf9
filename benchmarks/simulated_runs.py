"""What the host benchmarks simulate, shared: a live run as a host's monitor samples
it (sidecar, three processes), and a person signing in to a console. Import after
Django is set up (the run types live in the apps)."""

from __future__ import annotations

import http.cookiejar
import random
import re
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta

from monitor_app.snapshot import LiveSession
from sessions_app.proctree import ProcessDetail
from wrapper.formats import Sidecar, new_session_id


def live_session(host: str, started: datetime | None = None) -> LiveSession:
    """A live wrapped run on `host`, with the process tree a nightly job's run has."""
    session_id = new_session_id()
    pid = random.randint(1000, 4_000_000)
    started = started or datetime.now(UTC) - timedelta(seconds=random.randint(0, 1800))
    sidecar = Sidecar(
        session_id=session_id,
        script_tag=f"job-{random.randint(1, 40)}",
        wrapper_pid=pid,
        wrapper_started=started.timestamp(),
        started_at=started.isoformat(),
        attempt=1,
        platform="linux-bench",
        host=host,
        cwd="/srv/agents",
        claude_config_dir="/home/agent/.claude",
        transcript_path=f"/home/agent/.claude/projects/-srv-agents/{session_id}.jsonl",
        claude_pid=pid + 1,
        claude_started=started.timestamp() + 0.1,
    )
    processes = [
        ProcessDetail(
            pid=pid + i,
            ppid=pid + i - 1,
            depth=i,
            name=name,
            cmdline=cmd,
            started=started.timestamp() + i,
            cpu_percent=1.5,
            rss=80_000_000,
        )
        for i, (name, cmd) in enumerate(
            [
                ("python", "python -m wrapper --tag job -- -p ..."),
                ("claude", "claude -p 'do the nightly work' --output-format stream-json"),
                ("bash", "bash -c make test"),
            ]
        )
    ]
    return LiveSession(
        sidecar, "live", processes, last_tool_call="Bash: make test", transcript_bytes=40_000
    )


def login(base: str, username: str, password: str) -> urllib.request.OpenerDirector:
    """An opener holding a signed-in session cookie of the console at `base`."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(base + "/login/").read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    data = urllib.parse.urlencode(
        {"username": username, "password": password, "csrfmiddlewaretoken": token}
    ).encode()
    form = urllib.request.Request(base + "/login/", data=data, headers={"Referer": base})  # noqa: S310
    opener.open(form)
    return opener
