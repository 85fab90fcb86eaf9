"""A job's output checks, judged on the host where its run's files are.

"Exit 0" is not success: a run that was to write a report, commit, or say something
and did not is `check_failed`. The checks a job sets (jobs_app.models.Job.output_checks:
a dict by check name) are judged here against the completion record, the run's
transcript, the files under a path and the working directory's git log. The verdict
is a small dict of text (wrapper.formats.OUTPUT_CHECK_KEYS), so a reporting host
carries it to the console inside the completion record it sends.

Only a run that would otherwise be a success is judged: a failed run has already
failed, and its files say nothing new.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path

from wrapper.formats import SpoolRecord, fit_output_check, parse_iso

# In the order they are judged: the cheap ones first; the first failure is the verdict.
CHECK_ORDER = (
    "min_turns",
    "max_cost_usd",
    "result_matches",
    "result_not_matches",
    "min_tool_calls",
    "files_changed",
    "git_commit",
)
GIT_TIMEOUT_SECONDS = 10
# files_changed looks at this many entries at most: a run's output folder, not a disk.
MAX_FILES_LOOKED_AT = 20_000
# min_tool_calls reads this much of the transcript at most.
MAX_TRANSCRIPT_BYTES = 256 * 1024 * 1024
SEEN_CHARS = 200

# A failed check: (what it wanted, what was seen); None when it passed.
Failure = tuple[str, str] | None


def should_judge(record: SpoolRecord) -> bool:
    return record.end_reason == "succeeded" and record.exit_code == 0


def judge(checks: dict, record: SpoolRecord) -> dict[str, str] | None:
    """The verdict of `checks` on the run `record` completed, or None when there is
    nothing to judge (no check set, or the run did not succeed)."""
    if not isinstance(checks, dict) or not checks or not should_judge(record):
        return None
    checked = []
    for name in CHECK_ORDER:
        if name not in checks or checks[name] in (None, "", False):
            continue
        checked.append(name)
        try:
            failure = CHECKS[name](checks[name], record)
        except Exception as exc:  # a check that cannot be judged has not passed
            failure = (name, f"could not be judged: {type(exc).__name__}: {exc}")
        if failure is not None:
            wanted, seen = failure
            return fit_output_check(
                {
                    "verdict": "failed",
                    "check": name,
                    "wanted": wanted,
                    "seen": seen,
                    "checked": ",".join(checked),
                }
            )
    if not checked:
        return None
    return fit_output_check({"verdict": "passed", "checked": ",".join(checked)})


def failure_words(verdict: dict) -> str:
    """One line for a person: which check failed, what it wanted, what was seen."""
    return (
        f"output check {verdict.get('check', '?')} failed: wanted {verdict.get('wanted', '?')}; "
        f"seen {verdict.get('seen', '?')}"
    )


def _start_epoch(record: SpoolRecord) -> float:
    return parse_iso(record.started_at).timestamp()


def _quoted(text: str | None) -> str:
    if not text:
        return "no result text"
    text = " ".join(text.split())
    return repr(text[:SEEN_CHARS] + ("..." if len(text) > SEEN_CHARS else ""))


def check_min_turns(wanted, record: SpoolRecord) -> Failure:
    if record.num_turns is not None and record.num_turns >= int(wanted):
        return None
    seen = "no turn count" if record.num_turns is None else f"{record.num_turns} turn(s)"
    return f"at least {int(wanted)} turn(s)", seen


def check_max_cost(wanted, record: SpoolRecord) -> Failure:
    try:
        cap = Decimal(str(wanted))
    except InvalidOperation:
        return f"a cost under {wanted!r}", "the cap is not a number"
    if record.cost_usd is None:
        return None  # an unknown cost proves no overspending: not judged as failed
    if Decimal(str(record.cost_usd)) < cap:
        return None
    return f"a cost under ${cap}", f"${record.cost_usd:.4f}"


def check_result_matches(pattern, record: SpoolRecord) -> Failure:
    if re.search(str(pattern), record.result_text or ""):
        return None
    return f"a result matching /{pattern}/", _quoted(record.result_text)


def check_result_not_matches(pattern, record: SpoolRecord) -> Failure:
    match = re.search(str(pattern), record.result_text or "")
    if match is None:
        return None
    return f"a result not matching /{pattern}/", f"{match.group(0)[:SEEN_CHARS]!r} in it"


def count_tool_calls(path: Path) -> int:
    """Tool calls in a transcript: tool_use blocks, each id once (a streamed assistant
    message is written more than once)."""
    ids: set[str] = set()
    unnamed = 0
    read = 0
    with open(path, "rb") as handle:
        for line in handle:
            read += len(line)
            if read > MAX_TRANSCRIPT_BYTES:
                break
            if b"tool_use" not in line:
                continue
            try:
                data = json.loads(line)
            except ValueError:
                continue
            message = data.get("message") if isinstance(data, dict) else None
            content = message.get("content") if isinstance(message, dict) else None
            for block in content if isinstance(content, list) else []:
                if isinstance(block, dict) and block.get("type") in (
                    "tool_use",
                    "server_tool_use",
                ):
                    if block.get("id"):
                        ids.add(str(block["id"]))
                    else:
                        unnamed += 1
    return len(ids) + unnamed


def check_min_tool_calls(wanted, record: SpoolRecord) -> Failure:
    want = f"at least {int(wanted)} tool call(s)"
    for candidate in (record.archive_path, record.transcript_path):
        if candidate and os.path.isfile(candidate):
            count = count_tool_calls(Path(candidate))
            return None if count >= int(wanted) else (want, f"{count} tool call(s)")
    return want, "no transcript to count them in"


def newest_change(root: Path, limit: int = MAX_FILES_LOOKED_AT) -> tuple[float | None, int]:
    """The latest modification time of a file under `root` (or of `root`, a file), and
    how many entries were looked at. Symlinks are not followed."""
    if root.is_file():
        return root.stat().st_mtime, 1
    newest, looked, folders = None, 0, [root]
    while folders and looked < limit:
        folder = folders.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            looked += 1
            try:
                if entry.is_dir(follow_symlinks=False):
                    folders.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    mtime = entry.stat(follow_symlinks=False).st_mtime
                    newest = mtime if newest is None else max(newest, mtime)
            except OSError:
                continue
            if looked >= limit:
                break
    return newest, looked


def check_files_changed(path, record: SpoolRecord) -> Failure:
    root = Path(os.path.expanduser(str(path)))
    if not root.is_absolute():
        root = Path(record.cwd or "/") / root
    want = f"a file under {root} modified during the run"
    if not root.exists():
        return want, f"{root} does not exist"
    newest, looked = newest_change(root)
    started = _start_epoch(record)
    if newest is not None and newest >= started:
        return None
    if newest is None:
        return want, f"no file under {root} ({looked} entries looked at)"
    from_when = parse_iso(record.started_at).isoformat(timespec="seconds")
    return want, (
        f"the newest of {looked} entries was modified "
        f"{int(started - newest)} s before the run started ({from_when})"
    )


def latest_commit_epoch(cwd: str) -> tuple[int | None, str]:
    """`git log -1 --format=%ct` in `cwd`: the latest commit's time, or None and why."""
    try:
        done = subprocess.run(
            ["git", "-C", cwd, "log", "-1", "--format=%ct"],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_SECONDS,
            errors="replace",
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"},
        )
    except FileNotFoundError:
        return None, "git is not installed"
    except subprocess.TimeoutExpired:
        return None, f"git log gave no answer in {GIT_TIMEOUT_SECONDS} s"
    text = done.stdout.strip()
    if done.returncode != 0 or not text.isdigit():
        why = (done.stderr.strip().splitlines() or ["no commit"])[0][:SEEN_CHARS]
        return None, f"git log: {why}"
    return int(text), ""


def check_git_commit(_wanted, record: SpoolRecord) -> Failure:
    want = f"a git commit in {record.cwd} during the run"
    if not record.cwd:
        return want, "the run's working directory is unknown"
    committed, why = latest_commit_epoch(record.cwd)
    if committed is None:
        return want, why
    started = int(_start_epoch(record))
    if committed >= started:
        return None
    return want, f"the latest commit is {started - committed} s older than the run"


CHECKS: dict[str, Callable[[object, SpoolRecord], Failure]] = {
    "min_turns": check_min_turns,
    "max_cost_usd": check_max_cost,
    "result_matches": check_result_matches,
    "result_not_matches": check_result_not_matches,
    "min_tool_calls": check_min_tool_calls,
    "files_changed": check_files_changed,
    "git_commit": check_git_commit,
}
