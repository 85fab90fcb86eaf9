"""The join of a reporting host's runs, made on the console. The host reads each live
run's origin (the scheduler job its processes name: sessions_app.origins, read by
monitor_app.job_join as on any host) and sends it in its report until acknowledged;
the console ties it to the host's job with the code its own monitor uses
(jobs_app.linking.job_for_origin: a job found only so is made, with its scheduler,
marked not wrapped). The link goes on the run's row and on the live run in the sample
the console publishes for the host, so the run has its job page, history and late
detection.
"""

from __future__ import annotations

from datetime import datetime
from functools import partial

from fleet.report_items import Parsed, one_item
from jobs_app.linking import job_for_origin, job_id_for, job_index
from monitor_app.snapshot import Snapshot
from sessions_app.models import Session


def tie_origins(parsed: Parsed, host: str, now: datetime) -> None:
    """Jobs for the origins this report brings; before its sample and its live rows are
    written (they carry the link), after its scheduler collection (a cron entry the
    host just collected names its job with its own label)."""
    live = {s.session_id: s for s in parsed.snapshot.sessions} if parsed.snapshot else {}
    for run in live.values():  # a report taken again item by item starts from nothing
        run.job_id = None
    if not parsed.origins:
        return
    rows = {
        str(session_id): (tag, wrapped, job_id)
        for session_id, tag, wrapped, job_id in Session.objects.filter(
            session_id__in=[session_id for session_id, _, _ in parsed.origins], host=host
        ).values_list("session_id", "script_tag", "wrapped", "job_id")
    }
    for session_id, origin, command in parsed.origins:
        row, run = rows.get(session_id), live.get(session_id)
        if (row is not None and row[2] is not None) or (row is None and run is None):
            continue  # tied already; or neither on record nor live here: it comes again
        tag, wrapped = (run.sidecar.script_tag, run.wrapped) if run is not None else row[:2]
        if wrapped and job_id_for(host, tag) is not None:
            continue  # its tag ties it (sessions_app.ingest)
        job_id = one_item(
            parsed,
            "origin",
            session_id,
            {"session_id": session_id, **origin.record()},
            partial(job_for_origin, script_tag=tag, wrapped=wrapped, command=command, now=now),
            host,
            origin,
        )
        if job_id is None:
            continue  # a unit that is no job of ours (jobs_app.linking.makes_a_job)
        if run is not None:
            run.job_id = job_id
        Session.objects.filter(session_id=session_id, host=host, job__isnull=True).update(
            job=job_id
        )


def origins_done(parsed: Parsed, host: str) -> list[str]:
    """The origins the host may let go: their run is on record (tied, or naming no job of
    ours); one whose run has no row yet is sent again with the next report."""
    ids = [session_id for session_id, _, _ in parsed.origins]
    if not ids:
        return []
    rows = Session.objects.filter(session_id__in=ids, host=host).values_list("session_id")
    return sorted(str(session_id) for (session_id,) in rows)


def jobs_of_live_runs(snapshot: Snapshot, host: str) -> None:
    """Each live run of the host's sample with the job its row is tied to (by tag or by
    origin), for the sample the console publishes: job pages find the host's unwrapped
    runs live (monitor_app.job_status.live_runs_of). A run its tag ties is found there by
    its tag: asked of the database only when the cached index names no job for it."""
    index = job_index()
    untied = [
        live.session_id
        for live in snapshot.sessions
        if live.job_id is None and not (live.wrapped and (host, live.sidecar.script_tag) in index)
    ]
    if not untied:
        return
    rows = Session.objects.filter(session_id__in=untied, host=host, job__isnull=False)
    jobs = {str(session_id): job_id for session_id, job_id in rows.values_list("session_id", "job")}
    for live in snapshot.sessions:
        if live.job_id is None:
            live.job_id = jobs.get(live.session_id)
