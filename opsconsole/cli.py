"""`opsconsole serve`: migrate, make sure someone can log in, then serve the console
and run the monitor beside it, restarting the monitor if it dies or falls silent.

Any other arguments are passed to Django's manage.py, so `opsconsole
create_api_token alice` works from anywhere without knowing where manage.py is.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "opsconsole.settings")
    if not argv or argv[0] != "serve":
        from django.core.management import execute_from_command_line

        execute_from_command_line(["opsconsole", *argv])
        return 0

    parser = argparse.ArgumentParser(prog="opsconsole serve", description=__doc__)
    parser.add_argument(
        "--bind",
        default=os.environ.get("OPSCONSOLE_BIND", "127.0.0.1:8000"),
        help="address:port to listen on (default 127.0.0.1:8000, or $OPSCONSOLE_BIND)",
    )
    parser.add_argument("--workers", type=int, default=2, help="web server processes")
    parser.add_argument("--threads", type=int, default=8, help="threads per web process")
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
        "--access-logfile",
        "-",
        "--timeout",
        "60",
        # Pages and scripts poll every second or two: keep their connections open.
        "--keep-alive",
        "10",
    ]
    monitor = None
    if settings.OPSCONSOLE_SERVE_MONITOR and not args.no_monitor:
        monitor = [sys.executable, "-m", "opsconsole.cli", "monitor"]
    print(f"opsconsole: serving on http://{args.bind}/", flush=True)
    from opsconsole.supervise import Supervisor

    return Supervisor(web=web, monitor=monitor).run()


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
