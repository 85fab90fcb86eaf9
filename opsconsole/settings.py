"""Settings, all from the environment (see the table in docs/settings.md).

The embedded default needs nothing: SQLite and a generated secret key under
$OPSCONSOLE_HOME. A team points DATABASE_URL at PostgreSQL.
"""

from __future__ import annotations

import os
import secrets
from datetime import timedelta
from pathlib import Path

import dj_database_url
from csp.constants import NONE, SELF

from opsconsole.postgresql import CLIENT_TIMEOUT_KEY
from wrapper.formats import StatePaths, claude_config_dir, ensure_private_dir, host_name

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value not in (None, "") else default


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


# The wrapper and the console agree on where state lives through one definition.
OPSCONSOLE_STATE = StatePaths.from_env()
OPSCONSOLE_HOME = OPSCONSOLE_STATE.home
OPSCONSOLE_ACTIVE_DIR = OPSCONSOLE_STATE.active


def _secret_key() -> str:
    if os.environ.get("OPSCONSOLE_SECRET_KEY"):
        return os.environ["OPSCONSOLE_SECRET_KEY"]
    # Zero-setup default: a random key kept beside the state, readable only by its owner.
    ensure_private_dir(OPSCONSOLE_HOME)
    key_file = OPSCONSOLE_HOME / "secret_key"
    if not key_file.exists():
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(50))
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env_bool("OPSCONSOLE_DEBUG", False)
ALLOWED_HOSTS = env_list("OPSCONSOLE_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("OPSCONSOLE_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "axes",
    "opsconsole",
    "sessions_app",
    "jobs_app",
    "monitor_app",
    "alerts_app",
]

