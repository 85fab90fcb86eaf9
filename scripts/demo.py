"""A live demo: the console plus a handful of scheduled agents, on loopback only.

    .venv/bin/python scripts/demo.py [--port 8000] [--stand-in]

Agents run through the real `opsconsole-run`. With npm available they drive the
real Claude Code CLI against the scripted Messages API (tests/messages_api.py);
otherwise (or with --stand-in) tests/fake_claude.py plays claude. Within a
minute you see: live runs with a tool child, a refusal retried under a fresh
session id, a 429 that stamps the quota and the next run skipped (exit 79), and
a run SIGKILLed mid-tool that the console records as killed. Everything lives
under ./.demo (deleted at start); nothing touches your real crontab or ~/.claude.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DEMO = REPO / ".demo"
PYTHON = sys.executable
CYCLE_SECONDS = 60

# The demo's "scheduled jobs": what the cron collector will find (a stand-in crontab).
CRONTAB_ENTRIES = """\
# opsconsole: inbox triage
*/15 * * * * opsconsole-run --tag inbox-triage --platform demo -- -p "triage the inbox"
# opsconsole: nightly report
15 2 * * * opsconsole-run --tag nightly-report --platform demo -- -p "write the report"
# opsconsole: policy memo
0 9 * * 1-5 opsconsole-run --tag policy-memo --platform demo -- -p "draft the memo"
# opsconsole: usage digest
0 * * * * opsconsole-run --tag usage-digest --platform demo -- -p "hit the limit"
# opsconsole: log sweeper
30 3 * * * opsconsole-run --tag log-sweeper --platform demo -- -p "sweep the logs"
"""


def say(message: str) -> None:
    print(f"demo: {message}", flush=True)


def prepare(stand_in: bool) -> tuple[dict[str, str], object | None]:
    shutil.rmtree(DEMO, ignore_errors=True)
    for folder in ("home", "claude", "work", "bin", "user-home"):
        (DEMO / folder).mkdir(parents=True, mode=0o700)
    crontab = DEMO / "bin" / "crontab"
    crontab.write_text(  # `crontab -l` reads it; `crontab -` (Disable, Enable) writes it
        f'#!/bin/sh\nif [ "$1" = "-l" ]; then cat {DEMO / "crontab.txt"}; '
        f"else cat > {DEMO / 'crontab.txt'}; fi\n"
    )
    crontab.chmod(0o755)
    env = dict(
        os.environ,
        PATH=f"{DEMO / 'bin'}:{Path(PYTHON).parent}:{os.environ.get('PATH', '')}",
        OPSCONSOLE_HOME=str(DEMO / "home"),
        CLAUDE_CONFIG_DIR=str(DEMO / "claude"),
        OPSCONSOLE_CLAUDE_CONFIG_DIRS=str(DEMO / "claude"),
        DATABASE_URL=f"sqlite:///{DEMO / 'console.sqlite3'}",
        OPSCONSOLE_SCHEDULERS="cron",
        OPSCONSOLE_QUOTA_COOLDOWN_SECONDS="25",
        PYTHONPATH=str(REPO),
        DJANGO_SETTINGS_MODULE="opsconsole.settings",
    )
    api = None
    binary = None if stand_in else install_real_cli()
    if binary:
        from tests.messages_api import ScriptedApi

        api = ScriptedApi().start()
        api.script(
            "triage",
            {
                "kind": "bash",
                "command": "sleep 25; echo triaged",
                "text": "Triaged 14 messages; 2 need a human.",
            },
        )
        api.script(
            "report",
            {
                "kind": "bash",
                "command": "sleep 8; echo ok",
                "text": "Report written to reports/nightly.md.",
            },
        )
        api.script("hit the limit", {"kind": "429"})
        api.script("sweep", {"kind": "bash", "command": "sleep 600", "text": "never"})
        env.update(
            OPSCONSOLE_CLAUDE_BIN=binary,
            ANTHROPIC_BASE_URL=api.url,
            ANTHROPIC_API_KEY="sk-ant-demo-offline",
            HOME=str(DEMO / "user-home"),
            DISABLE_TELEMETRY="1",
            DISABLE_AUTOUPDATER="1",
            CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        )
        say(f"agents run the real Claude Code CLI against the scripted API at {api.url}")
    else:
        launcher = DEMO / "bin" / "claude"
        launcher.write_text(
            f'#!/bin/sh\nexec "{PYTHON}" "{REPO / "tests" / "fake_claude.py"}" "$@"\n'
        )
        launcher.chmod(0o755)
        env["OPSCONSOLE_CLAUDE_BIN"] = str(launcher)
        say("agents run the stand-in claude (tests/fake_claude.py)")
    write_crontab(env)
    return env, api


# What a job needs under cron, which starts it with PATH=/usr/bin:/bin and little else:
# the lines a real crontab needs too (see the README), so "Run now" works in the demo.
CRON_ENV_KEYS = (
    "OPSCONSOLE_HOME",
    "CLAUDE_CONFIG_DIR",
    "OPSCONSOLE_CLAUDE_BIN",
    "OPSCONSOLE_QUOTA_COOLDOWN_SECONDS",
    "PYTHONPATH",
    "HOME",
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_API_KEY",
    "DISABLE_TELEMETRY",
    "DISABLE_AUTOUPDATER",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
)


def write_crontab(env: dict) -> None:
    lines = [f"PATH={Path(PYTHON).parent}:/usr/bin:/bin"]
    lines += [f"{key}={env[key]}" for key in CRON_ENV_KEYS if env.get(key)]
    (DEMO / "crontab.txt").write_text("\n".join(lines) + "\n" + CRONTAB_ENTRIES)


def install_real_cli() -> str | None:
    if not shutil.which("npm"):
        return None
    result = subprocess.run(
        [str(REPO / "scripts" / "install-claude-cli")], capture_output=True, text=True
    )
    if result.returncode != 0:
        say("could not install the real CLI from npm; using the stand-in")
        return None
    return result.stdout.strip().splitlines()[-1]


STARTED: list[subprocess.Popen] = []  # every agent the demo started, stopped by PID at the end


def start_agent(env: dict, tag: str, prompt: str, behaviour: str = "succeed"):
    proc = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "wrapper",
            "--tag",
            tag,
            "--platform",
            "demo",
            "--",
            "-p",
            prompt,
            "--output-format",
            "stream-json",
            "--verbose",
            "--allowedTools",
            "Bash",
        ],
        env=dict(env, FAKE_CLAUDE_BEHAVIOUR=behaviour),
        cwd=DEMO / "work",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    STARTED.append(proc)
    return proc


def stop_started(server: subprocess.Popen) -> None:
    """Stop what the demo started, by the PIDs it holds: the server's and each agent's
    process group (each began a session of its own), then anything left that carries the
    demo's own CLAUDE_CONFIG_DIR (tools the real CLI starts in sessions of their own)."""
    import psutil

    running = sum(proc.poll() is None for proc in STARTED)
    # Every group, even one whose leader ended: its tools may still be in it.
    groups = [server.pid] + [proc.pid for proc in STARTED]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
        if sig == signal.SIGTERM:
            psutil.wait_procs([p for p in map(_process, groups) if p is not None], timeout=3)
    marker = str(DEMO / "claude")
    for proc in psutil.process_iter(["environ"]):
        try:
            if (proc.info.get("environ") or {}).get("CLAUDE_CONFIG_DIR") == marker:
                proc.kill()
        except psutil.Error:
            continue
    say(f"stopped the console and {running} running agent(s)")


