"""Which job a run belongs to: by the wrapper tag its job definition runs, per host."""

from __future__ import annotations

from django.conf import settings
from django.core.cache import cache

from jobs_app.models import Job

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
