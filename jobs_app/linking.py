"""Which job a run belongs to: by the wrapper tag its job definition runs, per host, or
by the scheduler job its own processes name (sessions_app.origins)."""

from __future__ import annotations

import re
import shlex
from datetime import datetime

from django.conf import settings
from django.core.cache import cache

from jobs_app.collectors.base import wrapping_line
from jobs_app.collectors.cron import entry_label
from jobs_app.models import Job
from sessions_app.origins import Origin
from wrapper.formats import safe_tag

CACHE_KEY = "opsconsole:job-index"


def job_index() -> dict[tuple[str, str], int]:
    """(host, tag) -> job id; rebuilt at most once per snapshot window."""
    index = cache.get(CACHE_KEY)
    if index is None:
        index = {}
        for job_id, host, tags in Job.objects.order_by("id").values_list("id", "host", "tags"):
            for tag in tags or []:
                index.setdefault((host, str(tag)), job_id)
        cache.set(CACHE_KEY, index, timeout=settings.OPSCONSOLE_SNAPSHOT_SECONDS)
    return index


def job_id_for(host: str, tag: str) -> int | None:
    """The job a run of `tag` on `host` belongs to. A run is linked once, when its row is
    made: a miss asks the database about the host's jobs, so a job made in another
    process since the index was cached still claims its runs."""
    found = job_index().get((host, tag))
    if found is None:
        for job_id, tags in Job.objects.filter(host=host).order_by("id").values_list("id", "tags"):
            if tag in (tags or []):
                return job_id
    return found


def forget_index() -> None:
    cache.delete(CACHE_KEY)


# ----------------------------------------------------------------------------- by origin
# A run tied to its job from its own processes (sessions_app.origins): the unwrapped
# ones, which carry no tag, and wrapped ones whose tag names no job.


def _command_words(command: str) -> list[str]:
    """The words of a one-command shell line from its command word on (VAR=value
    assignments before it dropped): what the process has as argv once sh exec'd it."""
    try:
        words = shlex.split(command)
    except ValueError:
        return []
    while words and "=" in words[0] and not words[0].startswith(("-", "/")):
        words.pop(0)
    return words


def match_origin(host: str, origin: Origin) -> int | None:
    """The job on record that `origin` names, if there is one."""
    jobs = Job.objects.filter(host=host, scheduler=origin.scheduler).order_by("id")
    if origin.scheduler != "cron":
        return jobs.filter(label=origin.label).values_list("id", flat=True).first()
    for job_id, command in jobs.values_list("id", "command"):
        if names_origin(command, origin):
            return job_id
    return None


def names_origin(command: str, origin: Origin) -> bool:
    """Whether a cron entry's `command` is the one a cron origin's shell was given (or,
    when the shell exec'd it, the argv it became)."""
    if origin.command and command.strip() == origin.command:
        return True
    return bool(origin.argv) and _command_words(command) == list(origin.argv)


def found_job_label(origin: Origin) -> str:
    """A job's label when its runs found it: the cron collector's name for an entry
    without a `# opsconsole:` comment, else the scheduler's own name."""
    if origin.scheduler == "cron":
        return entry_label("", [], origin.command or shlex.join(origin.argv))
    return origin.label


def makes_a_job(origin: Origin) -> bool:
    """Whether a run of `origin` with no job on record makes one. A systemd unit does
    only when it is transient (`systemd-run`: `run-*`): a long-lived service that merely
    hosts agents deep in its tree (a CI runner, a terminal server) is not their job, and
    a unit whose ExecStart runs claude is collected already."""
    if origin.scheduler == "systemd":
        return origin.label.startswith("run-")
    return True


def job_for_origin(
    host: str,
    origin: Origin,
    *,
    script_tag: str,
    wrapped: bool,
    command: str,
    now: datetime,
) -> int | None:
    """The job `origin` names, made when there is none yet (makes_a_job): with its
    scheduler, marked not wrapped when the run that found it was not (a wrapped one
    lends its tag). None: a unit that is no job of ours."""
    found = match_origin(host, origin)
    if found is not None or not makes_a_job(origin):
        return found
    job, created = Job.objects.get_or_create(
        scheduler=origin.scheduler,
        host=host,
        label=found_job_label(origin)[:255],
        defaults={
            "tags": [script_tag] if wrapped else [],
            "wrapped": wrapped,
            "command": origin.command or command,
            "scope": origin.scope[:16],
            "state": "found from its runs",
            "source": origin.description[:2000],
            "first_seen_at": now,
        },
    )
    if created:
        forget_index()
    return job.pk


def wrapping_suggestion(job: Job) -> str:
    """The line that would wrap a job that runs claude directly: its command with
    `opsconsole-run --tag TAG --` where `claude` was; "" when the command runs none."""
    if job.wrapped or not job.command:
        return ""
    tag = safe_tag(re.sub(r"\.(service|scope)$", "", job.label.replace("/", "-"))).lstrip("_-")
    return wrapping_line(job.command, tag)
