"""The rollups the database keeps as runs are written (sessions_app.rollups) equal the
sums of the rows themselves, whichever way the rows were written, on SQLite and on
PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Count, Sum
from django.db.models.functions import Coalesce
from prometheus_client.parser import text_string_to_metric_families

from sessions_app import rollups
from sessions_app.charts import cost_chart
from sessions_app.costs import cost_report
from sessions_app.models import (
    LIVE_STATUSES,
    RunDay,
    RunTelemetry,
    RunTotal,
    Session,
    Status,
    TelemetryTotal,
    run_cost_expression,
    unknown_cost_q,
)

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def run(tag="nightly", status=Status.SUCCEEDED, hours_ago=1, cost="0.250000", **extra):
    started = NOW - timedelta(hours=hours_ago)
    return Session.objects.create(
        session_id=extra.pop("session_id", uuid.uuid4()),
        script_tag=tag,
        host=extra.pop("host", "h1"),
        status=status,
        started_at=started,
        ended_at=None if status in LIVE_STATUSES else started + timedelta(minutes=3),
        cost_usd=None if cost is None else Decimal(cost),
        input_tokens=extra.pop("input_tokens", 1000),
        output_tokens=extra.pop("output_tokens", 100),
        **extra,
    )


def totals_from_rows() -> dict:
    """The oracle: RunTotal's figures grouped straight from the rows (the query /metrics
    ran before the rollups)."""
    rows = Session.objects.values("script_tag", "host", "status").annotate(
        n=Count("id"),
        cost=Sum(run_cost_expression()),
        unknown=Count("id", filter=unknown_cost_q()),
        tokens=Coalesce(Sum("input_tokens"), 0) + Coalesce(Sum("output_tokens"), 0),
    )
    return {
        (r["script_tag"], r["host"], r["status"]): (
            r["n"],
            Decimal(str(r["cost"] or 0)).quantize(Decimal("0.000001")),
            r["unknown"],
            r["tokens"],
        )
        for r in rows
    }


def totals_kept() -> dict:
    return {
        (r.script_tag, r.host, r.status): (
            r.runs,
            r.cost_usd,
            r.unknown_cost_runs,
            r.input_tokens + r.output_tokens,
        )
        for r in RunTotal.objects.filter(runs__gt=0)
    }


def days_kept() -> dict:
    return {
        (r.day, r.script_tag, r.host): (r.runs, r.cost_micros, r.unknown_cost_runs)
        for r in RunDay.objects.filter(runs__gt=0)
    }


def days_from_rows() -> dict:
    found: dict = {}
    for s in Session.objects.exclude(status__in=LIVE_STATUSES):
        key = (s.started_at.astimezone(UTC).date(), s.script_tag, s.host)
        runs, micros, unknown = found.get(key, (0, 0, 0))
        cost = s.shown_cost_usd
        found[key] = (
            runs + 1,
            micros + int((cost or 0) * 1_000_000),
            unknown + (cost is None),
        )
    return found


def test_every_way_of_writing_a_run_keeps_the_rollups_equal_to_the_rows():
    live = run(tag="nightly", status=Status.LIVE, cost=None)
    run(tag="nightly", cost="1.250000", input_tokens=5, output_tokens=7)
    unknown = run(tag="nightly", status=Status.KILLED, cost=None, hours_ago=30)
    run(tag="weekly", status=Status.QUOTA_SKIP, cost=None, host="h2")
    assert totals_kept() == totals_from_rows()

    # The run ends (save() of every column), a cost is found later (update() of one).
    live.status, live.cost_usd = Status.SUCCEEDED, Decimal("0.100000")
    live.ended_at = NOW
    live.save()
    Session.objects.filter(pk=unknown.pk).update(cost_computed_usd=Decimal("0.333333"))
    # A column no rollup sums: nothing moves.
    Session.objects.filter(script_tag="weekly").update(transcript_path="/tmp/x.jsonl")
    # Many rows in one statement (a host's lost runs), rows in bulk, a tag renamed, a delete.
    Session.objects.bulk_create(
        [
            Session(
                session_id=uuid.uuid4(),
                script_tag="bulk",
                host="h3",
                status=Status.LIVE,
                started_at=NOW - timedelta(days=2, minutes=i),
                cost_usd=Decimal("0.010000"),
            )
            for i in range(30)
        ]
    )
    Session.objects.filter(script_tag="bulk").update(status=Status.UNKNOWN)
    Session.objects.filter(script_tag="weekly").update(script_tag="monthly", host="h4")
    Session.objects.filter(
        script_tag="bulk", started_at__lt=NOW - timedelta(days=2, minutes=20)
    ).delete()

    kept = totals_kept()
    assert kept == totals_from_rows()
    assert kept[("nightly", "h1", Status.SUCCEEDED)][:2] == (2, Decimal("1.35"))
    assert kept[("bulk", "h3", Status.UNKNOWN)][:2] == (21, Decimal("0.21"))  # 9 deleted
    assert ("weekly", "h2", Status.QUOTA_SKIP) not in kept
    assert days_kept() == days_from_rows()

    # A rebuild from the rows finds what the triggers kept.
    before = (totals_kept(), days_kept())
    rollups.rebuild_rollups()
    assert (totals_kept(), days_kept()) == before


def test_the_cost_report_reads_the_rollup_by_utc_day():
    run(tag="a", cost="1.25", hours_ago=1)
    run(tag="a", cost=None, hours_ago=2)
    run(tag="b", cost="0.75", hours_ago=24 * 2)
    run(tag="b", cost="9.00", hours_ago=24 * 40)  # out of the range
    run(tag="live", status=Status.LIVE, cost=None)

    report = cost_report(days=7, now=NOW)

    by_tag = {line.key: line for line in report.by_tag}
    assert set(by_tag) == {"a", "b"}
    assert (by_tag["a"].cost_usd, by_tag["a"].runs, by_tag["a"].unknown_cost_runs) == (
        Decimal("1.25"),
        2,
        1,
    )
    assert report.total.cost_usd == Decimal("2.00")
    by_day = {line.key: line.cost_usd for line in report.by_day}
    assert by_day["2026-11-24"] == Decimal("1.25") and by_day["2026-11-22"] == Decimal("0.75")


def test_the_cost_chart_draws_the_costliest_tags_and_sums_the_rest_as_other():
    """The report reads each day's cost of the chart's tags only; "other" is the day's
    total less theirs, per host filter too, and a tag is escaped in the drawing."""
    for index in range(8):  # t7 costs most
        for host in ("h1", "h2"):
            run(tag=f"t{index}", host=host, cost=f"{index + 1}.000000", hours_ago=1)
            run(tag=f"t{index}", host=host, cost="0.500000", hours_ago=25)
    run(tag="<i>", cost="20.000000", hours_ago=2)
    run(tag="t0", cost=None, hours_ago=3)  # unknown: counted, never drawn as $0

    report = cost_report(days=7, now=NOW)

    assert report.chart_tags == ["<i>", "t7", "t6", "t5", "t4", "t3"]
    today, yesterday = report.by_day[-1], report.by_day[-2]
    assert today.key == "2026-11-24" and yesterday.key == "2026-11-23"
    assert today.by_tag == {
        "<i>": Decimal(20),
        **{f"t{index}": Decimal(2 * (index + 1)) for index in range(3, 8)},
    }
    assert yesterday.by_tag == {f"t{index}": Decimal(1) for index in range(3, 8)}
    assert today.cost_usd == 20 + 2 * sum(range(1, 9)) and today.unknown_cost_runs == 1
    chart = str(cost_chart(report))
    assert "<title>2026-11-24: other $12.0000</title>" in chart  # t0..t2 on both hosts
    assert "<title>2026-11-23: other $3.0000</title>" in chart
    assert "<title>2026-11-24: &lt;i&gt; $20.0000</title>" in chart and "<i>" not in chart

    on_h2 = cost_report(days=7, now=NOW, host="h2")
    assert on_h2.chart_tags == ["t7", "t6", "t5", "t4", "t3", "t2"]
    assert on_h2.by_day[-1].by_tag["t7"] == Decimal(8)
    assert on_h2.total.cost_usd == sum(range(1, 9)) + Decimal("4")
    assert [line.key for line in on_h2.by_host] == ["h1", "h2"]  # every host, filter or not
    assert on_h2.by_host[0].cost_usd == 20 + sum(range(1, 9)) + 4


def test_telemetry_totals_follow_their_rows():
    first = RunTelemetry.objects.create(
        session_id=uuid.uuid4(), host="h1", job_tag="nightly", api_requests=3, tool_calls=2
    )
    RunTelemetry.objects.create(
        session_id=uuid.uuid4(), host="h1", job_tag="nightly", cost_usd=Decimal("0.5")
    )
    first.api_requests, first.cost_usd = 10, Decimal("0.25")
    first.save()

    total = TelemetryTotal.objects.get(job_tag="nightly", host="h1")
    assert (total.runs, total.api_requests, total.tool_calls, total.cost_usd) == (
        2,
        10,
        2,
        Decimal("0.75"),
    )
    first.delete()
    total.refresh_from_db()
    assert (total.runs, total.api_requests, total.cost_usd) == (1, 0, Decimal("0.5"))


def test_missing_triggers_are_put_back_and_the_rollups_summed_again():
    """SQLite remakes a table to alter it in a migration, and drops its triggers with it:
    after a migrate, the console puts them back (apps.keep_rollup_triggers)."""
    run(tag="a", cost="1.00")
    assert rollups.ensure_triggers(connection) is False  # all there: nothing done
    with connection.cursor() as cursor:
        drop = "DROP TRIGGER sessions_app_session_rollup_insert"
        cursor.execute(drop + (" ON sessions_app_session" if connection.vendor != "sqlite" else ""))
    run(tag="a", cost="2.00")  # not counted: no trigger
    assert RunTotal.objects.get(script_tag="a").runs == 1

    assert rollups.ensure_triggers(connection) is True
    assert RunTotal.objects.get(script_tag="a").cost_usd == Decimal("3")
    run(tag="a", cost="4.00")
    assert totals_kept() == totals_from_rows()
    assert rollups.missing_triggers(connection) == []


def test_runs_counter_counts_ended_runs_so_it_never_falls(admin_client):
    live = run(tag="nightly", status=Status.LIVE, cost=None)

    def runs():
        text = admin_client.get("/metrics").content.decode()
        family = {f.name: f for f in text_string_to_metric_families(text)}["opsconsole_runs"]
        return {s.labels["status"]: s.value for s in family.samples if s.name.endswith("_total")}

    assert runs() == {}
    Session.objects.filter(pk=live.pk).update(status=Status.FAILED, ended_at=NOW)
    assert runs() == {"failed": 1}
