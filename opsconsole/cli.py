"""The `opsconsole` command. `opsconsole serve`: migrate, make sure someone can log in,
then serve the console and run the monitor beside it, restarting the monitor if it dies
or falls silent. Every other command (`opsconsole create_api_token alice`) is one of
the console's management commands, run from anywhere without knowing where manage.py
is; `opsconsole --help` lists them, one line each.
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "opsconsole.settings")
    if not argv or argv in (["--help"], ["-h"], ["help"]):
        print(usage(), end="")
        return 0
    if argv[0] != "serve":
        from django.core.management import execute_from_command_line

        if argv == ["help", "--django"]:
            argv = ["help"]  # Django's own list: every command of every app
        execute_from_command_line(["opsconsole", *argv])
        return 0

    parser = argparse.ArgumentParser(prog="opsconsole serve", description=SERVE_DESCRIPTION)
    parser.add_argument(
        "--bind",
        default=os.environ.get("OPSCONSOLE_BIND", "127.0.0.1:8000"),
        help="address:port to listen on (default 127.0.0.1:8000, or $OPSCONSOLE_BIND)",
    )
    parser.add_argument("--workers", type=int, default=2, help="web server processes")
    parser.add_argument("--threads", type=int, default=8, help="threads per web process")
    parser.add_argument(
        "--connections",
        type=int,
        default=4000,
        help="open connections per web process (hosts' held polls each keep one; default 4000)",
    )
    parser.add_argument(
        "--no-monitor",
        action="store_true",
        help="do not start the monitor here (it runs as a service of its own)",
    )
    args = parser.parse_args(argv[1:])

    import django
    from django.conf import settings
    from django.core.management import call_command

    django.setup()
    call_command("migrate", interactive=False, verbosity=0)
    refresh_planner_statistics()
    ensure_first_user()
    # The supervisor itself needs no database from here on: hold no connection to it.
    from django.db import connections

    connections.close_all()
    web = [
        sys.executable,
        "-m",
        "gunicorn",
        "opsconsole.wsgi:application",
        "--bind",
        args.bind,
        "--workers",
        str(args.workers),
        # gthread, with request heads read by the event loop: slow clients cannot hold
        # the threads (opsconsole.web_worker).
        "--worker-class",
        "opsconsole.web_worker.HeadFirstWorker",
        "--threads",
        str(args.threads),
        # Held polls wait as connections, not threads (opsconsole.web_worker).
        "--worker-connections",
        str(args.connections),
        "--access-logfile",
        "-",
        "--timeout",
        "60",
        # Pages and scripts poll every second or two: keep their connections open.
        "--keep-alive",
        "10",
    ]
    # The web workers bound their held polls by their threads (fleet.action_push).
    os.environ["OPSCONSOLE_WEB_THREADS"] = str(args.threads)
    allow_open_files(args.workers * args.connections + 1000)
    monitor = None
    if settings.OPSCONSOLE_SERVE_MONITOR and not args.no_monitor:
        monitor = [sys.executable, "-m", "opsconsole.cli", "monitor"]
    print(f"opsconsole: serving on http://{args.bind}/", flush=True)
    from opsconsole.supervise import Supervisor

    return Supervisor(web=web, monitor=monitor).run()


def allow_open_files(wanted: int) -> None:
    """Raise this process's (and so the web workers') open-file limit towards `wanted`, as
    far as the hard limit allows: each held poll is a socket, and a common soft limit
    (1024) would stop a console at about a thousand hosts."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        top = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, top), hard))


SERVE_DESCRIPTION = (
    "Migrate the database, create 'admin' on a fresh one, then serve the console with "
    "gunicorn and run this host's monitor beside it (restarted if it dies or falls silent)."
)


# Django's commands a person running the console may want; the rest are for developers.
DJANGO_COMMANDS_WORTH_KNOWING = ("changepassword", "createsuperuser", "migrate")


# `opsconsole --help`: one line each. A command missing here shows its help's first clause.
SUMMARIES = {
    "serve": "serve the console and run this host's monitor beside it",
    "monitor": "sample this host's runs; --report-to URL reports them to a console",
    "doctor": "check what a job meets when its scheduler starts it; says what to fix",
    "collect_jobs": "read launchd / systemd / cron for the jobs that run opsconsole-run",
    "archive_sessions": "ingest completion records into history; record vanished runs",
    "backfill_transcripts": "import Claude Code transcripts already on disk into history",
    "prune_archive": "list or delete archived transcripts (and records) older than N days",
    "watchdog": "stop every run past its job's maximum runtime",
    "deliver_alerts": "evaluate the alert rules and deliver due alerts",
    "create_api_token": "create an API token for a user (printed once)",
    "create_host_token": "create a token for a host that reports here (printed once)",
    "revoke_host_token": "revoke a host's tokens",
    "telemetry_env": "print the lines that send a hand-started session's telemetry here",
}


def our_commands() -> list[tuple[str, str]]:
    """(name, first line of its help) for the console's own management commands."""
    import django
    from django.core.management import get_commands, load_command_class

    django.setup()
    found = []
    for name, app in sorted(get_commands().items()):
        if app == "opsconsole":
            text = "" if name in SUMMARIES else (load_command_class(app, name).help or "")
            found.append((name, SUMMARIES.get(name) or first_clause(text)))
    return found


def first_clause(text: str, limit: int = 90) -> str:
    """A command's help, cut to its first clause and to one line of `limit` characters."""
    text = " ".join(text.split())
    for stop in (". ", ": ", "; ", " ("):
        text = text.split(stop)[0]
    text = text.rstrip(".")
    if len(text) > limit:
        text = text[: limit - 1].rsplit(" ", 1)[0] + "…"
    return text


def usage() -> str:
    commands = our_commands()
    width = max(len(name) for name, _ in commands)
    lines = [
        "usage: opsconsole <command> [options]",
        "",
        "Commands:",
        *(f"  {name:<{width}}  {text}" for name, text in commands),
        "",
        f"Django's commands work too ({', '.join(DJANGO_COMMANDS_WORTH_KNOWING)}, ...):",
        "  opsconsole help --django     lists them all",
        "  opsconsole help <command>    one command's options (serve: opsconsole serve --help)",
        "",
    ]
    return "\n".join(lines)


def refresh_planner_statistics() -> None:
    """SQLite has no autovacuum: without ANALYZE it can pick an index that scans every row."""
    from django.db import connection

    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")


def ensure_first_user() -> None:
    """On a fresh database, create `admin` with a random password and say where it is."""
    from django.conf import settings
    from django.contrib.auth import get_user_model

    users = get_user_model().objects
    if users.exists():
        return
    password = secrets.token_urlsafe(12)
    users.create_superuser("admin", password=password)
    password_file = settings.OPSCONSOLE_HOME / "initial-admin-password"
    fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    print(
        f"opsconsole: created user 'admin' with password {password}\n"
        f"            (also in {password_file}; change it under /admin/)",
        flush=True,
    )


if __name__ == "__main__":
    raise SystemExit(main())
