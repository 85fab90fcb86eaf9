"""One wrapped run: attempts under pre-assigned session ids, a sidecar while alive,
a completion record and an archived transcript for every attempt.

The console is never needed here: everything the wrapper knows ends up in files
under $OPSCONSOLE_HOME, which the console ingests whenever it next looks.

One piece: one process's life (attempts, signals, sidecar, completion record), read
top to bottom as it happens.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from wrapper.formats import (
    EXIT_NO_CLAUDE,
    EXIT_OVERLAP_SKIP,
    EXIT_QUOTA_SKIP,
    EXIT_SESSION_ID_IN_USE,
    EXIT_UNSAFE_STATE_DIR,
    FormatError,
    QuotaStamp,
    Sidecar,
    SpoolRecord,
    StatePaths,
    UnsafeDirectory,
    check_record,
    claude_config_dir,
    copy_into_archive,
    ensure_private_dir,
    field_problem,
    fit_list,
    fit_message,
    fit_name,
    fit_number,
    fit_reason,
    fit_tail,
    fit_text,
    fit_usage,
    host_name,
    is_session_id,
    live_sidecars,
    new_session_id,
    overwrite_json_in_place,
    process_start_time,
    read_quota_stamp,
    safe_tag,
    transcript_path,
    utc_now_iso,
    write_json_atomic,
)
from wrapper.stream import Observed, Pumps
from wrapper.telemetry import RunTelemetry, Span

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
DEFAULT_QUOTA_COOLDOWN_SECONDS = 3600
# After forwarding a signal, how long claude gets to exit before it is killed.
DEFAULT_KILL_GRACE_SECONDS = 10.0
# Claude's children may hold its stdout open after it exits; don't wait on them forever.
PUMP_DRAIN_SECONDS = 5.0
# --overlap queue: how long a run waits for the previous one by default, and how often
# it looks again.
DEFAULT_OVERLAP_WAIT_SECONDS = 600.0
OVERLAP_POLL_SECONDS = 0.5


def say(message: str) -> None:
    """One line on stderr, marked as ours so it is never mistaken for claude's."""
    print(f"opsconsole-run: {message}", file=sys.stderr, flush=True)


@dataclass
class Options:
    tag: str
    platform: str
    max_attempts: int
    claude_args: list[str]
    paths: StatePaths = field(default_factory=StatePaths.from_env)
    overlap: str = "allow"  # wrapper.formats.OVERLAP_POLICIES
    overlap_wait: float = DEFAULT_OVERLAP_WAIT_SECONDS


@dataclass
class AttemptOutcome:
    session_id: str
    exit_code: int
    end_reason: str
    cost_usd: float | None = None
    signal: int | None = None