def _process(pid: int):
    import psutil

    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def print_api_access(manage: list[str], env: dict, port: int) -> None:
    """The demo has its own database: a token made here, and the environment for commands."""
    made = subprocess.run(
        [*manage, "create_api_token", "demo", "--name", "demo"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    token = made.stdout.strip().splitlines()[-1]
    say("API (a token for user demo, in the demo's own database):")
    print(f"    export TOKEN={token}")
    print(
        f'    curl -s -H "Authorization: Bearer $TOKEN" http://127.0.0.1:{port}/api/claude-active'
    )
    print("  other commands against the demo's state and database need its environment:")
    print(
        f"    export OPSCONSOLE_HOME={env['OPSCONSOLE_HOME']} CLAUDE_CONFIG_DIR="
        f"{env['CLAUDE_CONFIG_DIR']} DATABASE_URL={env['DATABASE_URL']}",
        flush=True,
    )


def scheduler(env: dict, api, stop: threading.Event) -> None:
    """Fires the demo jobs on a one-minute cycle, like a very busy crontab."""
    for cycle in itertools.count(1):
        if api is not None:  # a fresh memo prompt each cycle, refused once, then answered
            api.script(f"memo {cycle}", {"kind": "refuse", "times": 1})
        start_agent(env, "inbox-triage", "triage the inbox", "spawn:25")
        stop.wait(2)
        start_agent(env, "nightly-report", "write the report", "sleep:8")
        stop.wait(2)
        start_agent(env, "policy-memo", f"draft the memo {cycle}", "refuse,succeed")
        sweeper = start_agent(env, "log-sweeper", "sweep the logs", "spawn:600")
        if stop.wait(12):
            return
        os.killpg(sweeper.pid, signal.SIGKILL)  # the run dies with no completion record
        if cycle == 1:
            say("each minute: log-sweeper SIGKILLed (shown as killed, its transcript kept)")
        stop.wait(4)
        start_agent(env, "usage-digest", "hit the limit", "429")
        stop.wait(4)
        start_agent(env, "nightly-report", "write the report", "sleep:8")  # exits 79
        if stop.wait(CYCLE_SECONDS - 24):
            return


def wait_for_port(port: int, server: subprocess.Popen, timeout: float = 60.0) -> bool:
    """True once the console accepts connections; False if it exits first or never does."""
    import socket
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return True
        time.sleep(0.2)
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--stand-in", action="store_true", help="never use the real CLI")
    args = parser.parse_args()
    env, api = prepare(args.stand_in)
    manage = [PYTHON, "-m", "opsconsole.cli"]
    subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], env=env, check=True)
    subprocess.run(
        [
            *manage,
            "shell",
            "--no-imports",
            "-c",
            "from django.contrib.auth import get_user_model as m; "
            "m().objects.create_superuser('demo', password='demo')",
        ],
        env=env,
        check=True,
    )
    # The server's own lines (requests, the monitor's supervisor) go to a file: the
    # terminal keeps the few a person needs.
    log = DEMO / "console.log"
    with log.open("ab") as log_file:
        server = subprocess.Popen(
            [*manage, "serve", "--bind", f"127.0.0.1:{args.port}"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    if not wait_for_port(args.port, server):
        say(f"the console did not start; the end of {log}:")
        print("\n".join(log.read_text(errors="replace").splitlines()[-20:]), flush=True)
        stop_started(server)
        return 1
    stop = threading.Event()
    threading.Thread(target=scheduler, args=(env, api, stop), daemon=True).start()
    say(f"console at http://127.0.0.1:{args.port}/  (user demo, password demo); Ctrl-C stops")
    say(f"the console's log: {log}")
    print_api_access(manage, env, args.port)
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        stop_started(server)
        if api is not None:
            api.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
