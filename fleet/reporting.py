"""Report mode inside the monitor: what a sample owes the console, kept until acknowledged.

Local mode (`Monitor.sync`) writes history into this host's database. Report mode
writes nothing here: it notes what changed (runs started, sidecars whose owners
are gone, unwrapped sessions that ended, leftovers), and each report carries it
to the console with the sample: what changed of it since the sample the console
said it holds, every sample while anything is live or waiting, else a heartbeat
every OPSCONSOLE_HEARTBEAT_SECONDS. Spool files, sidecars of vanished runs and
pending events stay on disk until the console's answer names them, so nothing
is lost to a console restart or a network cut, and a monitor restart re-sends
what was not acknowledged (the console records by session id and event key:
twice changes nothing).

One piece: the host's half of the report protocol; what a report carries and what its
acknowledgement releases must be read side by side.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice

from django.conf import settings

from fleet.report import (
    HOST_RULE_ACTOR,
    MAX_COMPLETIONS_PER_REPORT,
    MAX_EVENTS_PER_REPORT,
    MAX_HEARTBEAT_SECONDS,
    MAX_ORIGINS_PER_REPORT,
    REPORT_FORMAT,
    Reporter,
    ReportError,
)
from fleet.sample_delta import says_nothing_new, state_delta
from fleet.telemetry_outbox import TelemetryOutbox
from jobs_app.collectors import collect_all
from jobs_app.linking import names_origin
from jobs_app.models import Job
from monitor_app import published
from monitor_app.job_controls import execute
from monitor_app.models import JOB_ACTION_KINDS
from monitor_app.monitor import Cadence, Leftovers, Monitor
from monitor_app.snapshot import Snapshot
from monitor_app.stopping import kill_leftover_processes, stop_leftovers, stop_session
from monitor_app.telemetry_inbox import Drained
from sessions_app import output_checks, transcript_store
from sessions_app.ingest import _move_aside, pending_spool_files
from sessions_app.remote_transcripts import MAX_CHUNK_BYTES, MAX_REPORT_TRANSCRIPT_BYTES
from wrapper.formats import (
    FormatError,
    Sidecar,
    ensure_private_dir,
    parse_iso,
    read_spool_record,
    write_json_atomic,
)

log = logging.getLogger(__name__)

# A job collection the console acknowledged is sent again only when it changes, so an
# idle host's heartbeat stays a heartbeat; and after this long even unchanged, so a
# console that lost it (a database restored from a backup) has it again.
JOBS_RESENT_AFTER = timedelta(minutes=10)


@dataclass
class SentSample:
    """A sample as reported: once the console says it holds it, the next is a delta of it."""

    seq: int
    monitor_pid: int
    state: dict  # its state document (monitor_app.published.state_dict)
    heartbeat_seconds: float | None  # declared with it: nothing live, nothing to send
    sent_at: datetime


class ReportState:
    def __init__(self, monitor: Monitor, reporter: Reporter) -> None:
        self.monitor = monitor
        self.reporter = reporter
        monitor.events.save()
        self.states: dict[str, str] = {}  # session id -> state last reported live
        self.gone: dict[str, Sidecar] = {}  # sidecars whose owners are gone, until acked
        self.results: list[dict] = []  # outcomes of operator requests, until reported
        # Those reached before this round's sample was taken: an outcome goes with a sample
        # taken after it, so the console sees the run a "run now" started with its answer.
        self.results_sampled: set[object] = set()
        self.results_lock = threading.Lock()
        # The sample last reported: what a request pushed between reports acts on
        # (fleet.action_poll); the console knows of no run that is not in it.
        self.latest: Snapshot | None = None
        self.threads: list[threading.Thread] = []
        self.last_error: ReportError | None = None
        self.last_answer: dict | None = None
        self.reports = 0
        self.jobs: list[dict] | None = None  # the latest collection, until reported
        # The collection the console last acknowledged, and when.
        self.jobs_acknowledged: tuple[list[dict], datetime] | None = None
        # (scheduler, label) -> the job as this host's collector last saw it: what the
        # console's requests act on (never paths or commands the console sends).
        self.collected: dict[tuple[str, str], object] = {}
        self.known_labels: dict[str, set[str]] = {}
        self.collecting = Cadence()
        # The console's rules for this host (job time limits, leftover rule), from its
        # latest answer; this host's watchdog and leftover rule wait until it is known.
        self.policy: dict | None = None
        self.watching = Cadence()
        self.stopping: set[str] = set()
        self.stops: list[dict] = []  # runs the watchdog is stopping, until reported
        self.audits: list[dict] = []  # what the host's rules did, until reported
        self.leftovers_file = monitor.paths.home / "monitor" / "leftovers.json"
        self.load_leftovers()
        # Transcripts being shipped: session id -> [path, bytes the console holds, live?].
        self.transcripts: dict[str, list] = {}
        self.transcripts_paused_until: datetime | None = None
        # session id -> its output checks' verdict, judged here once (the files are here)
        # and sent with its completion record until the console acknowledges it.
        self.verdicts: dict[str, dict | None] = {}
        # tag -> its job's output checks, from the console's latest answer; kept on disk
        # so a restarted monitor judges its backlog before that answer comes.
        self.checks_file = monitor.paths.home / "monitor" / "output-checks.json"
        self.checks: dict[str, dict] | None = self.load_checks()
        # Claude Code's telemetry of this host's runs (the receiver's), until acknowledged.
        self.telemetry = TelemetryOutbox(monitor.paths.home / "monitor" / "telemetry-outbox.json")
        # session id -> its origin as sent, until the console has it (fleet.report_origins
        # makes the join); then None, kept while the run is live or its end unsent.
        self.origins: dict[str, dict | None] = {}
        # The sample the console said it holds (the next report sends what changed since),
        # and the one in the report being sent. None: the next report is a full one.
        self.base: SentSample | None = None
        self.sending: SentSample | None = None

    # ------------------------------------------------------------------ noting

    def note(self, snapshot: Snapshot, gone: list[Sidecar], now: datetime) -> None:
        monitor = self.monitor
        live_ids = set()
        for live in snapshot.sessions:
            live_ids.add(live.session_id)
            before = self.states.get(live.session_id)
            if before != live.state:
                monitor.event_for_live(live, before, now)
                self.states[live.session_id] = live.state
        for session_id in [s for s in self.states if s not in live_ids]:
            del self.states[session_id]
        for sidecar in gone:
            self.gone.setdefault(sidecar.session_id, sidecar)
        self.note_origins(snapshot, live_ids)
        with self.results_lock:
            self.results_sampled = {result["id"] for result in self.results}
        if monitor.leftovers or self.leftovers_file.exists():
            self.save_leftovers()
        self.follow_transcripts(snapshot, live_ids)
        if monitor.cadences and self.collecting.due(now, settings.OPSCONSOLE_COLLECT_SECONDS):
            self.collect_jobs(now)
        if self.policy is not None and monitor.cadences:
            if self.watching.due(now, settings.OPSCONSOLE_WATCHDOG_SECONDS):
                self.watchdog(snapshot, now)
            self.leftover_rule(now)

    def note_origins(self, snapshot: Snapshot, live_ids: set[str]) -> None:
        """Each live run's origin, read by the monitor's join (monitor_app.job_join), to be
        sent once. A cron entry this host has not collected is collected now, so the job
        the console ties the run to is the entry's own (its label), as on a console."""
        for live in snapshot.sessions:
            if live.session_id in self.origins:
                continue
            found = self.monitor.join.origin_of(live.session_id)
            if found is None:
                continue
            origin, command = found
            item = {"session_id": live.session_id, **origin.record(), "run_command": command}
            self.origins[live.session_id] = item
            if origin.scheduler == "cron" and not any(
                job.scheduler == "cron" and names_origin(job.command, origin)
                for job in self.collected.values()
            ):
                self.collecting.reset()
        keep = live_ids | set(self.gone) | {e.sidecar.session_id for e in self.monitor.endings}
        for session_id in [s for s in self.origins if s not in keep]:
            del self.origins[session_id]

    def note_telemetry(self, drained: Drained) -> None:
        """What the receiver took since the last sample: it goes with the reports."""
        dropped = self.telemetry.add(drained)
        if self.monitor.telemetry is not None:
            for kind, n in dropped.items():
                self.monitor.telemetry.count(f"dropped: {kind} waiting for the console", n)

    def rule_for(self, tag: str) -> dict:
        return (self.policy or {}).get("tags", {}).get(tag, {})

    def watchdog(self, snapshot: Snapshot, now: datetime) -> None:
        """Runs past their job's limit (the console's), stopped here as on a console."""
        default = self.policy.get("default_max_runtime_minutes", 45)
        for live in snapshot.sessions:
            if live.session_id in self.stopping:
                continue
            minutes = self.rule_for(live.sidecar.script_tag).get("max_runtime_minutes", default)
            runtime = now - live.started_at
            if runtime <= timedelta(minutes=minutes):
                continue
            self.stopping.add(live.session_id)
            self.stops.append(
                {"session_id": live.session_id, "actor": HOST_RULE_ACTOR, "reason": "watchdog"}
            )
            detail = {"runtime_minutes": int(runtime.total_seconds() // 60), "limit": minutes}
            thread = threading.Thread(
                target=self.stop_overdue, args=(live, detail), name="watchdog", daemon=True
            )
            self.threads = [t for t in self.threads if t.is_alive()] + [thread]
            thread.start()

    def stop_overdue(self, live, detail: dict) -> None:
        outcome = stop_session(
            live,
            actor="watchdog",
            reason="watchdog",
            grace=settings.OPSCONSOLE_STOP_GRACE_SECONDS,
            on_record=False,
        )
        with self.results_lock:
            self.audits.append(
                {
                    "actor": HOST_RULE_ACTOR,
                    "action": "stop",
                    "target": live.session_id,
                    "script_tag": live.sidecar.script_tag,
                    "ok": not outcome.errors,
                    "output": "\n".join(outcome.errors),
                    "detail": {
                        **detail,
                        "terminated": outcome.terminated,
                        "killed": outcome.killed,
                    },
                }
            )

    def leftover_rule(self, now: datetime) -> None:
        """TERM a run's leftovers after the grace period, KILL a stop-grace later."""
        grace = timedelta(seconds=self.policy.get("leftover_grace_seconds", 120))
        stop_grace = timedelta(seconds=settings.OPSCONSOLE_STOP_GRACE_SECONDS)
        for item in list(self.monitor.leftovers.values()):
            if now - item.ended_at < grace:
                continue
            if item.term_sent_at is not None and now - item.term_sent_at < stop_grace:
                continue
            rule = self.rule_for(item.script_tag)
            if not rule.get("kill_leftovers", self.policy.get("kill_leftovers", True)):
                continue
            final = item.term_sent_at is not None
            outcome = kill_leftover_processes(
                list(item.members), signal.SIGKILL if final else signal.SIGTERM
            )
            item.term_sent_at = item.term_sent_at or now
            item.killed_by = "watchdog (leftover rule)"
            with self.results_lock:
                self.audits.append(
                    {
                        "actor": HOST_RULE_ACTOR,
                        "action": "kill_leftovers",
                        "target": item.session_id,
                        "script_tag": item.script_tag,
                        "ok": not outcome.errors,
                        "output": "\n".join(outcome.errors),
                        "detail": {
                            "signal": "KILL" if final else "TERM",
                            "signalled": outcome.terminated + outcome.killed,
                            "grace_seconds": grace.total_seconds(),
                        },
                    }
                )

    def load_leftovers(self) -> None:
        """Leftovers followed before a restart are followed again (no database to ask)."""
        try:
            items = json.loads(self.leftovers_file.read_text())["leftovers"]
            for item in items:
                members = {
                    (int(m["pid"]), float(m["started"])): str(m["cmdline"]) for m in item["members"]
                }
                self.monitor.leftovers.setdefault(
                    item["session_id"],
                    Leftovers(
                        item["session_id"],
                        item["script_tag"],
                        item["host"],
                        parse_iso(item["ended_at"]),
                        members,
                    ),
                )
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("leftovers in %s unreadable (%s): not followed", self.leftovers_file, exc)

    def save_leftovers(self) -> None:
        items = [
            {
                "session_id": item.session_id,
                "script_tag": item.script_tag,
                "host": item.host,
                "ended_at": item.ended_at.isoformat(),
                "members": item.as_record(),
            }
            for item in self.monitor.leftovers.values()
        ]
        try:
            if items:
                ensure_private_dir(self.leftovers_file.parent)
                write_json_atomic(self.leftovers_file, {"leftovers": items})
            else:
                self.leftovers_file.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("leftovers not kept on disk: %s", exc)

    def collect_jobs(self, now: datetime) -> None:
        """This host's scheduler jobs, for the console to record under this host."""
        try:
            collections = collect_all(now, self.known_labels)
        except Exception:  # a collector bug must not stop sampling
            log.exception("job collection failed")
            return
        jobs = []
        collected = {}
        for collection in collections:
            for job in collection.jobs:
                job.host = self.monitor.host  # the name this host reports under
                collected[(job.scheduler, job.label)] = job
            self.known_labels[collection.scheduler] = {j.label for j in collection.jobs}
            jobs.append(
                {
                    "scheduler": collection.scheduler,
                    "errors": collection.errors,
                    "jobs": [
                        {
                            k: v.isoformat() if isinstance(v, datetime) else v
                            for k, v in asdict(job).items()
                        }
                        for job in collection.jobs
                    ],
                }
            )
        self.collected = collected
        held = self.jobs_acknowledged
        unchanged = held is not None and held[0] == jobs and now - held[1] < JOBS_RESENT_AFTER
        self.jobs = None if unchanged else jobs

    def follow_transcripts(self, snapshot: Snapshot, live_ids: set[str]) -> None:
        for live in snapshot.sessions:
            if live.session_id not in self.transcripts:
                path = transcript_store.find_live_transcript(live.sidecar)
                if path is not None:
                    self.transcripts[live.session_id] = [path, 0, True]
        for session_id, follow in self.transcripts.items():
            follow[2] = session_id in live_ids

    def transcript_chunks(self, now: datetime) -> list[dict]:
        """New bytes of each followed transcript, from what the console holds (bounded)."""
        if self.transcripts_paused_until and now < self.transcripts_paused_until:
            return []  # over the host's transcript budget: the console said when to resume
        budget = MAX_REPORT_TRANSCRIPT_BYTES
        chunks = []
        for session_id, (path, offset, _live) in list(self.transcripts.items()):
            if budget <= 0:
                break
            try:
                size = path.stat().st_size
                if size <= offset:
                    continue
                with path.open("rb") as handle:
                    handle.seek(offset)
                    data = handle.read(min(MAX_CHUNK_BYTES, budget, size - offset))
            except OSError:
                continue
            budget -= len(data)
            chunks.append(
                {
                    "session_id": session_id,
                    "offset": offset,
                    "data": base64.b64encode(data).decode(),
                }
            )
        return chunks

    # ------------------------------------------------------------------ reporting

    def payload(self, snapshot: Snapshot, now: datetime) -> dict:
        monitor = self.monitor
        paths = monitor.paths
        completions, rejected_here = [], 0
        for path in pending_spool_files(paths)[:MAX_COMPLETIONS_PER_REPORT]:
            try:
                completions.append(asdict(self.judged(read_spool_record(path))))
            except FormatError as exc:
                log.warning("spool record %s rejected: %s (moved to spool/rejected/)", path, exc)
                _move_aside(path, paths.spool / "rejected")
                rejected_here += 1
        shipped = {c["session_id"] for c in completions}
        # Dead runs go a batch per report, like completions: ten thousand at once would
        # make one report too large for the console ever to take.
        vanished = list(
            islice(
                (
                    sidecar.to_dict()
                    for session_id, sidecar in self.gone.items()
                    if session_id not in shipped and not paths.spool_path(session_id).exists()
                ),
                MAX_COMPLETIONS_PER_REPORT,
            )
        )
        snapshot.rejected_spool_files = rejected_here
        with self.results_lock:
            results = [r for r in self.results if r["id"] in self.results_sampled]
            audits = list(self.audits)
        rollups, spans = self.telemetry.batch(now, {s.session_id for s in snapshot.sessions})
        items = {
            "completions": completions,
            "vanished": vanished,
            "endings": [
                {
                    "sidecar": e.sidecar.to_dict(),
                    "status": e.status,
                    "ended_at": e.ended_at.isoformat(),
                }
                for e in monitor.endings[:MAX_COMPLETIONS_PER_REPORT]
            ],
            "leftovers": dict(monitor.leftover_writes),
            "events": [asdict(e) for e in monitor.events.pending[:MAX_EVENTS_PER_REPORT]],
            "action_results": results,
            "transcripts": self.transcript_chunks(now),
            "jobs": self.jobs,
            "stops": list(self.stops),
            "audits": audits,
            "telemetry_rollups": rollups,
            "telemetry_spans": spans,
            "origins": [item for item in self.origins.values() if item][:MAX_ORIGINS_PER_REPORT],
        }
        idle = not snapshot.sessions and not any(items.values())
        return {
            "format": REPORT_FORMAT,
            "host": monitor.host,
            "monitor_version": published.MONITOR_VERSION,
            "sent_at": now.isoformat(),
            "sample": self.sample(snapshot, now, idle),
            **items,
        }

    def sample(self, snapshot: Snapshot, now: datetime, idle: bool) -> dict:
        """The sample for the console: what changed since the one it holds, or whole when
        it holds none of this monitor's. `idle` (nothing live, nothing else to send): the
        host declares its heartbeat, the longest it will now go without a report."""
        monitor, pid = self.monitor, os.getpid()
        state = published.state_dict(snapshot)
        heartbeat = min(settings.OPSCONSOLE_HEARTBEAT_SECONDS, MAX_HEARTBEAT_SECONDS)
        heartbeat = heartbeat if idle and heartbeat > 0 else None
        sample = {
            "seq": monitor.seq,
            "taken_at": snapshot.taken_at.isoformat(),
            "interval_seconds": snapshot.interval_seconds,
            "sample_ms": snapshot.scan_ms,
            "monitor_pid": pid,
        }
        if heartbeat is not None:
            sample["heartbeat_seconds"] = heartbeat
        base = self.base
        if base is not None and base.monitor_pid == pid:
            sample["base"] = {"seq": base.seq, "monitor_pid": base.monitor_pid}
            sample.update(state_delta(base.state, state))
        else:
            document = published.build(snapshot, monitor.host, monitor.seq, pid)
            sample.update(
                etag=document.etag,
                api_document=document.api_document,
                state_document=document.state_document,
            )
        self.sending = SentSample(monitor.seq, pid, state, heartbeat, now)
        return sample

    def quiet(self, payload: dict, now: datetime) -> bool:
        """Nothing to say and a heartbeat not yet due: the sample is not sent. Only when the
        console holds a sample that declared the heartbeat (so it waits as long)."""
        base, sample = self.base, payload["sample"]
        if base is None or not base.heartbeat_seconds or "base" not in sample:
            return False
        if not sample.get("heartbeat_seconds") or not says_nothing_new(sample):
            return False
        return timedelta(0) <= now - base.sent_at < timedelta(seconds=base.heartbeat_seconds)

    def judged(self, record):
        """The record with its job's output checks judged on this host, where its files
        are. The checks come with the console's rules (host_policy) and are kept on disk:
        only a host that never had an answer sends its first runs unjudged."""
        if self.checks is None:
            return record
        if record.session_id not in self.verdicts:
            checks = self.checks.get(record.script_tag) or {}
            self.verdicts[record.session_id] = output_checks.judge(checks, record)
        record.output_check = self.verdicts[record.session_id]
        return record

    def load_checks(self) -> dict[str, dict] | None:
        try:
            checks = json.loads(self.checks_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("output checks in %s unreadable (%s)", self.checks_file, exc)
            return None
        return checks if isinstance(checks, dict) else None

    def keep_checks(self, policy: dict) -> None:
        tags = policy.get("tags") if isinstance(policy.get("tags"), dict) else {}
        checks = {
            str(tag): rule["checks"]
            for tag, rule in tags.items()
            if isinstance(rule, dict) and isinstance(rule.get("checks"), dict) and rule["checks"]
        }
        if checks == self.checks:
            return
        self.checks = checks
        try:
            ensure_private_dir(self.checks_file.parent)
            write_json_atomic(self.checks_file, checks)
        except OSError as exc:  # UnsafeDirectory too: judged from memory until a restart
            log.warning("could not keep the output checks in %s: %s", self.checks_file, exc)

    def report(self, snapshot: Snapshot, now: datetime) -> bool:
        monitor = self.monitor
        self.latest = snapshot
        payload = self.payload(snapshot, now)
        if self.quiet(payload, now):
            return True
        try:
            answer = self.reporter.send(payload)
        except ReportError as exc:
            if self.last_error is None or str(self.last_error) != str(exc):
                log.warning("report not taken (kept for the next one): %s", exc)
            self.last_error = exc
            snapshot.database_error = f"console: {exc}"
            monitor.events.save()
            self.telemetry.save(now)
            return False
        if self.last_error is not None:
            log.info("console reachable again: pending history sent")
        self.last_error, self.last_answer = None, answer
        self.reports += 1
        self.acknowledged(payload, answer.get("ack") or {}, now)
        self.held(answer.get("base"))
        if isinstance(answer.get("policy"), dict):
            self.policy = answer["policy"]
            self.keep_checks(self.policy)
        live_ids = {s.session_id for s in snapshot.sessions}
        self.stopping &= live_ids
        for action in answer.get("actions") or []:
            self.start_action(action, snapshot)
        return True

    def held(self, base: object) -> None:
        """The console's answer names the sample it now holds: this report's, or none of
        ours (a delta of a sample it no longer held, a console that keeps none): then the
        next report is a full one."""
        sent = self.sending
        named = (base.get("seq"), base.get("monitor_pid")) if isinstance(base, dict) else None
        self.base = sent if sent is not None and named == (sent.seq, sent.monitor_pid) else None

    def acknowledged(self, payload: dict, ack: dict, now: datetime) -> None:
        monitor = self.monitor
        paths = monitor.paths
        recorded = set(ack.get("sessions") or [])
        for record in payload["completions"]:
            session_id = record["session_id"]
            if session_id in recorded:
                day = record["started_at"][:10] if record["started_at"][:4].isdigit() else "x"
                _move_aside(paths.spool_path(session_id), paths.spool / "ingested" / day)
                self.verdicts.pop(session_id, None)
        refused = refused_items(ack)
        for session_id in set(ack.get("rejected") or []) | refused["completion"]:
            self.verdicts.pop(str(session_id), None)
            spool_file = paths.spool_path(str(session_id))
            if spool_file.exists():
                _move_aside(spool_file, paths.spool / "rejected")
        # The console keeps what it refused, with why (its Hosts page): sending it again
        # would be refused again, every sample.
        for session_id in refused["vanished"] | refused["ending"]:
            sidecar = self.gone.pop(session_id, None)
            if sidecar is not None:
                paths.sidecar_path(sidecar.wrapper_pid).unlink(missing_ok=True)
        monitor.endings = [
            e for e in monitor.endings if e.sidecar.session_id not in refused["ending"]
        ]
        for session_id in refused["leftovers"]:
            monitor.leftover_writes.pop(session_id, None)
        for session_id in refused["transcript"]:
            self.transcripts.pop(session_id, None)
        for session_id in set(ack.get("origins") or []) | refused["origin"]:
            if session_id in self.origins:
                self.origins[session_id] = None
        paused = ack.get("transcripts_paused_seconds")
        if isinstance(paused, int | float) and paused > 0:
            self.transcripts_paused_until = now + timedelta(seconds=min(paused, 3600))
        for session_id in [s for s in self.gone if s in recorded]:
            sidecar = self.gone.pop(session_id)
            paths.sidecar_path(sidecar.wrapper_pid).unlink(missing_ok=True)
        monitor.endings = [e for e in monitor.endings if e.sidecar.session_id not in recorded]
        for session_id, members in payload["leftovers"].items():
            if monitor.leftover_writes.get(session_id) == members:
                del monitor.leftover_writes[session_id]
        monitor.events.acknowledge(set(ack.get("events") or []) | refused["event"])
        if payload["jobs"] is not None and payload["jobs"] is self.jobs:
            self.jobs_acknowledged, self.jobs = (self.jobs, now), None
        self.stops = self.stops[len(payload["stops"]) :]
        for session_id, held in (ack.get("transcripts") or {}).items():
            follow = self.transcripts.get(session_id)
            if follow is not None and isinstance(held, int):
                follow[1] = held
        for session_id, (path, held, live) in list(self.transcripts.items()):
            if not live and session_id not in self.gone:
                try:
                    done = held >= path.stat().st_size
                except OSError:
                    done = True
                if done:  # ended and all of it shipped
                    del self.transcripts[session_id]
        self.telemetry.acknowledged(
            payload["telemetry_rollups"], payload["telemetry_spans"], ack.get("telemetry"), now
        )
        done = {r["id"] for r in payload["action_results"]}
        with self.results_lock:
            self.results = [r for r in self.results if r["id"] not in done]
            self.audits = self.audits[len(payload["audits"]) :]

    # ------------------------------------------------------------------ requests

    def start_action(self, action: dict, snapshot: Snapshot) -> None:
        """An operator's request: carried out in a thread (a stop waits its grace period)."""
        thread = threading.Thread(
            target=self.carry_out, args=(action, snapshot), name="remote-action", daemon=True
        )
        with self.results_lock:  # the poll's thread starts requests too (fleet.action_poll)
            self.threads = [t for t in self.threads if t.is_alive()] + [thread]
        thread.start()

    def carry_out(self, action: dict, snapshot: Snapshot) -> None:
        monitor = self.monitor
        session_id = str(action.get("session_id") or "")
        actor = str(action.get("requested_by") or "console")[:150]
        grace = settings.OPSCONSOLE_STOP_GRACE_SECONDS
        result = {"id": action.get("id"), "ok": True, "terminated": [], "killed": []}
        # For the audit: how the request came, and when it landed here (host's clock).
        result["via"] = "push" if action.get("via") == "push" else "report"
        result["landed_at"] = action.get("landed_at") or datetime.now(UTC).isoformat()
        try:
            if action.get("kind") == "stop":
                live = snapshot.get(session_id)
                if live is None:
                    result["message"] = (
                        f"nothing to stop: {session_id} is not live on {monitor.host}"
                    )
                else:
                    outcome = stop_session(
                        live, actor=actor, reason="stopped", grace=grace, on_record=False
                    )
                    result.update(
                        ok=not outcome.errors,
                        message=outcome.summary + "".join(f"; {e}" for e in outcome.errors),
                        terminated=outcome.terminated,
                        killed=outcome.killed,
                    )
            elif action.get("kind") == "kill_leftovers":
                item = monitor.leftovers.get(session_id)
                members = (
                    [{"pid": pid, "started": started} for pid, started in item.members]
                    if item
                    else []
                )
                outcome = stop_leftovers(session_id, members, actor=actor, grace=grace)
                if item is not None:
                    item.term_sent_at = item.term_sent_at or snapshot.taken_at
                    item.killed_by = actor
                result.update(
                    ok=not outcome.errors,
                    message=outcome.summary
                    if outcome.terminated
                    else "no leftover process was running",
                    terminated=outcome.terminated,
                    killed=outcome.killed,
                )
            elif action.get("kind") in JOB_ACTION_KINDS:
                result.update(self.act_on_job(action))
            else:
                result.update(ok=False, message=f"unknown request {action.get('kind')!r}")
        except Exception as exc:  # the outcome is reported whatever happens
            log.exception("request %s failed", action)
            result.update(ok=False, message=f"{type(exc).__name__}: {exc}")
        with self.results_lock:
            self.results.append(result)

    def act_on_job(self, action: dict) -> dict:
        """Run now, enable, disable or reschedule one of this host's jobs, with the code
        the console runs for its own (monitor_app.job_controls.execute)."""
        named = action.get("job") if isinstance(action.get("job"), dict) else {}
        key = (str(named.get("scheduler") or ""), str(named.get("label") or ""))
        collected = self.collected.get(key)
        if collected is None:
            return {
                "ok": False,
                "message": f"no {key[0] or 'such'} job {key[1]!r} on {self.monitor.host} "
                "(as of its latest collection): nothing was done",
            }
        job = Job(
            scheduler=collected.scheduler,
            label=collected.label,
            host=self.monitor.host,
            tags=list(collected.tags),
            source=collected.source,
            scope=collected.scope,
            scheduler_enabled=collected.enabled,
        )
        arguments = action.get("arguments") if isinstance(action.get("arguments"), dict) else {}
        outcome = execute(job, action["kind"], str(arguments.get("schedule") or ""))
        self.collecting.reset()  # the console sees the job's new state with the next report
        return {
            "ok": outcome.ok,
            "message": outcome.message,
            "exit_code": outcome.exit_code,
            "output": outcome.output[-20_000:],
            "detail": outcome.detail,
        }

    def stopped(self) -> None:
        for thread in self.threads:
            thread.join(timeout=settings.OPSCONSOLE_STOP_GRACE_SECONDS + 5)
        self.monitor.events.save()
        self.telemetry.save()


def refused_items(ack: dict) -> dict[str, set[str]]:
    """Keys of the items the console refused for good, by kind (fleet.report_items); a
    429 (over a budget) is not among them: that item is sent again later."""
    refused: dict[str, set[str]] = {
        kind: set() for kind in ("completion", "vanished", "ending", "leftovers", "event")
    }
    refused["transcript"] = set()
    refused["origin"] = set()
    for item in ack.get("refused") or []:
        if isinstance(item, dict) and item.get("status") != 429 and item.get("kind") in refused:
            refused[item["kind"]].add(str(item.get("key")))
    return refused


def reporting_monitor(reporter: Reporter, **options) -> Monitor:
    """A monitor in report mode: it keeps no history on this host, and every sample
    goes to the console through `reporter`."""
    return Monitor(reporting=lambda monitor: ReportState(monitor, reporter), **options)