MIDDLEWARE = [
    # First: sessions and tokens are read from the database before any view runs.
    "opsconsole.middleware.DatabaseUnavailableMiddleware",
    # A bearer token's poll of /api/claude-active skips what has nothing to do for it.
    "opsconsole.middleware.BearerPollMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Every page needs a login; API views opt out and answer 401 themselves.
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "opsconsole.middleware.PrivateCacheMiddleware",
    "csp.middleware.CSPMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes asks: answers 429 to a locked-out address or account.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "opsconsole.urls"
WSGI_APPLICATION = "opsconsole.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "opsconsole.context_processors.console",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{OPSCONSOLE_HOME / 'opsconsole.sqlite3'}",
        conn_max_age=env_int("OPSCONSOLE_DB_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
# A database that refuses, or accepts and never answers, must cost a request seconds,
# not a thread forever: connect and statement timeouts (PostgreSQL), lock wait (SQLite).
OPSCONSOLE_DB_CONNECT_TIMEOUT = env_float("OPSCONSOLE_DB_CONNECT_TIMEOUT", 3.0)
OPSCONSOLE_DB_STATEMENT_TIMEOUT = env_float("OPSCONSOLE_DB_STATEMENT_TIMEOUT", 15.0)
# Client-side: the longest any wait for PostgreSQL's answer on an open connection lasts
# (opsconsole.postgresql). Longer than the statement timeout, so that a server that is
# alive cancels a slow query itself first and the connection stays usable.
OPSCONSOLE_DB_TIMEOUT_SECONDS = env_float(
    "OPSCONSOLE_DB_TIMEOUT_SECONDS", OPSCONSOLE_DB_STATEMENT_TIMEOUT + 5.0
)
# After the database was found unreachable, requests answer 503 at once for this long
# before the next connection attempt.
OPSCONSOLE_DB_RETRY_SECONDS = env_float("OPSCONSOLE_DB_RETRY_SECONDS", 5.0)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the page read while an ingest writes; wait rather than fail on a lock.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 5,
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0
elif DATABASES["default"]["ENGINE"].startswith("django.db.backends.postgresql"):
    # Django's backend, with the client-side bound on every wait for an answer.
    DATABASES["default"]["ENGINE"] = "opsconsole.postgresql"
    DATABASES["default"][CLIENT_TIMEOUT_KEY] = OPSCONSOLE_DB_TIMEOUT_SECONDS
    _options = DATABASES["default"].setdefault("OPTIONS", {})
    _options.setdefault("connect_timeout", max(1, round(OPSCONSOLE_DB_CONNECT_TIMEOUT)))
    # A host that went away (no TCP answer at all) is noticed by the kernel too: probes
    # on an idle connection, and unacknowledged data given up after the client timeout.
    _options.setdefault("keepalives", 1)
    _options.setdefault("keepalives_idle", 30)
    _options.setdefault("keepalives_interval", 5)
    _options.setdefault("keepalives_count", 3)
    _options.setdefault("tcp_user_timeout", int(OPSCONSOLE_DB_TIMEOUT_SECONDS * 1000))
    _statement_ms = int(OPSCONSOLE_DB_STATEMENT_TIMEOUT * 1000)
    _options["options"] = (
        f"{_options.get('options', '')} -c statement_timeout={_statement_ms}".strip()
    )


def _private_sqlite_file(name: str) -> None:
    """The SQLite file holds users, token hashes and every run: 0600 (SQLite gives its
    -wal and -shm files the database file's mode), in a 0700 directory when it is ours."""
    if not name or name == ":memory:" or name.startswith("file:"):
        return
    path = Path(name)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm", "-journal"):
        companion = Path(f"{name}{suffix}")
        if companion.exists() and not companion.is_symlink():
            companion.chmod(0o600)


if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    _private_sqlite_file(str(DATABASES["default"].get("NAME") or ""))

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CACHES = {
    # Sessions live in the database and in this private file cache (0700 dir, 0600
    # files): a person already logged in keeps the live view through a database outage.
    "sessions": {
        "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
        "LOCATION": str(OPSCONSOLE_HOME / "cache" / "sessions"),
        "TIMEOUT": 14 * 24 * 3600,
    },
    "default": {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "LOCATION": "opsconsole",
    },
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
AUTHENTICATION_BACKENDS = [
    # Refuses a locked-out address or account before any password is hashed.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Login throttling (django-axes): after OPSCONSOLE_LOGIN_FAILURE_LIMIT wrong passwords for
# one account from one address, that account is locked from that address for
# OPSCONSOLE_LOGIN_COOLOFF_MINUTES. The pair, not each alone: a lock per address would
# lock out everyone behind one NAT or proxy, and one per account would let anyone lock
# out an operator. Unlock early with `opsconsole axes_reset`.
AXES_ENABLED = env_bool("OPSCONSOLE_LOGIN_THROTTLING", True)
AXES_FAILURE_LIMIT = env_int("OPSCONSOLE_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_float("OPSCONSOLE_LOGIN_COOLOFF_MINUTES", 15))
# A nested list is the combination; a flat one would be "username OR address".
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "opsconsole/locked_out.html"
AXES_VERBOSE = False
# Its access logs stay out of the admin: a lock-out is lifted with `opsconsole axes_reset`.
AXES_ENABLE_ADMIN = False
# How many reverse proxies (nginx, Caddy) stand in front of the console: behind them the
# client's address comes from X-Forwarded-For (opsconsole.proxy) and HTTPS from
# X-Forwarded-Proto. 0 (the default): the connection's own address, headers ignored.
OPSCONSOLE_TRUSTED_PROXIES = env_int("OPSCONSOLE_TRUSTED_PROXIES", 0)
AXES_CLIENT_IP_CALLABLE = "opsconsole.proxy.client_address"
if OPSCONSOLE_TRUSTED_PROXIES > 0:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Password checks (PBKDF2, ~0.3 s of CPU each) that may run at once; a login that finds
# no free slot within OPSCONSOLE_LOGIN_WAIT_SECONDS is answered 503 at once, so logins
# can never take every server thread from the pages and the API.
OPSCONSOLE_LOGIN_CONCURRENCY = env_int("OPSCONSOLE_LOGIN_CONCURRENCY", 1)
OPSCONSOLE_LOGIN_WAIT_SECONDS = env_float("OPSCONSOLE_LOGIN_WAIT_SECONDS", 0.25)
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "overview"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("OPSCONSOLE_TIME_ZONE", "UTC")
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("OPSCONSOLE_STATIC_ROOT") or OPSCONSOLE_HOME / "static")
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise warns about a missing one
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve straight from the apps when collectstatic has not run (tests, runserver).
WHITENOISE_USE_FINDERS = True

SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
SESSION_CACHE_ALIAS = "sessions"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_SECURE = env_bool("OPSCONSOLE_SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
# Content-Security-Policy (django-csp): scripts and styles from our own static files only,
# no inline script, no inline style, nothing from another origin.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "connect-src": [SELF],
        "font-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}

# ----------------------------------------------------------------------------- opsconsole
# Where Claude Code keeps transcripts; the console reads nothing outside these and the archive.
OPSCONSOLE_CLAUDE_CONFIG_DIRS = [
    Path(p).expanduser()
    for p in env_list("OPSCONSOLE_CLAUDE_CONFIG_DIRS", [str(claude_config_dir())])
]
# One process-table scan per window, however many tabs and API clients poll.
OPSCONSOLE_SNAPSHOT_SECONDS = env_float("OPSCONSOLE_SNAPSHOT_SECONDS", 1.5)
OPSCONSOLE_POLL_SECONDS = env_float("OPSCONSOLE_POLL_SECONDS", 2.0)
OPSCONSOLE_TAIL_BYTES = env_int("OPSCONSOLE_TAIL_BYTES", 200_000)
OPSCONSOLE_HOST = host_name()
OPSCONSOLE_API_PAGE_SIZE = env_int("OPSCONSOLE_API_PAGE_SIZE", 50)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("OPSCONSOLE_LOG_LEVEL", "INFO")},
    # urllib3's debug lines name request paths, and a webhook's path is its secret.
    "loggers": {"django": {"level": "WARNING"}, "urllib3": {"level": "WARNING"}},
}
# Which scheduler collectors run (launchd, systemd, cron); empty = what this machine has.
OPSCONSOLE_SCHEDULERS = env_list("OPSCONSOLE_SCHEDULERS", [])
# Where the launchd collector looks for plists.
OPSCONSOLE_LAUNCHD_PLIST_DIRS = env_list(
    "OPSCONSOLE_LAUNCHD_PLIST_DIRS",
    ["~/Library/LaunchAgents", "/Library/LaunchAgents", "/Library/LaunchDaemons"],
)
# A job is late once its expected run is this far past with no run on record.
OPSCONSOLE_LATE_GRACE_SECONDS = env_int("OPSCONSOLE_LATE_GRACE_SECONDS", 600)
# Stop: how long a run's tree gets after SIGTERM before what is left is killed.
OPSCONSOLE_STOP_GRACE_SECONDS = env_float("OPSCONSOLE_STOP_GRACE_SECONDS", 5.0)
# Stop and the watchdog never signal a process of another user unless this is set.
OPSCONSOLE_SIGNAL_OTHER_USERS = env_bool("OPSCONSOLE_SIGNAL_OTHER_USERS", False)
# The users whose sidecars the console believes (sessions_app.trust); default: its own.
OPSCONSOLE_TRUSTED_UIDS = [
    int(uid) for uid in env_list("OPSCONSOLE_TRUSTED_UIDS", [str(os.geteuid())])
]
# The watchdog's limit for runs whose job sets none (a job's own limit is edited in the admin).
OPSCONSOLE_DEFAULT_MAX_RUNTIME_MINUTES = env_int("OPSCONSOLE_DEFAULT_MAX_RUNTIME_MINUTES", 45)

# ----------------------------------------------------------------------------- the monitor
# One sample of the host (sidecars, registry, process table, spool, GC) this often.
OPSCONSOLE_SAMPLE_SECONDS = env_float("OPSCONSOLE_SAMPLE_SECONDS", 2.0)
# Scheduler collectors and the watchdog run inside the monitor on their own cadences.
OPSCONSOLE_COLLECT_SECONDS = env_float("OPSCONSOLE_COLLECT_SECONDS", 30.0)
OPSCONSOLE_WATCHDOG_SECONDS = env_float("OPSCONSOLE_WATCHDOG_SECONDS", 30.0)
# How often the monitor looks for jobs to catch up after a quota stamp clears.
OPSCONSOLE_CATCHUP_SECONDS = env_float("OPSCONSOLE_CATCHUP_SECONDS", 30.0)
# Processes a run left behind are killed this long after it ended (jobs can opt out).
OPSCONSOLE_LEFTOVER_GRACE_SECONDS = env_float("OPSCONSOLE_LEFTOVER_GRACE_SECONDS", 120.0)
# The leftover rule for runs that belong to no job (unwrapped sessions included).
OPSCONSOLE_KILL_LEFTOVERS = env_bool("OPSCONSOLE_KILL_LEFTOVERS", True)
OPSCONSOLE_EVENT_RETENTION_DAYS = env_int("OPSCONSOLE_EVENT_RETENTION_DAYS", 90)
# `opsconsole serve` runs the monitor beside the web server (0: run it yourself).
OPSCONSOLE_SERVE_MONITOR = env_bool("OPSCONSOLE_SERVE_MONITOR", True)
# ----------------------------------------------------------------------------- alerts, metrics
# Default alert channels from the environment (Apprise URLs, space-separated).
OPSCONSOLE_ALERT_URLS = os.environ.get("OPSCONSOLE_ALERT_URLS", "").split()
# The console's address as people reach it, for links in messages (empty: paths only).
OPSCONSOLE_BASE_URL = os.environ.get("OPSCONSOLE_BASE_URL", "").strip()
# Delivery: short socket timeouts and a time budget per tick keep the monitor sampling.
OPSCONSOLE_ALERT_CONNECT_TIMEOUT = env_float("OPSCONSOLE_ALERT_CONNECT_TIMEOUT", 2.0)
OPSCONSOLE_ALERT_READ_TIMEOUT = env_float("OPSCONSOLE_ALERT_READ_TIMEOUT", 4.0)
OPSCONSOLE_ALERT_TICK_BUDGET = env_float("OPSCONSOLE_ALERT_TICK_BUDGET", 2.0)
# The monitor's tick hands delivery to a thread of its own (never blocking a sample).
OPSCONSOLE_ALERT_DELIVER_IN_BACKGROUND = env_bool("OPSCONSOLE_ALERT_DELIVER_IN_BACKGROUND", True)
# Retries: 5 s, 10 s, 20 s, ... capped at 15 min, given up after 12 attempts (~1.5 h).
OPSCONSOLE_ALERT_RETRY_SECONDS = env_float("OPSCONSOLE_ALERT_RETRY_SECONDS", 5.0)
OPSCONSOLE_ALERT_RETRY_MAX = env_float("OPSCONSOLE_ALERT_RETRY_MAX", 900.0)
OPSCONSOLE_ALERT_MAX_ATTEMPTS = env_int("OPSCONSOLE_ALERT_MAX_ATTEMPTS", 12)
# Flapping: an incident that re-opens this soon after it resolved waits this long to be told.
OPSCONSOLE_ALERT_FLAP_SECONDS = env_int("OPSCONSOLE_ALERT_FLAP_SECONDS", 600)
# An open incident nobody acknowledged is told again this often (0, the default: told once).
OPSCONSOLE_ALERT_REPEAT_MINUTES = env_float("OPSCONSOLE_ALERT_REPEAT_MINUTES", 0.0)
# Alerts and resolved incidents older than this are deleted (hourly, by the alert round).
OPSCONSOLE_ALERT_RETENTION_DAYS = env_int("OPSCONSOLE_ALERT_RETENTION_DAYS", 90)
# /metrics without a token: client addresses (CIDRs, comma-separated) allowed to scrape.
OPSCONSOLE_METRICS_ALLOW = env_list("OPSCONSOLE_METRICS_ALLOW", [])
# The fleet live page (/?host=all) lists at most this many runs, the most recent first.
OPSCONSOLE_FLEET_LIVE_ROWS = env_int("OPSCONSOLE_FLEET_LIVE_ROWS", 200)
# A reporting host with nothing live and nothing to send reports this often instead of
# every sample (fleet.reporting); 0: every sample. The console calls it silent only past it.
OPSCONSOLE_HEARTBEAT_SECONDS = env_float("OPSCONSOLE_HEARTBEAT_SECONDS", 30.0)
# What one host token may cost (fleet.budgets; docs/many-hosts.md "Budgets").
OPSCONSOLE_HOST_REPORTS_PER_MINUTE = env_int("OPSCONSOLE_HOST_REPORTS_PER_MINUTE", 120)
OPSCONSOLE_HOST_SESSIONS_PER_REPORT = env_int("OPSCONSOLE_HOST_SESSIONS_PER_REPORT", 1000)
# Scheduler jobs one host may have on record, gone ones included (a job is never deleted
# by a report): a host that names new labels in every report cannot fill the database.
OPSCONSOLE_HOST_JOBS = env_int("OPSCONSOLE_HOST_JOBS", 1000)
OPSCONSOLE_HOST_TRANSCRIPT_BYTES_PER_HOUR = env_int(
    "OPSCONSOLE_HOST_TRANSCRIPT_BYTES_PER_HOUR", 512 * 1024 * 1024
)
OPSCONSOLE_HOST_TRANSCRIPT_BYTES_TOTAL = env_int(
    "OPSCONSOLE_HOST_TRANSCRIPT_BYTES_TOTAL", 50 * 1024 * 1024 * 1024
)
# A report's body once inflated (gzip is checked while inflating, never inflated past it).
OPSCONSOLE_HOST_REPORT_MAX_INFLATED_BYTES = env_int(
    "OPSCONSOLE_HOST_REPORT_MAX_INFLATED_BYTES", 16 * 1024 * 1024
)

# Requests pushed to reporting hosts (fleet.action_push; docs/many-hosts.md "Requests").
# A held poll waits parked in its web worker's event loop: a socket, no thread (up to
# the worker's connections less opsconsole.web_worker.UNPARKED_CONNECTIONS).
OPSCONSOLE_PARK_HELD_POLLS = env_bool("OPSCONSOLE_PARK_HELD_POLLS", True)
# Not parked (off, or every parking place taken), a held poll holds one of a web worker's
# threads (`serve --threads`, which serve passes on as OPSCONSOLE_WEB_THREADS): at most
# this many per worker process, a quarter of the threads by default, and never all of
# them but one.
OPSCONSOLE_WEB_THREADS = max(1, env_int("OPSCONSOLE_WEB_THREADS", 8))
OPSCONSOLE_HELD_POLLS_PER_WORKER = min(
    env_int("OPSCONSOLE_HELD_POLLS_PER_WORKER", max(1, OPSCONSOLE_WEB_THREADS // 4)),
    OPSCONSOLE_WEB_THREADS - 1,
)
# A reporting host holds a poll open for its requests (off: they ride its reports only).
OPSCONSOLE_PUSH_ACTIONS = env_bool("OPSCONSOLE_PUSH_ACTIONS", True)

# Claude Code's own telemetry (OTLP/HTTP), taken by each host's monitor on loopback.
OPSCONSOLE_TELEMETRY_RECEIVER = env_bool("OPSCONSOLE_TELEMETRY_RECEIVER", True)
# The receiver's port; taken by something else, an ephemeral one (otlp.json says which).
OPSCONSOLE_OTLP_PORT = env_int("OPSCONSOLE_OTLP_PORT", 4319)
# Forward what a job's own OTLP exporter would have got there (the tee); off: a token
# holder cannot make the monitor POST anywhere, and jobs that export lose it while wrapped.
OPSCONSOLE_TELEMETRY_TEE = env_bool("OPSCONSOLE_TELEMETRY_TEE", True)
OPSCONSOLE_OTLP_MAX_BODY_BYTES = env_int("OPSCONSOLE_OTLP_MAX_BODY_BYTES", 8 * 1024 * 1024)
OPSCONSOLE_TELEMETRY_SPAN_DAYS = env_int("OPSCONSOLE_TELEMETRY_SPAN_DAYS", 14)
# Costs of one run that differ by more than this (percent) are shown as a drift.
OPSCONSOLE_COST_DRIFT_PERCENT = env_float("OPSCONSOLE_COST_DRIFT_PERCENT", 10.0)
# ... and alerted, once per run (the transcript's cost always lags the CLI's by the
# auxiliary requests, so this is for those who watch their price table).
OPSCONSOLE_COST_DRIFT_ALERT = env_bool("OPSCONSOLE_COST_DRIFT_ALERT", False)
