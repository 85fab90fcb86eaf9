"""`opsconsole-run`: what a scheduled job calls instead of `claude -p ...`."""

from __future__ import annotations

import argparse
import os
import sys

from wrapper.formats import (
    EXIT_OVERLAP_SKIP,
    EXIT_QUOTA_SKIP,
    INT_RANGES,
    NAME_LIMITS,
    OVERLAP_POLICIES,
    StatePaths,
    clear_quota_stamp,
    field_problem,
    is_valid_tag,
    read_quota_stamp,
)
from wrapper.run import DEFAULT_OVERLAP_WAIT_SECONDS, Options, Wrapper, say

USAGE = (
    "opsconsole-run --tag TAG [--platform NAME] [--max-attempts N] "
    "[--overlap allow|skip|queue] [--overlap-wait SECONDS] -- CLAUDE_ARGS..."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="opsconsole-run",
        usage=USAGE,
        description=(
            "Run claude under a pre-assigned session id, visible to opsconsole while it runs "
            "and on record when it ends. claude's output passes through unchanged; the exit "
            f"code is claude's own ({EXIT_QUOTA_SKIP}: skipped for a quota stamp, "
            f"{EXIT_OVERLAP_SKIP}: skipped because the tag's previous run is still live "
            "(--overlap), 127: no claude, 78: unsafe state directory)."
        ),
    )
    parser.add_argument("--tag", help="the job's name, as the console shows it ([A-Za-z0-9._-])")
    parser.add_argument(
        "--platform",
        default=os.environ.get("OPSCONSOLE_PLATFORM", ""),
        help="a grouping for the dashboard, e.g. the scheduler or product (default "
        "$OPSCONSOLE_PLATFORM)",
    )
    parser.add_argument(
        "--max-attempts",
        type=int,
        default=3,
        help="attempts when the model refuses, each under a fresh session id (default 3)",
    )
    parser.add_argument(
        "--overlap",
        choices=OVERLAP_POLICIES,
        default="allow",
        help="when a run of this tag is still live: allow (start anyway, the default), "
        f"skip (exit {EXIT_OVERLAP_SKIP}, on record as overlap_skip), or queue (wait for it "
        "up to --overlap-wait seconds, then skip)",
    )
    parser.add_argument(
        "--overlap-wait",
        type=float,
        default=float(
            os.environ.get("OPSCONSOLE_OVERLAP_WAIT_SECONDS") or DEFAULT_OVERLAP_WAIT_SECONDS
        ),
        help="--overlap queue: the longest wait, in seconds (default "
        "$OPSCONSOLE_OVERLAP_WAIT_SECONDS or 600)",
    )
    parser.add_argument(
        "--clear-quota-stamp",
        action="store_true",
        help="remove the org-level quota stamp so wrappers start claude again, and exit",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, claude_args = (
        (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if ("--" in argv) else (argv, [])
    )
    parser = build_parser()
    args = parser.parse_args(ours)

    if args.clear_quota_stamp:
        paths = StatePaths.from_env()
        stamp = read_quota_stamp(paths)
        if clear_quota_stamp(paths):
            held = f" (it held until {stamp.until})" if stamp else " (it had expired)"
            say(f"quota stamp {paths.quota_stamp} removed{held}")
        else:
            say("no quota stamp was set")
        return 0
    if not args.tag or not is_valid_tag(args.tag):
        parser.print_usage(sys.stderr)
        say("--tag is required: 1-100 characters of letters, digits, '.', '_' or '-'")
        return 2
    platform_problem = field_problem("platform", args.platform)
    if platform_problem:
        say(
            f"--platform (or $OPSCONSOLE_PLATFORM): {platform_problem}; use at most "
            f"{NAME_LIMITS['platform']} characters, no control characters"
        )
        return 2
    low, high = INT_RANGES["attempt"]
    if not low <= args.max_attempts <= high:
        say(f"--max-attempts must be between {low} and {high}")
        return 2
    if not 0 <= args.overlap_wait <= 7 * 24 * 3600:
        say("--overlap-wait must be between 0 and 604800 seconds")
        return 2
    if not claude_args:
        say("no claude arguments after '--' (e.g. -- -p 'do the thing')")
        return 2
    options = Options(
        tag=args.tag,
        platform=args.platform,
        max_attempts=args.max_attempts,
        claude_args=claude_args,
        overlap=args.overlap,
        overlap_wait=args.overlap_wait,
    )
    return Wrapper(options).run()
