"""A job's runs on record: the strip and charts of its page, and the links between runs."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Q, QuerySet

from jobs_app.models import Job
from sessions_app.models import Session

RECENT_RUNS = 50


def runs_of(job: Job) -> QuerySet[Session]:
    """Linked to the job, or (not yet linked) on its host under one of its tags."""
    match = Q(job=job)
    if job.tags:
        match |= Q(job__isnull=True, host=job.host, script_tag__in=job.tags)
    return Session.objects.filter(match)


def recent_runs(job: Job, limit: int = RECENT_RUNS) -> list[Session]:
    """The latest `limit` runs, oldest first (the order a strip and a chart read in)."""
    rows = list(runs_of(job).order_by("-started_at", "-id")[:limit])
    rows.reverse()
    return rows


def job_of(session: Session) -> Job | None:
    if session.job_id:
        return session.job
    # A host has a handful of jobs: reading them beats a JSON lookup each database words apart.
    return next(
        (job for job in Job.objects.filter(host=session.host) if session.script_tag in job.tags),
        None,
    )


@dataclass
class Neighbours:
    job: Job | None
    previous: Session | None
    next: Session | None


def neighbours(session: Session | None) -> Neighbours:
    """The job a run belongs to, and that job's run just before and just after it."""
    if session is None:
        return Neighbours(None, None, None)
    job = job_of(session)
    if job is None:
        return Neighbours(None, None, None)
    runs = runs_of(job).exclude(pk=session.pk)
    at = session.started_at
    previous = (
        runs.filter(Q(started_at__lt=at) | Q(started_at=at, id__lt=session.pk))
        .order_by("-started_at", "-id")
        .first()
    )
    following = (
        runs.filter(Q(started_at__gt=at) | Q(started_at=at, id__gt=session.pk))
        .order_by("started_at", "id")
        .first()
    )
    return Neighbours(job, previous, following)
