"""Every live run tied to the scheduler job that started it, wrapped or not.

Each sample reads the origin of each session's root process (sessions_app.origins:
read once per process, so a sample costs dictionary look-ups), without the
database. When the database is written (the monitor's sync) an origin not tied yet
is joined to its Job (jobs_app.linking), made when there is none; a cron entry not
on record makes the collectors run first, so the job gets the entry's own name and
schedule. The link is put on the session's row, and kept until the run's end is
recorded. A reporting host writes no database: it sends each run's origin
(`origin_of`) and the console makes the join (fleet.report_origins).
"""

from __future__ import annotations

import logging
import shlex
from datetime import datetime
from pathlib import Path

from jobs_app.linking import job_for_origin, job_id_for, match_origin
from monitor_app.job_status import collect_and_record
from monitor_app.snapshot import LiveSession, Snapshot
from sessions_app.models import Session
from sessions_app.origins import Origin, OriginReader
from sessions_app.proctree import ProcessTable

log = logging.getLogger(__name__)


class JobJoin:
    def __init__(self, host: str, proc_root: str | Path = "/proc") -> None:
        self.host = host
        self.reader = OriginReader(proc_root)
        self.jobs: dict[Origin, int] = {}  # origin -> the job it was tied to
        # session id -> (its origin, its root process), while it is live
        self.origins: dict[str, tuple[Origin, int]] = {}
        self.session_jobs: dict[str, int] = {}  # session id -> job, until its end is on record
        self.unmatched: set[str] = set()  # live sessions whose origin names no job of ours

    def read(self, live: LiveSession, root: int, table: ProcessTable) -> None:
        """The origin of a live session's root process, and its job if already known."""
        origin = self.reader.origin(table, root)
        if origin is None:
            return
        live.origin = origin.description
        self.origins[live.session_id] = (origin, root)
        live.job_id = self.session_jobs.get(live.session_id) or self.jobs.get(origin)
        if live.job_id is not None:
            self.session_jobs[live.session_id] = live.job_id

    def forget(self, table: ProcessTable, live_ids: set[str], ending_ids: set[str]) -> None:
        """Drop what was kept of exited processes and of runs neither live nor ending."""
        self.reader.forget_exited(table)
        for session_id in [s for s in self.origins if s not in live_ids]:
            del self.origins[session_id]
        self.unmatched &= live_ids
        if len(self.jobs) > 2 * len(self.origins) + 100:  # each CI run is an origin of its own
            live = {origin for origin, _ in self.origins.values()}
            self.jobs = {o: job for o, job in self.jobs.items() if o in live}
        keep = live_ids | ending_ids
        for session_id in [s for s in self.session_jobs if s not in keep]:
            del self.session_jobs[session_id]

    def tie(self, snapshot: Snapshot, now: datetime, *, collect: bool) -> None:
        """Jobs for the origins not tied yet (database writes: the monitor's sync)."""
        collected = not collect
        for live in snapshot.sessions:
            if live.job_id is not None or live.session_id not in self.origins:
                continue
            if live.session_id in self.unmatched:
                continue  # its origin names no job of ours: asked once per run
            sidecar = live.sidecar
            by_tag = job_id_for(sidecar.host, sidecar.script_tag) if live.wrapped else None
            if by_tag is not None:  # its tag ties it (jobs_app.linking): asked once per run
                live.job_id = self.session_jobs[live.session_id] = by_tag
                continue
            origin, root = self.origins[live.session_id]
            if (
                origin.scheduler == "cron"
                and not collected
                and match_origin(self.host, origin) is None
            ):
                collected = True  # an entry not on record yet: collect it under its own name
                try:
                    collect_and_record(now)
                except Exception:  # a collector bug must not stop the join
                    log.exception("job collection for a cron run failed")
            job_id = job_for_origin(
                self.host,
                origin,
                script_tag=sidecar.script_tag,
                wrapped=live.wrapped,
                command=self.command_of(root),
                now=now,
            )
            if job_id is None:
                self.unmatched.add(live.session_id)
                continue
            self.jobs[origin] = live.job_id = job_id
            self.session_jobs[live.session_id] = job_id
            Session.objects.filter(session_id=live.session_id, job__isnull=True).update(job=job_id)

    def command_of(self, root: int) -> str:
        """The command line of a run's root process: a found job's command when its
        scheduler names none (a CI job, a unit)."""
        return shlex.join(self.reader.argv(root))

    def origin_of(self, session_id: str) -> tuple[Origin, str] | None:
        """A live session's origin and its root's command line (a reporting host sends
        them: the console makes the join, fleet.report_origins)."""
        found = self.origins.get(session_id)
        return (found[0], self.command_of(found[1])) if found else None

    def job_of_ended(self, session_id: str) -> int | None:
        """The job of a run whose end is being recorded (then forgotten)."""
        return self.session_jobs.pop(session_id, None)
