"""Import the transcripts already on disk, before Claude Code's cleanup deletes them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

from django.conf import settings

from sessions_app import transcript_store
from sessions_app.models import Session, Status
from wrapper.formats import StatePaths, copy_into_archive, is_session_id, parse_iso, safe_tag

log = logging.getLogger(__name__)


@dataclass
class BackfillResult:
    imported: int = 0
    archived: int = 0  # copies made for runs already on record
    skipped: int = 0  # on record and archived already
    refreshed: int = 0  # on record, figures (computed cost, search index) filled in now
    phantoms: int = 0  # files with no conversation: not runs, not imported
    failed: list[tuple[str, str]] | None = None


def transcripts_on_disk(config_dirs: list[Path]) -> Iterator[Path]:
    """Main-session transcripts (<uuid>.jsonl) under each config dir's projects/.
    Agent files (`agent-<id>.jsonl`, 2.0.x) are not runs of their own: they are read
    with the session they name."""
    for config_dir in config_dirs:
        projects = Path(config_dir) / "projects"
        if not projects.is_dir():
            continue
        for folder in sorted(projects.iterdir()):
            if folder.is_symlink() or not folder.is_dir():
                continue
            for path in sorted(folder.glob("*.jsonl")):
                if is_session_id(path.stem) and not path.is_symlink() and path.is_file():
                    yield path


def _when(stamp: str, fallback: float) -> datetime:
    try:
        return parse_iso(stamp)
    except ValueError:
        return datetime.fromtimestamp(fallback, UTC)


def backfill(
    paths: StatePaths, config_dirs: list[Path], progress: Callable[[Path], None] | None = None
) -> BackfillResult:
    result = BackfillResult(failed=[])
    known = {
        str(session_id): (archive, computed, indexed)
        for session_id, archive, computed, indexed in Session.objects.values_list(
            "session_id", "archive_path", "cost_computed_usd", "search_indexed_bytes"
        )
    }
    for path in transcripts_on_disk(config_dirs):
        session_id = path.stem
        try:
            archive, computed, indexed = known.get(session_id, ("", None, None))
            if session_id in known and archive and Path(archive).is_file():
                if computed is None or indexed is None:
                    session = Session.objects.get(session_id=session_id)
                    transcript_store.archive_subagents(path, Path(archive))
                    transcript_store.record_transcript_figures(session, path)
                    result.refreshed += 1
                else:
                    result.skipped += 1
            else:
                outcome = import_one(path, paths, on_record=session_id in known)
                if outcome is None:
                    result.phantoms += 1
                elif session_id in known:
                    result.archived += 1
                else:
                    result.imported += 1
        except OSError as exc:
            log.warning("could not import %s: %s", path, exc)
            result.failed.append((str(path), str(exc)))
        if progress:
            progress(path)
    return result


def import_one(path: Path, paths: StatePaths, *, on_record: bool) -> Session | None:
    """Record one transcript (with its subagent files) as a run, archive them, price it
    and index it, reading each file once. None for a file with no conversation (empty,
    or only summaries, file snapshots, queue operations): that is not a run, and a row
    backfill once made for it is removed."""
    existing = Session.objects.filter(session_id=path.stem).first() if on_record else None
    target = existing or SimpleNamespace(session_id=path.stem, search_indexed_bytes=None)
    summary, files = transcript_store.read_session(path, index_for=target)
    if not summary.has_conversation:
        Session.objects.filter(
            session_id=path.stem, status=Status.IMPORTED, recorded_from="backfill"
        ).delete()
        return None
    mtime = path.stat().st_mtime
    started = _when(summary.first_timestamp, mtime)
    ended = _when(summary.last_timestamp, mtime)
    tag = safe_tag(Path(summary.cwd).name) if summary.cwd else "imported"
    dest = paths.archive_path(started.isoformat(), tag, path.stem)
    copy_into_archive(path, dest)
    transcript_store.archive_subagents(path, dest)
    if existing is not None:
        existing.archive_path = str(dest)
        fields = transcript_store.apply_summary(existing, summary, files)
        existing.save(update_fields=[*fields, "archive_path", "search_indexed_bytes"])
        return existing
    usage = summary.as_usage()
    return Session.objects.create(
        session_id=path.stem,
        script_tag=tag,
        host=settings.OPSCONSOLE_HOST,
        status=Status.IMPORTED,
        end_reason="imported",
        started_at=started,
        ended_at=ended,
        duration_ms=max(0, int((ended - started).total_seconds() * 1000)),
        cost_usd=(
            Decimal(str(summary.legacy_cost_usd)).quantize(Decimal("0.000001"))
            if summary.legacy_cost_usd is not None
            else None
        ),
        cost_computed_usd=summary.cost_usd,
        input_tokens=usage["input_tokens"],
        output_tokens=usage["output_tokens"],
        cache_read_tokens=usage["cache_read_input_tokens"],
        cache_creation_tokens=usage["cache_creation_input_tokens"],
        model=", ".join(sorted(summary.models))[:100],
        cwd=summary.cwd,
        transcript_path=str(path),
        archive_path=str(dest),
        recorded_from="backfill",
        subagent_files=len(files) - 1,
        search_indexed_bytes=target.search_indexed_bytes,
    )
