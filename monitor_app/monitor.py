"""The monitor: one always-on sampler per host, and what it makes of two samples in a row.

Every interval `tick()` takes a sample (sidecars, Claude Code's registry, one
process-table scan, transcript growth), compares it with the previous one, and
turns the difference into history: completion records ingested, vanished runs
recorded, unwrapped sessions recorded as they end, leftover processes tracked,
events written. Then it publishes the sample for every web process. Jobs are
collected and the watchdog runs on their own cadences inside the same loop.
With the database down it keeps sampling and publishing to its local file;
what it could not write waits (spool, sidecars, pending events) and is written
when the database is back.

One piece: one round, in the order it runs; the state it carries from one sample to
the next (trees, leftovers, endings) is read and written only here.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connections

from jobs_app.linking import job_index
from jobs_app.models import AuditEntry, Job
from monitor_app import published
from monitor_app.duties import RETENTION, Alone, DutyLocks
from monitor_app.events import EventOutbox, prune_events
from monitor_app.job_join import JobJoin
from monitor_app.job_status import collect_and_record, job_statuses
from monitor_app.models import EventKind
from monitor_app.sampler import Sampler, sidecar_for_unwrapped
from monitor_app.snapshot import LeftoverRun, LiveSession, SkippedSidecar, Snapshot
from monitor_app.stopping import kill_leftover_processes
from monitor_app.telemetry_inbox import Drained, Inbox, keep_rollups, load_rollups
from monitor_app.telemetry_receiver import Receiver, start_receiver
from monitor_app.watchdog import find_overdue, stop_overdue
from sessions_app import ingest, transcript_store
from sessions_app.database import DATABASE_AWAY
from sessions_app.human_time import human_time
from sessions_app.models import (
    LIVE_STATUSES,
    Session,
    Status,
    leftover_members,
    leftover_record,
)
from sessions_app.proctree import ProcessTable, describe, forget_exited, scan_process_table
from sessions_app.telemetry_records import prune_spans, write_rollups, write_spans
from sessions_app.transcripts.running_cost import RunningCost
from wrapper.formats import QuotaStamp, Sidecar, StatePaths, read_quota_stamp
from wrapper.telemetry import remove_receiver_address

log = logging.getLogger(__name__)

# A process using less CPU than this over a sample is idle, for the stall question.
ACTIVE_CPU_PERCENT = 1.0
# A live row with neither a sidecar nor a completion record this long after it started
# was lost (its sidecar removed by hand, say); younger ones may just be mid-write.
STALE_LIVE_ROW_GRACE = timedelta(seconds=60)
PRUNE_EVERY = timedelta(hours=1)
ROLLUPS_KEPT_EVERY = timedelta(seconds=15)
LIVE_ROLLUP_EVERY = timedelta(seconds=10)
# At stop, the telemetry writer's last batch is waited for this long.
TELEMETRY_WRITER_STOP_SECONDS = 30.0
SWITCH_INTERVAL_WITH_RECEIVER = 0.001  # seconds (sys.setswitchinterval)
# Transcripts priced per sample at most (each reads only what was appended since).
COST_READS_PER_SAMPLE = 25
# Ended runs put on record per sample at most, of each kind: completion records from the
# spool, dead runs' sidecars (each a row, an archived transcript, an event), unwrapped
# sessions seen to end. Ten thousand dead runs found at once are drained over the next
# samples, a batch each, so the sample keeps its cadence; the rest wait where they are.
RECORDS_PER_SAMPLE = 25


@dataclass
class TelemetryBatch:
    """What one round hands the telemetry writer: the drained rollups and spans, and the
    live runs when the inbox is due to be kept on disk (None when not)."""

    drained: Drained
    keep_live: set[str] | None
    now: datetime


class Cadence:
    """Work done every so many seconds inside the sample loop, decided on the sample's
    clock (`now`), so a test hands it the time. Due on the first call, then once the
    interval has passed either way: a clock set back does not stall it."""

    def __init__(self) -> None:
        self.last: datetime | None = None

    def due(self, now: datetime, every_seconds: float) -> bool:
        if self.last is not None and abs((now - self.last).total_seconds()) < every_seconds:
            return False
        self.last = now
        return True

    def reset(self) -> None:
        """Due again at the next call."""
        self.last = None


# One round of a layer above the engine, run after each recorded sample.
Step = Callable[["Monitor", Snapshot, datetime], None]


class Reporting(Protocol):
    """Report mode's side of a sample (fleet.reporting.ReportState)."""

    def note(self, snapshot: Snapshot, gone: list[Sidecar], now: datetime) -> None: ...
    def report(self, snapshot: Snapshot, now: datetime) -> bool: ...
    def note_telemetry(self, drained: Drained) -> None: ...
    def stopped(self) -> None: ...


@dataclass
class Tree:
    """A live session's roots and every process seen in its tree, for leftovers later."""

    sidecar: Sidecar
    roots: set[tuple[int, float]]
    members: set[tuple[int, float]] = field(default_factory=set)
    wrapped: bool = True


@dataclass
class Leftovers:
    """Processes of an ended run that live on: tracked until they exit or are killed."""

    session_id: str
    script_tag: str
    host: str
    ended_at: datetime
    members: dict[tuple[int, float], str]  # (pid, start) -> command line
    term_sent_at: datetime | None = None
    killed_by: str = ""
    # What a person's own session (unwrapped, ended normally) left running is theirs: a
    # dev server started from a terminal session is not an orphan to clean up.
    persons_own: bool = False
    # The job its run was tied to by its processes (monitor_app.job_join), if not by tag.
    job_id: int | None = None

    def as_record(self) -> list[dict]:
        return leftover_record(self.members)