class Wrapper:
    def __init__(self, options: Options, environ: dict[str, str] | None = None):
        self.options = options
        self.paths = options.paths
        self.env = dict(os.environ if environ is None else environ)
        self.pid = os.getpid()
        self.started = process_start_time(self.pid) or time.time()
        self.host = host_name(self.env)
        self.cwd = os.getcwd()
        self.config_dir = claude_config_dir(self.env)
        self.child: subprocess.Popen | None = None
        self.received_signal: int | None = None
        self.kill_timer: threading.Timer | None = None
        self.sidecar_written = False
        # The completion record could not be written (disk full): the sidecar, marked
        # with how the run ended, stays behind for the console instead.
        self.keep_sidecar = False
        self.claim: Path | None = None
        self.turn_fd: int | None = None  # the tag's overlap lock, held until exit
        # Claude Code's own telemetry for this fire: one trace, the wrapper's span its root.
        self.telemetry = RunTelemetry.plan(self.env, self.paths, job=options.tag, host=self.host)
        if self.telemetry.warning:
            say(f"telemetry: the console gets none from this run: {self.telemetry.warning}")

    # ------------------------------------------------------------------ the run

    def run(self) -> int:
        first_session_id = self.env.get("CLAUDE_SESSION_ID") or None
        if first_session_id and not is_session_id(first_session_id):
            say(f"CLAUDE_SESSION_ID={first_session_id!r} is not a lowercase UUID")
            return 2
        problem = self.identity_problem()
        if problem:
            say(f"{problem}; claude not started")
            return 2
        session_id = first_session_id or new_session_id()
        if first_session_id:
            in_use = self.session_id_in_use(first_session_id)
            if in_use:  # before the quota skip too: its record would overwrite the run's
                return self.refuse_session_id(first_session_id, in_use)

        stamp = read_quota_stamp(self.paths)
        if stamp is not None:
            return self.end_trace(self.skip_for_quota(session_id, stamp), "quota_skip", 0)

        try:
            for folder in (self.paths.home, self.paths.active, self.paths.spool):
                ensure_private_dir(folder)
        except (UnsafeDirectory, OSError) as exc:
            say(f"state directory not usable, claude not started: {exc}")
            return EXIT_UNSAFE_STATE_DIR

        try:
            live = self.take_turn()
            if live is not None:
                return self.end_trace(self.skip_for_overlap(session_id, live), "overlap_skip", 0)
            if first_session_id:
                in_use = self.claim_session_id(first_session_id)
                if in_use:
                    return self.refuse_session_id(first_session_id, in_use)
            return self.claude_run(session_id)
        finally:
            self.release_claim()
            self.release_turn()

    def claude_run(self, session_id: str) -> int:
        claude = self.find_claude()
        if claude is None:
            return self.record_missing_claude(session_id)
        previous_handlers = {sig: signal.signal(sig, self.on_signal) for sig in FORWARDED_SIGNALS}
        try:
            return self.attempts(claude, session_id)
        finally:
            if not self.keep_sidecar:
                self.remove_sidecar()
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)

    # ------------------------------------------------------------------ overlap

    def take_turn(self) -> str | None:
        """--overlap skip or queue: None once this run may start (the tag's lock is then
        held until the wrapper exits); otherwise which earlier run is still live. queue
        looks again until --overlap-wait has passed, then skips too."""
        policy = self.options.overlap
        if policy not in ("skip", "queue"):
            return None
        wait = self.options.overlap_wait if policy == "queue" else 0.0
        deadline = time.monotonic() + max(0.0, wait)
        said = False
        while True:
            live = self.previous_run_live()
            if live is None:
                return None
            if time.monotonic() >= deadline:
                return live
            if not said:
                say(f"{live}; waiting up to {wait:g} s for it to end (--overlap queue)")
                said = True
            time.sleep(OVERLAP_POLL_SECONDS)

    def previous_run_live(self) -> str | None:
        """Why a run of this tag is live, or None (and the tag's lock is ours). The lock
        settles two wrappers starting at once; the sidecars see a run started without
        it (--overlap allow). The kernel drops a dead wrapper's lock: nothing stale."""
        folder = self.paths.home / "overlap"
        try:
            ensure_private_dir(folder)
            lock = folder / f"{safe_tag(self.options.tag)}.lock"
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except (UnsafeDirectory, OSError) as exc:
            say(f"could not open the overlap lock ({exc}); judging by sidecars alone")
            fd = None
        held = False
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                held = True
        tag = self.options.tag
        others = [s for s in live_sidecars(self.paths, tag=tag) if s.wrapper_pid != self.pid]
        if others or held:
            if fd is not None:
                os.close(fd)  # closing drops the lock, if it was ours
            if not others:
                return f"another run of {tag} holds its turn (it is starting or queued)"
            return (
                f"the previous run of {tag} is live "
                f"(wrapper pid {others[0].wrapper_pid}, session {others[0].session_id})"
            )
        self.turn_fd = fd
        return None

    def release_turn(self) -> None:
        if self.turn_fd is not None:
            os.close(self.turn_fd)
            self.turn_fd = None

    def skip_for_overlap(self, session_id: str, live: str) -> int:
        message = f"{live}; claude not started (--overlap {self.options.overlap})"
        say(message)
        with contextlib.suppress(UnsafeDirectory, OSError):
            self.write_bare_record(session_id, "overlap_skip", EXIT_OVERLAP_SKIP, message)
        return EXIT_OVERLAP_SKIP

    # ------------------------------------------------------------------ one id, one run

    def refuse_session_id(self, session_id: str, why: str) -> int:
        # As claude itself refuses a used id; and no record is written, so the run that
        # has this id keeps its outcome.
        say(
            f"session id {session_id} is already in use ({why}); claude not started. "
            "Unset CLAUDE_SESSION_ID for a fresh one."
        )
        return EXIT_SESSION_ID_IN_USE

    def session_id_in_use(self, session_id: str) -> str | None:
        """Why `session_id` was already used: its transcript, a completion record, or a
        live wrapper's sidecar; None when none of them exists."""
        found = list(self.config_dir.glob(f"projects/*/{session_id}.jsonl"))
        if found:
            return f"its transcript exists: {found[0]}"
        spool = self.paths.spool
        records = [spool / f"{session_id}.json", spool / "rejected" / f"{session_id}.json"]
        if any(os.path.lexists(path) for path in records) or any(
            spool.glob(f"ingested/*/{session_id}.json")
        ):
            return "a completion record for it exists"
        for sidecar in live_sidecars(self.paths):
            if sidecar.session_id == session_id:
                return f"wrapper pid {sidecar.wrapper_pid} is running it"
        return None

    def claim_session_id(self, session_id: str) -> str | None:
        """Make `session_id` ours with an O_EXCL claim file (two wrappers starting at once
        both pass session_id_in_use); why not, or None once claimed."""
        in_use = self.session_id_in_use(session_id)
        if in_use:
            return in_use
        claims = self.paths.home / "claims"
        try:
            ensure_private_dir(claims)
            fd = os.open(claims / session_id, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return "another wrapper has claimed it"
        except (UnsafeDirectory, OSError) as exc:
            say(f"could not claim the session id ({exc}); going on without the claim")
            return None
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{self.pid}\n")
        self.claim = claims / session_id
        return None

    def release_claim(self) -> None:
        if self.claim is not None:
            with contextlib.suppress(FileNotFoundError):
                self.claim.unlink()
            self.claim = None

    def identity_problem(self) -> str | None:
        """Why the names this run would be recorded under cannot be (too long, a NUL...):
        refused before anything is written, rather than a record the console rejects."""
        for name, value, origin in (
            ("script_tag", self.options.tag, "--tag"),
            ("platform", self.options.platform, "--platform (or $OPSCONSOLE_PLATFORM)"),
            ("host", self.host, "the host name ($OPSCONSOLE_HOST_NAME)"),
            ("cwd", self.cwd, "the working directory"),
            ("claude_config_dir", str(self.config_dir), "$CLAUDE_CONFIG_DIR"),
        ):
            problem = field_problem(name, value)
            if problem:
                return f"{origin}: {problem}"
        return None

    def attempts(self, claude: str, session_id: str) -> int:
        retry_of: str | None = None
        earlier_cost: float | None = None
        outcome = None
        for attempt in range(1, self.options.max_attempts + 1):
            outcome = self.attempt(claude, session_id, attempt, retry_of, earlier_cost)
            if outcome.cost_usd is not None:
                earlier_cost = (earlier_cost or 0.0) + outcome.cost_usd
            if outcome.end_reason != "refused" or self.received_signal is not None:
                break
            if attempt < self.options.max_attempts:
                say(
                    f"attempt {attempt} ({session_id}) was refused; "
                    f"retrying under a fresh session id (attempt {attempt + 1})"
                )
                retry_of, session_id = session_id, new_session_id()
        assert outcome is not None  # max_attempts >= 1
        return self.end_trace(outcome.exit_code, outcome.end_reason, attempt)

    def end_trace(self, exit_code: int, end_reason: str, attempts: int) -> int:
        """Close the fire's root span and report it; the exit code passes through."""
        root = self.telemetry.root
        root.end_ns = time.time_ns()
        root.attributes.update(
            {
                "opsconsole.end_reason": end_reason,
                "opsconsole.exit_code": exit_code,
                "opsconsole.attempts": attempts,
            }
        )
        root.error = end_reason != "succeeded"
        self.telemetry.send(root)
        return exit_code

    def attempt(
        self,
        claude: str,
        session_id: str,
        attempt: int,
        retry_of: str | None,
        earlier_cost: float | None,
    ) -> AttemptOutcome:
        started_at = utc_now_iso()
        self.keep_sidecar = False  # a fresh sidecar for this attempt
        sidecar = Sidecar(
            session_id=session_id,
            script_tag=self.options.tag,
            wrapper_pid=self.pid,
            wrapper_started=self.started,
            started_at=started_at,
            attempt=attempt,
            platform=self.options.platform,
            host=self.host,
            cwd=self.cwd,
            claude_config_dir=str(self.config_dir),
            transcript_path=str(transcript_path(self.config_dir, self.cwd, session_id)),
            retry_of=retry_of,
            orchestrator_cost_usd=fit_number("orchestrator_cost_usd", earlier_cost),
        )
        self.write_sidecar(sidecar)
        span = self.telemetry.attempt_span(session_id, attempt)
        child_env = self.telemetry.child_env(dict(self.env, CLAUDE_SESSION_ID=session_id), span)
        stdout_read, stdout_write = os.pipe()
        stderr_read, stderr_write = os.pipe()
        try:
            self.child = subprocess.Popen(
                [claude, "--session-id", session_id, *self.options.claude_args],
                stdout=stdout_write,
                stderr=stderr_write,
                env=child_env,
            )
        except OSError as exc:
            for fd in (stdout_read, stderr_read):
                os.close(fd)
            say(f"could not start {claude}: {exc}")
            self.record(sidecar, started_at, EXIT_NO_CLAUDE, "failed", Observed(), error=str(exc))
            self.end_attempt_span(span, "failed", EXIT_NO_CLAUDE)
            return AttemptOutcome(session_id, EXIT_NO_CLAUDE, "failed")
        finally:
            os.close(stdout_write)
            os.close(stderr_write)
        pumps = Pumps()
        pumps.start(stdout_read, stderr_read)
        sidecar.claude_pid = self.child.pid
        sidecar.claude_started = process_start_time(self.child.pid)
        self.write_sidecar(sidecar)
        if self.received_signal is not None:  # arrived before claude's PID was known
            self.forward(self.received_signal)

        returncode = self.wait_for_child()
        self.child = None
        observed = pumps.join(PUMP_DRAIN_SECONDS)

        exit_code = 128 - returncode if returncode < 0 else returncode
        if self.received_signal is not None:
            end_reason = "signalled"
            exit_code = 128 + self.received_signal
        elif observed.refused:
            end_reason = "refused"
        elif returncode == 0 and not (observed.result or {}).get("is_error"):
            end_reason = "succeeded"
        else:
            end_reason = "failed"

        error = None
        limit_text = observed.usage_limit_text() if end_reason == "failed" else None
        if limit_text is not None:
            error = self.set_quota_stamp(session_id, limit_text, observed.reset_epoch())
        record = self.record(
            sidecar,
            started_at,
            exit_code,
            end_reason,
            observed,
            error=error,
            signal_number=self.received_signal,
        )
        self.end_attempt_span(span, end_reason, exit_code)
        return AttemptOutcome(
            session_id, exit_code, end_reason, record.cost_usd, self.received_signal
        )

    def end_attempt_span(self, span: Span, end_reason: str, exit_code: int) -> None:
        span.end_ns = time.time_ns()
        span.attributes.update(
            {"opsconsole.end_reason": end_reason, "opsconsole.exit_code": exit_code}
        )
        span.error = end_reason != "succeeded"
        self.telemetry.send(span)

    def wait_for_child(self) -> int:
        assert self.child is not None
        returncode = self.child.wait()
        if self.kill_timer is not None:
            self.kill_timer.cancel()
            self.kill_timer = None
        return returncode

    def kill_stubborn_child(self, child: subprocess.Popen) -> None:
        if child.poll() is None:
            say(f"claude (pid {child.pid}) did not exit after the signal; killing it")
            with contextlib.suppress(ProcessLookupError):
                child.kill()

    # ------------------------------------------------------------------ signals

    def on_signal(self, signum: int, _frame) -> None:
        first = self.received_signal is None
        self.received_signal = signum
        if first:
            say(f"received {signal.Signals(signum).name}; passing it to claude")
        self.forward(signum)

    def forward(self, signum: int) -> None:
        """Pass the signal on, and give claude a grace period before it is killed."""
        child = self.child
        if child is None or child.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signum)
        if self.kill_timer is None:
            # wait() resumes after a handler (PEP 475), so the deadline runs on a timer.
            grace = float(
                self.env.get("OPSCONSOLE_KILL_GRACE_SECONDS") or DEFAULT_KILL_GRACE_SECONDS
            )
            self.kill_timer = threading.Timer(grace, self.kill_stubborn_child, [child])
            self.kill_timer.daemon = True
            self.kill_timer.start()

    # ------------------------------------------------------------------ files

    def write_sidecar(self, sidecar: Sidecar) -> None:
        try:
            check_record(sidecar)
        except FormatError as exc:  # identity_problem() ran first: this is a bug of ours
            say(f"sidecar not written, it would be rejected: {exc}")
            return
        try:
            write_json_atomic(self.paths.sidecar_path(self.pid), sidecar.to_dict())
            self.sidecar_written = True
        except OSError as exc:
            # The run matters more than its visibility: say so and carry on.
            say(f"could not write sidecar: {exc}")

    def remove_sidecar(self) -> None:
        if self.sidecar_written:
            with contextlib.suppress(FileNotFoundError):
                self.paths.sidecar_path(self.pid).unlink()

    def record(
        self,
        sidecar: Sidecar,
        started_at: str,
        exit_code: int,
        end_reason: str,
        observed: Observed,
        *,
        error: str | None = None,
        signal_number: int | None = None,
    ) -> SpoolRecord:
        result = observed.result or {}
        cost = result.get("total_cost_usd")
        record = SpoolRecord(
            session_id=sidecar.session_id,
            script_tag=sidecar.script_tag,
            platform=sidecar.platform,
            host=sidecar.host,
            attempt=sidecar.attempt,
            started_at=started_at,
            ended_at=utc_now_iso(),
            end_reason=end_reason,
            exit_code=exit_code,
            retry_of=sidecar.retry_of,
            wrapper_pid=self.pid,
            cwd=sidecar.cwd,
            claude_config_dir=sidecar.claude_config_dir,
            transcript_path=sidecar.transcript_path,
            signal=signal_number,
            error=fit_text("error", error),
            # What claude printed is made to fit the record's limits (formats.FIELD_LIMITS):
            # a value that does not fit is unknown, not a record the console rejects.
            is_error=_typed(result.get("is_error"), bool),
            subtype=fit_name("subtype", result.get("subtype")),
            stop_reason=fit_name("stop_reason", result.get("stop_reason")),
            api_error_status=fit_number("api_error_status", result.get("api_error_status")),
            num_turns=fit_number("num_turns", result.get("num_turns")),
            duration_ms=fit_number("duration_ms", result.get("duration_ms")),
            cost_usd=fit_number("cost_usd", cost),
            usage=fit_usage(result.get("usage")),
            model=fit_name("model", observed.model),
            # Why it ended, in claude's own words (bounded and redacted by fit_reason).
            claude_pid=sidecar.claude_pid,
            claude_started=sidecar.claude_pid is not None,
            stderr_tail=fit_tail("stderr_tail", observed.stderr_tail),
            stdout_tail=fit_tail("stdout_tail", observed.stdout_text_tail),
            result_text=fit_message("result_text", result.get("result")),
            terminal_reason=fit_name("terminal_reason", result.get("terminal_reason")),
            errors=fit_list("errors", result.get("errors")),
            permission_denials=fit_list("permission_denials", result.get("permission_denials")),
            last_api_error=fit_message("last_api_error", observed.last_api_error()),
        )
        transcript = self.find_transcript(sidecar)
        record.transcript_written = transcript is not None
        record.archive_path = self.archive_transcript(sidecar, transcript)
        fit_reason(record)
        if not self.write_spool(record) and self.sidecar_written:
            self.mark_sidecar_ended(sidecar, record)
        return record

    def write_spool(self, record: SpoolRecord) -> bool:
        try:
            check_record(record)
        except FormatError as exc:
            # Still written: the console quarantines it with this reason, nothing is lost.
            say(f"the completion record does not fit its format: {exc}")
        try:
            write_json_atomic(self.paths.spool_path(record.session_id), record.to_dict())
        except OSError as exc:
            say(f"could not write the completion record: {exc}")
            return False
        return True

    def mark_sidecar_ended(self, sidecar: Sidecar, record: SpoolRecord) -> None:
        """No completion record (disk full?): say in the sidecar how the run ended and leave
        it behind, so the console records that outcome instead of concluding 'killed'."""
        sidecar.ended_at = record.ended_at
        sidecar.end_reason = record.end_reason
        sidecar.exit_code = record.exit_code
        path = self.paths.sidecar_path(self.pid)
        try:
            write_json_atomic(path, sidecar.to_dict())
        except OSError:
            try:  # no room for a temp file: rewrite it in its own blocks
                overwrite_json_in_place(path, sidecar.to_dict())
            except OSError as exc:
                say(f"could not mark the sidecar either ({exc}): the run may show as killed")
                return
        self.keep_sidecar = True
        say(f"the sidecar {path} keeps this run's outcome ({record.end_reason}) for the console")

    def find_transcript(self, sidecar: Sidecar) -> Path | None:
        source = Path(sidecar.transcript_path)
        if source.is_file():
            return source
        # Long cwds get a hash suffix we cannot compute: find the file by session id.
        found = list(self.config_dir.glob(f"projects/*/{sidecar.session_id}.jsonl"))
        return found[0] if found else None

    def archive_transcript(self, sidecar: Sidecar, source: Path | None) -> str | None:
        if source is None:
            return None
        dest = self.paths.archive_path(sidecar.started_at, sidecar.script_tag, sidecar.session_id)
        try:
            copy_into_archive(source, dest)
        except (OSError, UnsafeDirectory) as exc:
            say(f"could not archive the transcript: {exc}")
            return None
        return str(dest)

    # ------------------------------------------------------------------ special endings

    def find_claude(self) -> str | None:
        configured = self.env.get("OPSCONSOLE_CLAUDE_BIN")
        if configured:
            return configured if os.access(configured, os.X_OK) else None
        return shutil.which("claude", path=self.env.get("PATH"))

    def record_missing_claude(self, session_id: str) -> int:
        configured = self.env.get("OPSCONSOLE_CLAUDE_BIN")
        where = (
            f"$OPSCONSOLE_CLAUDE_BIN={configured} is not an executable"
            if configured
            else "$OPSCONSOLE_CLAUDE_BIN is not set"
        )
        message = f"claude not found: {where}, and there is no `claude` on PATH"
        say(message)
        self.write_bare_record(session_id, "failed", EXIT_NO_CLAUDE, message)
        return EXIT_NO_CLAUDE

    def skip_for_quota(self, session_id: str, stamp: QuotaStamp) -> int:
        message = (
            f"quota stamp holds until {stamp.until} ({stamp.reason}); claude not started. "
            f"Clear it with: opsconsole-run --clear-quota-stamp"
        )
        say(message)
        with contextlib.suppress(UnsafeDirectory, OSError):
            ensure_private_dir(self.paths.spool)
            self.write_bare_record(session_id, "quota_skip", EXIT_QUOTA_SKIP, message)
        return EXIT_QUOTA_SKIP

    def write_bare_record(self, session_id: str, end_reason: str, exit_code: int, error: str):
        now = utc_now_iso()
        self.write_spool(
            SpoolRecord(
                session_id=session_id,
                script_tag=self.options.tag,
                platform=self.options.platform,
                host=self.host,
                attempt=1,
                started_at=now,
                ended_at=now,
                end_reason=end_reason,
                exit_code=exit_code,
                wrapper_pid=self.pid,
                cwd=self.cwd,
                claude_config_dir=str(self.config_dir),
                error=fit_text("error", error),
                claude_started=False,
                transcript_written=False,
            )
        )

    def set_quota_stamp(self, session_id: str, reason: str, reset_epoch: int | None) -> str:
        now = datetime.now(UTC)
        if reset_epoch is not None and reset_epoch > now.timestamp():
            until = datetime.fromtimestamp(reset_epoch, UTC)
        else:
            cooldown = int(
                self.env.get("OPSCONSOLE_QUOTA_COOLDOWN_SECONDS") or DEFAULT_QUOTA_COOLDOWN_SECONDS
            )
            until = now + timedelta(seconds=cooldown)
        stamp = QuotaStamp(
            until=until.isoformat(timespec="seconds").replace("+00:00", "Z"),
            set_at=utc_now_iso(),
            reason=fit_text("reason", reason) or "usage limit",
            session_id=session_id,
            script_tag=self.options.tag,
        )
        try:
            write_json_atomic(self.paths.quota_stamp, stamp.to_dict())
        except OSError as exc:
            say(f"could not write the quota stamp: {exc}")
        message = f"usage limit hit; every wrapper skips (exit 79) until {stamp.until}"
        say(message)
        return f"{reason} — {message}"


def _typed(value, kind: type):
    if kind is int and isinstance(value, bool):
        return None
    return value if isinstance(value, kind) else None