@dataclass
class Ending:
    """An unwrapped session seen to end, waiting to be written."""

    sidecar: Sidecar
    status: str  # exited or killed
    ended_at: datetime


class Monitor:
    def __init__(
        self,
        *,
        paths: StatePaths | None = None,
        config_dirs: list[Path] | None = None,
        host: str | None = None,
        interval: float | None = None,
        publish: bool = True,
        cadences: bool = True,
        steps: Sequence[Step] = (),
        reporting: Callable[[Monitor], Reporting] | None = None,
        proc_root: str | Path = "/proc",
        duties: DutyLocks | Alone | None = None,
    ) -> None:
        self.paths = paths or settings.OPSCONSOLE_STATE
        self.host = host or settings.OPSCONSOLE_HOST
        self.interval = interval or settings.OPSCONSOLE_SAMPLE_SECONDS
        self.publish = publish
        # On-demand sampling inside a web request collects no jobs and stops nothing.
        self.cadences = cadences
        self.config_dirs = list(config_dirs or settings.OPSCONSOLE_CLAUDE_CONFIG_DIRS)
        self.sampler = Sampler(self.paths, self.config_dirs, settings.OPSCONSOLE_TRUSTED_UIDS)
        # Each run tied to the scheduler job that started it, from its processes.
        self.join = JobJoin(self.host, proc_root)
        self.events = EventOutbox(self.host, self.paths.home / "monitor" / "pending-events.json")
        # Milliseconds since the epoch: increases across restarts without asking anyone.
        self.seq = int(time.time() * 1000)
        self.trees: dict[str, Tree] = {}
        self.leftovers: dict[str, Leftovers] = {}
        self.leftovers_loaded = False
        self.leftover_writes: dict[str, list[dict]] = {}
        self.on_record: dict[str, str] = {}  # session id -> status the database has
        self.unwrapped_live: dict[str, Sidecar] = {}
        self.stale_handled: set[str] = set()
        self.endings: list[Ending] = []
        self.activity: dict[str, datetime] = {}
        # session id -> (incremental reader of its transcripts, the cost so far)
        self.running: dict[str, tuple[RunningCost, float | None]] = {}
        self.cost_reads_left = COST_READS_PER_SAMPLE
        self.spool_waiting = 0  # completion records left in the spool for the next batch
        self.records_waiting = 0  # ended runs of any kind left for the next batches
        self.quota: QuotaStamp | None = None
        self.quota_known = False
        self.collecting = Cadence()
        self.watching = Cadence()
        self.pruning = Cadence()
        self.keeping_rollups = Cadence()
        self.database_ok = True
        self.rejected_spool_files = 0  # completion records moved to spool/rejected/
        self.watchdog_thread: threading.Thread | None = None
        # Claude Code's own telemetry, taken by the receiver (run_forever starts it).
        self.telemetry: Inbox | None = None
        # Live runs' rollups: when last written, and the tools open then.
        self.rollups_written: dict[str, tuple[datetime, set[str]]] = {}
        self.receiver: Receiver | None = None
        # run_forever's: the round hands what it drained to a writer thread and goes on
        # (tick() alone writes in the round). One batch at a time: while one is being
        # written, what comes waits in the inbox.
        self.telemetry_writer: threading.Thread | None = None
        self.telemetry_batches: queue.Queue[TelemetryBatch | None] = queue.Queue(maxsize=1)
        self.telemetry_writing = False
        self.watching_since = datetime.now(UTC)
        # The rounds of the layers above the engine (the fleet's, the alerts'), given by
        # whoever assembles the monitor (opsconsole.monitoring): the engine cannot name them.
        self.steps = tuple(steps)
        # What a step keeps from one round to the next (its cadence...), by step name.
        self.step_state: dict[str, object] = {}
        # The fleet-wide duties this console holds when several share one PostgreSQL
        # (monitor_app.duties; opsconsole.monitoring gives a console's monitor its locks).
        self.duties = duties or Alone()
        # Report mode (fleet.reporting): no database here; history goes to the console
        # with each sample and leaves this host once acknowledged.
        self.reporting = None
        if reporting is not None:
            self.reporting = reporting(self)
            self.leftovers_loaded = True  # nothing on record here to load them from

    # ------------------------------------------------------------------ one round

    def tick(self, now: datetime | None = None) -> Snapshot:
        now = now or datetime.now(UTC)
        began = time.perf_counter()
        snapshot = Snapshot(
            taken_at=now, source="monitor", seq=self.seq, interval_seconds=self.interval
        )
        table = scan_process_table()
        forget_exited(table)
        gone = self.sample_sessions(snapshot, table, now)
        self.follow_leftovers(snapshot, table, now)
        self.check_quota(snapshot, now)
        if self.reporting is not None:
            self.reporting.note(snapshot, gone, now)
            self.record_telemetry(snapshot, now)
        else:
            self.sync(snapshot, gone, now)
            self.record_telemetry(snapshot, now)
            self.run_cadences(snapshot, now)
            self.run_steps(snapshot, now)
        snapshot.scan_ms = round((time.perf_counter() - began) * 1000, 1)
        if self.reporting is not None:
            self.reporting.report(snapshot, now)
        elif self.publish:
            self.publish_sample(snapshot)
        self.seq += 1
        return snapshot

    # ------------------------------------------------------------------ sampling

    def sample_sessions(self, snapshot: Snapshot, table: ProcessTable, now: datetime):
        """Live sessions into the snapshot; returns the sidecars whose owners are gone."""
        self.sampler.new_sample()
        self.cost_reads_left = COST_READS_PER_SAMPLE
        sidecars = self.sampler.read_sidecars(snapshot, running=table.entries)
        registry = self.sampler.read_registry(snapshot)
        gone: list[Sidecar] = []
        roots: list[tuple[LiveSession, int]] = []
        for sidecar in sidecars:
            if table.is_same_process(sidecar.wrapper_pid, sidecar.wrapper_started):
                roots.append((LiveSession(sidecar, Status.LIVE, []), sidecar.wrapper_pid))
            elif table.is_same_process(sidecar.claude_pid, sidecar.claude_started):
                roots.append((LiveSession(sidecar, Status.ORPHANED, []), sidecar.claude_pid))
            else:
                gone.append(sidecar)
        claimed = {s.session_id for s in sidecars}
        unwrapped_now: dict[str, Sidecar] = {}
        for config_dir, path, entry in registry:
            if entry.session_id in claimed:
                continue  # a wrapped run: its sidecar speaks for it, never shown twice
            started, problem = self.sampler.registry_process(path, entry, table)
            if problem is not None:
                # Not Claude Code (or not provably the writer): never a session, so never
                # stopped or signalled. Listed with the skipped files; logged once.
                snapshot.skipped.append(
                    SkippedSidecar(f"{path.parent.name}/{path.name} ({config_dir})", problem)
                )
                continue
            claimed.add(entry.session_id)
            if started is not None:
                sidecar = sidecar_for_unwrapped(config_dir, entry, started, self.host)
                unwrapped_now[entry.session_id] = sidecar
                roots.append((LiveSession(sidecar, Status.UNWRAPPED, [], wrapped=False), entry.pid))
            elif entry.session_id not in self.stale_handled:
                # Left behind: Claude Code removes it on every normal exit. Killed.
                sidecar = self.unwrapped_live.get(entry.session_id) or sidecar_for_unwrapped(
                    config_dir, entry, entry.process_started or 0.0, self.host
                )
                self.endings.append(Ending(sidecar, Status.KILLED, now))
                self.stale_handled.add(entry.session_id)
        self.sampler.forget_exited(table, {str(path) for _, path, _ in registry})
        for session_id, sidecar in self.unwrapped_live.items():
            if session_id not in unwrapped_now and session_id not in self.stale_handled:
                self.endings.append(Ending(sidecar, Status.EXITED, now))
                self.stale_handled.add(session_id)
        self.unwrapped_live = unwrapped_now

        mono = time.monotonic()
        for live, root in roots:
            pids = table.subtree(root)
            live.processes = describe(table, pids, mono)
            watch, grew = self.sampler.watch_transcript(live.sidecar)
            live.last_tool_call = watch.last_tool_call
            live.running_cost_usd = self.running_cost(live.session_id, watch.path, grew)
            live.transcript_bytes = watch.size if watch.path else None
            self.join.read(live, root, table)
            if (
                grew
                or live.cpu_percent >= ACTIVE_CPU_PERCENT
                or live.session_id not in self.activity
            ):
                self.activity[live.session_id] = now
            else:
                live.idle_since = self.activity[live.session_id]
            snapshot.sessions.append(live)
            for ancestor in table.ancestors(root):
                snapshot.sessions_by_ancestor.setdefault(ancestor, []).append(live.session_id)
            tree = self.trees.get(live.session_id)
            if tree is None:
                tree = self.trees[live.session_id] = Tree(live.sidecar, set(), wrapped=live.wrapped)
            tree.sidecar = live.sidecar
            tree.roots = {
                (pid, started)
                for pid, started in (
                    (live.sidecar.wrapper_pid, live.sidecar.wrapper_started),
                    (live.sidecar.claude_pid, live.sidecar.claude_started),
                )
                if pid
            }
            tree.members.update((pid, table.entries[pid].started) for pid, _ in pids)
        snapshot.sessions.sort(key=lambda s: s.sidecar.started_at, reverse=True)

        live_ids = {s.session_id for s in snapshot.sessions}
        self.sampler.forget_transcripts(live_ids)
        for session_id in [s for s in self.activity if s not in live_ids]:
            del self.activity[session_id]
        for session_id in [s for s in self.running if s not in live_ids]:
            del self.running[session_id]
        self.join.forget(table, live_ids, {e.sidecar.session_id for e in self.endings})
        self.end_trees(snapshot, table, live_ids, now)
        return gone

    def running_cost(self, session_id: str, transcript: Path | None, grew: bool) -> float | None:
        """The cost so far of a live run, priced from its transcripts' usage (main and
        subagent files). Only what was appended is read, only when the transcript grew,
        and at most COST_READS_PER_SAMPLE transcripts per sample (the rest wait a turn)."""
        known = self.running.get(session_id)
        if transcript is None:
            return known[1] if known else None
        if known is not None and known[0].main == transcript and not grew:
            return known[1]
        if self.cost_reads_left <= 0:
            return known[1] if known else None
        self.cost_reads_left -= 1
        reader = known[0] if known is not None and known[0].main == transcript else None
        reader = reader or RunningCost(transcript, transcript_store.roots())
        try:
            cost = reader.update().cost_usd
        except (OSError, ValueError) as exc:
            log.debug("running cost of %s not read: %s", session_id, exc)
            return known[1] if known else None
        value = float(cost) if cost is not None else None
        self.running[session_id] = (reader, value)
        return value

    def end_trees(
        self, snapshot: Snapshot, table: ProcessTable, live_ids: set[str], now: datetime
    ) -> None:
        """Runs that left the live list: whatever of their tree still runs is a leftover."""
        for session_id in [s for s in self.trees if s not in live_ids]:
            tree = self.trees[session_id]
            if any(table.is_same_process(pid, started) for pid, started in tree.roots):
                continue  # its agent still runs: not ended, whatever its files say
            del self.trees[session_id]
            survivors = [
                (pid, 0)
                for pid, started in tree.members - tree.roots
                if table.is_same_process(pid, started) and pid != os.getpid()
            ]
            if not survivors:
                continue
            detail = describe(table, survivors)
            members = {(p.pid, p.started): p.cmdline for p in detail}
            if not members:
                continue
            killed = any(
                e.sidecar.session_id == session_id and e.status == Status.KILLED
                for e in self.endings
            )
            leftovers = Leftovers(
                session_id=session_id,
                script_tag=tree.sidecar.script_tag,
                host=tree.sidecar.host,
                ended_at=now,
                members=members,
                # An unwrapped run its scheduler started is a job's, not a person's.
                persons_own=not tree.wrapped
                and not killed
                and session_id not in self.join.session_jobs,
                job_id=self.join.session_jobs.get(session_id),
            )
            self.leftovers[session_id] = leftovers
            self.leftover_writes[session_id] = leftovers.as_record()
            self.events.add(
                EventKind.LEFTOVERS_SEEN,
                f"{len(members)} process(es) of {tree.sidecar.script_tag} outlived its agent: "
                + ", ".join(f"{pid} {cmd[:60]}" for (pid, _), cmd in list(members.items())[:5]),
                key=f"leftovers_seen:{session_id}",
                at=now,
                session_id=session_id,
                script_tag=tree.sidecar.script_tag,
                detail={"pids": [pid for pid, _ in members]},
            )

    def follow_leftovers(self, snapshot: Snapshot, table: ProcessTable, now: datetime) -> None:
        if not self.leftovers_loaded:
            self.load_leftovers(now)
        mono = time.monotonic()
        for session_id in list(self.leftovers):
            leftovers = self.leftovers[session_id]
            alive = [
                (pid, 0)
                for pid, started in leftovers.members
                if table.is_same_process(pid, started)
            ]
            if alive:
                snapshot.leftovers.append(
                    LeftoverRun(
                        session_id=session_id,
                        script_tag=leftovers.script_tag,
                        host=leftovers.host,
                        ended_at=leftovers.ended_at,
                        processes=describe(table, alive, mono),
                    )
                )
                continue
            del self.leftovers[session_id]
            self.leftover_writes[session_id] = []
            killed = leftovers.term_sent_at is not None
            self.events.add(
                EventKind.LEFTOVERS_KILLED if killed else EventKind.LEFTOVERS_GONE,
                f"leftover processes of {leftovers.script_tag} "
                + (f"killed ({leftovers.killed_by})" if killed else "exited"),
                key=f"leftovers_gone:{session_id}",
                at=now,
                session_id=session_id,
                script_tag=leftovers.script_tag,
                detail={"killed_by": leftovers.killed_by} if killed else {},
            )

    def load_leftovers(self, now: datetime) -> None:
        """Leftovers on record from before a restart are followed again."""
        try:
            rows = (
                Session.objects.filter(host=self.host)
                .exclude(leftovers=[])
                .values_list(
                    "session_id",
                    "script_tag",
                    "host",
                    "ended_at",
                    "leftovers",
                    "wrapped",
                    "status",
                    "job_id",
                )
            )
            for session_id, tag, host, ended_at, members, wrapped, status, job_id in rows:
                parsed = leftover_members(members)
                if parsed:
                    self.leftovers.setdefault(
                        str(session_id),
                        Leftovers(
                            str(session_id),
                            tag,
                            host,
                            ended_at or now,
                            parsed,
                            persons_own=not wrapped and status != Status.KILLED and not job_id,
                            job_id=job_id,
                        ),
                    )
        except DatabaseError as exc:
            log.warning("leftovers on record not loaded yet: %s", exc)
            return
        self.leftovers_loaded = True

    def check_quota(self, snapshot: Snapshot, now: datetime) -> None:
        stamp = read_quota_stamp(self.paths, now)
        if stamp is not None:
            snapshot.quota_until, snapshot.quota_reason = stamp.until, stamp.reason
        previous, self.quota = self.quota, stamp
        if not self.quota_known:
            self.quota_known = True
            if stamp is None:
                return
        if stamp is not None and (previous is None or previous.set_at != stamp.set_at):
            self.events.add(
                EventKind.QUOTA_SET,
                f"quota stamp set until {stamp.until}: {stamp.reason}",
                key=f"quota_set:{stamp.set_at}",
                at=now,
                session_id=stamp.session_id,
                script_tag=stamp.script_tag or "",
                detail={"until": stamp.until, "reason": stamp.reason, "set_at": stamp.set_at},
            )
        elif stamp is None and previous is not None:
            self.events.add(
                EventKind.QUOTA_CLEARED,
                "quota stamp cleared: runs start again",
                key=f"quota_cleared:{previous.set_at}",
                at=now,
                detail={"set_at": previous.set_at, "until": previous.until},
            )

    # ------------------------------------------------------------------ history

    def sync(self, snapshot: Snapshot, gone: list[Sidecar], now: datetime) -> None:
        """Everything the database must learn from this sample; kept for later if it can't."""
        try:
            self.record_completions(now)
            self.join.tie(snapshot, now, collect=self.cadences)
            self.record_live(snapshot, now)
            for sidecar in gone[:RECORDS_PER_SAMPLE]:
                self.record_gone_sidecar(sidecar, now)
            self.record_endings()
            self.write_leftovers()
            self.records_waiting = (
                max(0, len(gone) - RECORDS_PER_SAMPLE)
                + len(self.endings)
                + self.spool_waiting
                + self.sampler.unread_sidecars
            )
            # A row is lost only when nothing left to record may say how its run ended:
            # while ended runs wait for a later batch, their rows are not lost.
            if snapshot.active_dir_error is None and not self.records_waiting:
                self.close_lost_rows(snapshot, now)
            self.events.flush()
            if not self.database_ok:
                log.info("database reachable again: pending history written")
            self.database_ok = True
        except DatabaseError as exc:
            text = str(exc).strip().splitlines()
            snapshot.database_error = f"{type(exc).__name__}: {text[0] if text else ''}"
            if self.database_ok:
                log.warning("database unavailable, sampling on: %s", snapshot.database_error)
            self.database_ok = False
            close_old_connections()

    def record_completions(self, now: datetime) -> None:
        result = ingest.ingest_spool(self.paths, limit=RECORDS_PER_SAMPLE)
        self.spool_waiting = result.waiting
        for session in result.sessions:
            self.on_record[str(session.session_id)] = session.status
            self.event_for_end(session, now)
        self.rejected_spool_files = len(result.rejected)

    def event_for_end(self, session: Session, now: datetime) -> None:
        add_end_event(self.events, session, now)

    def record_live(self, snapshot: Snapshot, now: datetime) -> None:
        """Rows for new live sessions and changed states; nothing for what is unchanged."""
        changed = [
            live for live in snapshot.sessions if self.on_record.get(live.session_id) != live.state
        ]
        if not changed:
            return
        statuses = ingest.record_live(changed)
        for live in changed:
            status = statuses.get(live.session_id)
            before = self.on_record.get(live.session_id)
            self.on_record[live.session_id] = status
            if status != live.state:
                continue  # already ended on record (its completion came first)
            self.event_for_live(live, before, now)

    def event_for_live(self, live: LiveSession, before: str | None, now: datetime) -> None:
        """run_started / run_retried / run_orphaned for a live session's new state."""
        sidecar = live.sidecar
        if live.state == Status.ORPHANED:
            kind, verb = EventKind.RUN_ORPHANED, "orphaned: its wrapper is gone"
            key = f"run_orphaned:{live.session_id}"
        elif before is None and sidecar.attempt > 1:
            kind, verb = EventKind.RUN_RETRIED, f"retried (attempt {sidecar.attempt})"
            key = f"run_started:{live.session_id}"
        elif before is None:
            kind = EventKind.RUN_STARTED
            verb = "started" if live.wrapped else f"started without the wrapper ({sidecar.cwd})"
            key = f"run_started:{live.session_id}"
        else:
            return
        self.events.add(
            kind,
            f"{sidecar.script_tag} {verb}",
            key=key,
            at=now,
            session_id=live.session_id,
            script_tag=sidecar.script_tag,
            status=live.state,
            detail={
                "attempt": sidecar.attempt,
                "retry_of": sidecar.retry_of,
                "wrapped": live.wrapped,
                "platform": sidecar.platform,
            },
        )

    def record_gone_sidecar(self, sidecar: Sidecar, now: datetime) -> None:
        """GC: the wrapper and the agent are both gone (checked by PID and start time)."""
        if not ingest.has_completion_record(sidecar.session_id, self.paths):
            session = ingest.record_vanished(
                sidecar, self.paths, transcript_store.find_live_transcript(sidecar), now=now
            )
            log.info(
                "session %s (%s) vanished; recorded as killed",
                sidecar.session_id,
                sidecar.script_tag,
            )
        else:
            session = Session.objects.get(session_id=sidecar.session_id)
        self.on_record[sidecar.session_id] = session.status
        self.event_for_end(session, now)
        self.paths.sidecar_path(sidecar.wrapper_pid).unlink(missing_ok=True)

    def record_endings(self) -> None:
        for _ in range(min(len(self.endings), RECORDS_PER_SAMPLE)):
            ending = self.endings[0]
            session = ingest.record_unwrapped_end(
                ending.sidecar,
                ending.status,
                ending.ended_at,
                self.paths,
                transcript_store.find_live_transcript(ending.sidecar),
                job_id=self.join.job_of_ended(ending.sidecar.session_id),
            )
            self.on_record[ending.sidecar.session_id] = session.status
            if session.status == ending.status:
                self.event_for_end(session, ending.ended_at)
            self.endings.pop(0)

    def write_leftovers(self) -> None:
        for session_id in list(self.leftover_writes):
            Session.objects.filter(session_id=session_id).update(
                leftovers=self.leftover_writes[session_id]
            )
            del self.leftover_writes[session_id]

    def close_lost_rows(self, snapshot: Snapshot, now: datetime) -> None:
        """Rows of this host still marked live whose session no sidecar or registry names
        (at most RECORDS_PER_SAMPLE a sample).

        Without evidence of how it ended, the run is "unknown", not killed: the
        console lost sight of it. A completion record arriving later still wins.
        """
        live_ids = {s.session_id for s in snapshot.sessions}
        lost = (
            Session.objects.filter(
                status__in=LIVE_STATUSES, host=self.host, started_at__lt=now - STALE_LIVE_ROW_GRACE
            )
            .exclude(session_id__in=live_ids)
            .only("session_id", "started_at")[:RECORDS_PER_SAMPLE]
        )
        for row in lost:
            session_id = str(row.session_id)
            if ingest.has_completion_record(session_id, self.paths):
                continue
            updated = Session.objects.filter(pk=row.pk, status__in=LIVE_STATUSES).update(
                status=Status.UNKNOWN,
                end_reason="lost",
                ended_at=now,
                error="The console lost sight of this run: no sidecar and no completion record "
                "remain, and nothing says how it ended.",
            )
            self.on_record.pop(session_id, None)
            if updated:
                session = Session.objects.get(pk=row.pk)
                self.event_for_end(session, now)

    # ------------------------------------------------------------------ cadences

    def run_cadences(self, snapshot: Snapshot, now: datetime) -> None:
        if not self.database_ok or not self.cadences:
            return
        if self.collecting.due(now, settings.OPSCONSOLE_COLLECT_SECONDS):
            self.collect_jobs(snapshot, now)
        if self.watching.due(now, settings.OPSCONSOLE_WATCHDOG_SECONDS):
            self.watchdog(snapshot, now)
        self.kill_due_leftovers(now)
        # Retention is fleet-wide: one console of several on one PostgreSQL prunes.
        if self.pruning.due(now, PRUNE_EVERY.total_seconds()):
            try:
                if not self.duties.held(RETENTION, now):
                    return
                prune_events(timedelta(days=settings.OPSCONSOLE_EVENT_RETENTION_DAYS), now)
                prune_spans(timedelta(days=settings.OPSCONSOLE_TELEMETRY_SPAN_DAYS), now)
            except DatabaseError as exc:
                log.warning("event retention skipped: %s", exc)

    # ------------------------------------------------------------------ telemetry

    def start_telemetry(self, *, write_behind: bool = False) -> None:
        """Take Claude Code's OTLP on loopback; a receiver that cannot start costs the
        telemetry, never the monitor. `write_behind`: its writes on a thread of their own,
        off the sample's time."""
        if not settings.OPSCONSOLE_TELEMETRY_RECEIVER or self.receiver is not None:
            return
        self.telemetry = Inbox(load_rollups(self.paths))
        try:
            self.receiver = start_receiver(
                self.paths,
                self.telemetry,
                port=settings.OPSCONSOLE_OTLP_PORT,
                max_body=settings.OPSCONSOLE_OTLP_MAX_BODY_BYTES,
                forwards=settings.OPSCONSOLE_TELEMETRY_TEE,
            )
        except OSError as exc:
            log.warning("telemetry receiver not started: %s", exc)
            self.telemetry = None
            return
        log.info("telemetry receiver on %s", self.receiver.endpoint)
        # The sample reads hundreds of small /proc files, letting go of the GIL at each;
        # with the receiver's threads busy, each read waited up to the switch interval
        # (5 ms by default) to get it back.
        sys.setswitchinterval(SWITCH_INTERVAL_WITH_RECEIVER)
        if write_behind and self.reporting is None:
            self.telemetry_writer = threading.Thread(
                target=self.write_telemetry_forever, name="telemetry-writer", daemon=True
            )
            self.telemetry_writer.start()

    def stop_telemetry(self) -> None:
        if self.receiver is not None:
            # Gone first: a wrapper starting now must not point at a port anyone may take.
            remove_receiver_address(self.paths)
            self.receiver.stop()
            self.receiver = None
            if self.telemetry_writer is not None:  # its batch finished, then the rest here
                self.telemetry_batches.put(None)
                self.telemetry_writer.join(TELEMETRY_WRITER_STOP_SECONDS)
                self.telemetry_writer = None
            now = datetime.now(UTC)
            if self.reporting is None:  # what came in the last moments, on record
                self.write_telemetry(self.telemetry.drain())
            keep_rollups(self.paths, self.telemetry, set(self.trees), now)

    def record_telemetry(self, snapshot: Snapshot, now: datetime) -> None:
        """What the receiver took since the last sample, on record: rollups and spans (in
        report mode, handed to the reports, which carry them to the console). A live run's
        rollup is written at most every LIVE_ROLLUP_EVERY (its spans every sample), an
        ended run's at once: 200 live runs cost the sample a few rows, not 200."""
        if self.telemetry is None:
            return
        live = {s.session_id for s in snapshot.sessions}
        if self.reporting is not None:
            self.reporting.note_telemetry(self.telemetry.drain())
            if self.keeping_rollups.due(now, ROLLUPS_KEPT_EVERY.total_seconds()):
                keep_rollups(self.paths, self.telemetry, live, now)
            return
        if self.telemetry_writing:
            return  # the writer's batch is not written yet: what came waits in the inbox
        self.rollups_written = {k: v for k, v in self.rollups_written.items() if k in live}

        def waits(rollup) -> bool:
            # A tool opened or closed is written at once: the live timeline shows it.
            written = self.rollups_written.get(rollup.session_id)
            return (
                rollup.session_id in live
                and written is not None
                and now - written[0] < LIVE_ROLLUP_EVERY
                and written[1] == rollup.open_tools.keys()
            )

        drained = self.telemetry.drain(waits)
        # Noted as written when handed over: one that fails is put back, changed, and
        # written within LIVE_ROLLUP_EVERY.
        for rollup in drained.rollups:
            if rollup.session_id in live:
                self.rollups_written[rollup.session_id] = (now, set(rollup.open_tools))
        # Kept on disk every so often (and at stop), not every sample: a restarted monitor
        # adds on to what it kept, losing at most that much of a run's rollup.
        keep = self.keeping_rollups.due(now, ROLLUPS_KEPT_EVERY.total_seconds())
        batch = TelemetryBatch(drained, live if keep else None, now)
        if self.telemetry_writer is None:
            self.write_batch(batch)
        elif drained.rollups or drained.spans or keep:
            self.telemetry_writing = True
            self.telemetry_batches.put(batch)

    def write_batch(self, batch: TelemetryBatch, *, in_round: bool = True) -> None:
        drained = batch.drained
        if in_round:
            self.write_telemetry(drained)
        elif not self.database_ok:  # the round found it away: no wait on it here either
            self.telemetry.put_back(drained)
        elif drained.rollups or drained.spans:
            self.telemetry_on_record(drained)  # the round's database_ok is the round's
        if batch.keep_live is not None:
            keep_rollups(self.paths, self.telemetry, batch.keep_live, batch.now)

    def write_telemetry(self, drained: Drained) -> None:
        """In the round (tick() without a writer thread, and at stop)."""
        if not (drained.rollups or drained.spans):
            return
        if not self.database_ok:
            self.telemetry.put_back(drained)
            return
        failed = self.telemetry_on_record(drained)
        if isinstance(failed, DATABASE_AWAY):
            self.database_ok = False  # the rest of the round does not wait on it again

    def telemetry_on_record(self, drained: Drained) -> DatabaseError | None:
        """Rollups and spans written; on a database error put back for a later round, and
        the error returned."""
        try:
            written = write_rollups(drained.rollups, self.host)
            write_spans(drained.spans, self.host)
        except DatabaseError as exc:
            log.warning("telemetry kept for later: %s", exc)
            self.telemetry.put_back(drained)
            close_old_connections()
            return exc
        if written.refused:
            self.telemetry.count("refused: another host's session", len(written.refused))
        return None

    def write_telemetry_forever(self) -> None:
        """The writer thread: each batch the round hands over, on record while the next
        sample is taken (a round's writes were most of the sample's time under load)."""
        try:
            while (batch := self.telemetry_batches.get()) is not None:
                try:
                    self.write_batch(batch, in_round=False)
                except Exception:  # a bug here must not end the writes for good
                    log.exception("telemetry not written")
                    self.telemetry.put_back(batch.drained)
                finally:
                    self.telemetry_writing = False
        finally:
            connections.close_all()  # this thread's own

    def run_steps(self, snapshot: Snapshot, now: datetime) -> None:
        """The rounds of the layers above (alert rules, the fleet's silent hosts): each
        one's failure is its own, so a rule's bug never stops sampling."""
        if not self.database_ok or not self.cadences:
            return  # the events wait in the database; the alert cursor has not moved
        for step in self.steps:
            try:
                step(self, snapshot, now)
            except DatabaseError as exc:
                log.warning("%s deferred: %s", step.__name__, exc)
                close_old_connections()
                if isinstance(exc, DATABASE_AWAY):
                    # Every later step would wait its own timeout on it: the round would
                    # outlast the supervisor's patience. They run when it is back.
                    self.database_ok = False
                    break
            except Exception:  # one layer's bug must not stop sampling
                log.exception("%s failed", step.__name__)

    def collect_jobs(self, snapshot: Snapshot, now: datetime) -> None:
        try:
            report = collect_and_record(now)
            for scheduler, errors in report.errors.items():
                self.events.add(
                    EventKind.COLLECTOR_ERROR,
                    f"{scheduler} collector: {'; '.join(errors)[:500]}",
                    key=f"collector_error:{scheduler}:{hash(tuple(errors)) & 0xFFFFFFFF:x}"
                    f":{now:%Y-%m-%d}",
                    at=now,
                    detail={"scheduler": scheduler, "errors": errors},
                )
            for status in job_statuses(snapshot, now, record_links=True):
                if any(b.kind == "late" for b in status.badges) and status.expected_run_at:
                    job = status.job
                    self.events.add(
                        EventKind.JOB_LATE,
                        f"{job.label} did not run at {human_time(status.expected_run_at)}",
                        key=f"job_late:{job.pk}:{status.expected_run_at.isoformat()}",
                        at=now,
                        script_tag=(job.tags or [""])[0],
                        detail={
                            "job_id": job.pk,
                            "expected_at": status.expected_run_at.isoformat(),
                        },
                    )
        except DatabaseError:
            raise
        except Exception:  # a collector bug must not stop sampling
            log.exception("job collection failed")

    def watchdog(self, snapshot: Snapshot, now: datetime) -> None:
        """Runs past their limit are stopped in a thread: a stop waits its grace period."""
        if self.watchdog_thread is not None and self.watchdog_thread.is_alive():
            return
        overdue = find_overdue(snapshot, now)
        if not overdue:
            return

        def stop_all():
            try:
                stop_overdue(overdue, grace=settings.OPSCONSOLE_STOP_GRACE_SECONDS)
            finally:
                close_old_connections()

        self.watchdog_thread = threading.Thread(target=stop_all, name="watchdog", daemon=True)
        self.watchdog_thread.start()

    def kill_due_leftovers(self, now: datetime) -> None:
        """The leftover rule: TERM after the grace period, KILL a stop-grace later."""
        grace = timedelta(seconds=settings.OPSCONSOLE_LEFTOVER_GRACE_SECONDS)
        due = [
            item
            for item in self.leftovers.values()
            if now - item.ended_at >= grace
            and (
                item.term_sent_at is None
                or now - item.term_sent_at
                >= timedelta(seconds=settings.OPSCONSOLE_STOP_GRACE_SECONDS)
            )
        ]
        if not due:
            return
        index = job_index()
        job_ids = {i.job_id or index.get((i.host, i.script_tag)) for i in due}
        jobs = Job.objects.in_bulk(job_ids - {None})
        for item in due:
            job = jobs.get(item.job_id or index.get((item.host, item.script_tag)))
            allowed = job.kill_leftovers if job else settings.OPSCONSOLE_KILL_LEFTOVERS
            if not allowed or item.persons_own:
                continue
            final = item.term_sent_at is not None
            outcome = kill_leftover_processes(
                list(item.members), signal.SIGKILL if final else signal.SIGTERM
            )
            item.term_sent_at = item.term_sent_at or now
            item.killed_by = "watchdog (leftover rule)"
            AuditEntry.objects.create(
                actor="watchdog",
                action="kill_leftovers",
                job=job,
                target=item.session_id,
                ok=not outcome.errors,
                output="\n".join(outcome.errors),
                detail={
                    "signal": "KILL" if final else "TERM",
                    "signalled": outcome.terminated,
                    "grace_seconds": grace.total_seconds(),
                },
            )

    # ------------------------------------------------------------------ publishing

    def publish_sample(self, snapshot: Snapshot) -> None:
        snapshot.rejected_spool_files = self.rejected_spool_files
        document = published.build(snapshot, self.host, self.seq, os.getpid())
        try:
            published.write_local(document)
        except OSError as exc:
            log.warning("local copy of the sample not written: %s", exc)
        if self.database_ok:
            try:
                published.write_database(document)
            except DatabaseError as exc:
                log.warning("sample not published to the database: %s", exc)
                self.database_ok = False
                close_old_connections()

    def started(self, now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        self.events.add(
            EventKind.MONITOR_STARTED,
            f"monitor started on {self.host} (pid {os.getpid()}, every {self.interval:g} s)",
            key=f"monitor_started:{os.getpid()}:{now.isoformat()}",
            at=now,
        )

    def stopped(self, now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        self.events.add(
            EventKind.MONITOR_STOPPED,
            f"monitor stopped on {self.host} (pid {os.getpid()})",
            key=f"monitor_stopped:{os.getpid()}:{now.isoformat()}",
            at=now,
        )
        if self.reporting is not None:
            if self.telemetry is not None:  # what came since the last sample waits too
                self.reporting.note_telemetry(self.telemetry.drain())
            self.reporting.stopped()
            return
        try:
            self.events.flush()
        except DatabaseError as exc:
            log.warning("monitor stop event kept for later: %s", exc)

    def run_forever(self, stop: threading.Event) -> None:
        """Sample every interval until `stop` is set (SIGTERM/SIGINT in the command)."""
        self.started()
        self.start_telemetry(write_behind=True)
        try:
            while not stop.is_set():
                began = time.monotonic()
                try:
                    self.tick()
                except Exception:  # one bad round must not end the monitor
                    log.exception("sample failed")
                    close_old_connections()
                stop.wait(max(0.0, self.interval - (time.monotonic() - began)))
        finally:
            self.stop_telemetry()
            self.stopped()
            self.duties.release()


def add_end_event(outbox: EventOutbox, session: Session, now: datetime) -> None:
    """run_ended (or run_vanished) for a run now on record: here or on a console that
    recorded a reporting host's run."""
    words = session.get_status_display()
    if session.status == Status.FAILED and session.exit_code is not None:
        words = f"failed (exit {session.exit_code})"
    reason = f": {session.error.splitlines()[0][:300]}" if session.error else ""
    vanished = session.end_reason == "vanished"
    outbox.add(
        EventKind.RUN_VANISHED if vanished else EventKind.RUN_ENDED,
        f"{session.script_tag} {words}{reason}",
        key=f"run_ended:{session.session_id}",
        at=now,
        session_id=str(session.session_id),
        script_tag=session.script_tag,
        status=session.status,
        detail={
            "exit_code": session.exit_code,
            "end_reason": session.end_reason,
            "is_error": session.is_error,
            "api_error_status": session.api_error_status,
            "stop_reason": session.stop_reason,
            "duration_ms": session.duration_ms,
            "cost_usd": float(session.cost_usd) if session.cost_usd is not None else None,
            "error": session.error[:2000],
            "attempt": session.attempt,
            "retry_of": str(session.retry_of) if session.retry_of else None,
            "wrapped": session.wrapped,
            "stopped_by": session.stopped_by,
        },
    )
