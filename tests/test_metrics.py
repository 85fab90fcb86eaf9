"""GET /metrics: Prometheus text that prometheus-client's own parser reads, and no
scrape without a token, a session or an allowed address."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from alerts_app.models import Channel
from jobs_app.models import Job
from monitor_app.models import Event, EventKind, HostSample
from opsconsole.models import ApiToken
from sessions_app.models import Session, Status

pytestmark = pytest.mark.django_db


@pytest.fixture
def history(settings, console_state):
    host = settings.OPSCONSOLE_HOST
    job = Job.objects.create(scheduler="cron", label="nightly report", host=host, tags=["nightly"])
    now = timezone.now()
    statuses = [Status.SUCCEEDED, Status.FAILED, Status.FAILED, Status.FALSE_SUCCESS]
    for index, status in enumerate(statuses):  # oldest first: the latest is FALSE_SUCCESS
        Session.objects.create(
            session_id=uuid.uuid4(),
            script_tag="nightly",
            host=host,
            status=status,
            job=job,
            started_at=now - timedelta(hours=10 - index),
            ended_at=now - timedelta(hours=10 - index) + timedelta(minutes=1),
            cost_usd=Decimal("0.25"),
            input_tokens=1000,
            output_tokens=200,
        )
    HostSample.objects.create(
        host=host,
        seq=7,
        taken_at=now - timedelta(seconds=3),
        interval_seconds=2,
        sample_ms=18.5,
        etag="abc",
        api_document=json.dumps(
            {
                "sessions": [
                    {"host": host, "state": "live"},
                    {"host": host, "state": "live"},
                    {"host": host, "state": "unwrapped"},
                ]
            }
        ),
        state_document="{}",
    )
    Event.objects.create(
        at=now,
        host="other-host",
        kind=EventKind.QUOTA_SET,
        message="quota",
        detail={"until": (now + timedelta(hours=2)).isoformat()},
        dedupe_key="q1",
    )
    Channel(name="ops webhook", url="json://127.0.0.1:9/hook").save()
    return job


def scrape(client, **headers):
    response = client.get("/metrics", **headers)
    return response.status_code, response.content.decode()


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(family, **labels) -> list:
    return [s for s in family.samples if all(s.labels.get(k) == v for k, v in labels.items())]


def test_metrics_parse_with_prometheus_clients_own_parser(client, history, settings):
    user = get_user_model().objects.create_user("prometheus", password="pw")
    _, token = ApiToken.issue(user, "scraper")
    status, text = scrape(client, HTTP_AUTHORIZATION=f"Bearer {token}")
    assert status == 200
    found = families(text)
    host = settings.OPSCONSOLE_HOST
    live = found["opsconsole_live_sessions"]
    assert samples(live, host=host, state="live")[0].value == 2
    assert samples(live, host=host, state="unwrapped")[0].value == 1
    assert samples(found["opsconsole_monitor_sample_duration_seconds"])[0].value == 0.0185
    assert 2 < samples(found["opsconsole_monitor_sample_age_seconds"])[0].value < 60
    last = samples(found["opsconsole_job_last_run_status"], job="nightly report")
    assert [s.labels["status"] for s in last] == ["false_success"]
    # a false success is no success: it extends the streak
    streak = samples(found["opsconsole_job_consecutive_failures"], job="nightly report")
    assert streak[0].value == 3
    assert samples(found["opsconsole_job_last_success_timestamp_seconds"])[0].value > 0
    runs = found["opsconsole_runs"]
    assert samples(runs, tag="nightly", status="failed")[0].value == 2
    assert samples(found["opsconsole_cost_usd"], tag="nightly")[0].value == 1.0
    assert samples(found["opsconsole_tokens"], tag="nightly", kind="input")[0].value == 4000
    quota = found["opsconsole_quota_blocked"]
    assert samples(quota, host="other-host")[0].value == 1
    assert samples(quota, host=host)[0].value == 0
    assert "opsconsole_alert_deliveries_sent" in found
    assert "opsconsole_alerts" in found


def test_unauthenticated_scrape_is_refused(client, history):
    status, text = scrape(client)
    assert status == 401 and "Bearer" in text
    status, _ = scrape(client, HTTP_AUTHORIZATION="Bearer oc_not-a-real-token")
    assert status == 401


def test_allowed_address_scrapes_without_a_token(client, history, settings):
    settings.OPSCONSOLE_METRICS_ALLOW = ["10.0.0.0/8"]
    assert scrape(client)[0] == 401  # the test client comes from 127.0.0.1
    settings.OPSCONSOLE_METRICS_ALLOW = ["10.0.0.0/8", "127.0.0.1/32"]
    status, text = scrape(client)
    assert status == 200 and "opsconsole_runs_total" in text


def test_the_example_dashboard_only_uses_metrics_the_console_serves(admin_client, history):
    import re

    from tests.conftest import REPO_ROOT

    dashboard = (REPO_ROOT / "deploy" / "grafana-dashboard.json").read_text()
    json.loads(dashboard)
    used = set(re.findall(r"opsconsole_[a-z_]+", dashboard))
    _, text = scrape(admin_client)
    served = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    assert used and used <= served, used - served


def test_the_text_writer_escapes_as_the_format_says_and_parses_back():
    """Label values and help text that need escaping (backslash, double quote, line
    feed), integers, floats and the special values, read back by prometheus_client's
    own parser as they were given."""
    from opsconsole.prometheus_text import counter, exposition, gauge

    odd = 'C:\\runs\\"nightly"\nsecond line ünïcode'
    runs = counter("test_runs", 'Runs\\by "tag"\nand host', labels=["tag", "host"])
    runs.add_metric([odd, "h1"], 3)
    runs.add_metric(["plain", ""], 0)
    ratio = gauge("test_ratio", "A float", labels=["kind"])
    for kind, value in (("small", 0.0185), ("big", 1.5e17), ("inf", float("inf")), ("t", True)):
        ratio.add_metric([kind], value)
    bare = gauge("test_bare", "No labels")
    bare.add_metric([], 2.5)
    text = exposition([runs, ratio, bare]).decode()

    assert 'tag="C:\\\\runs\\\\\\"nightly\\"\\nsecond line ünïcode"' in text
    assert '# HELP test_runs_total Runs\\\\by "tag"\\nand host\n' in text
    assert "# TYPE test_runs_total counter\n" in text and "test_bare 2.5\n" in text
    found = families(text)
    assert found["test_runs"].documentation == 'Runs\\by "tag"\nand host'
    assert samples(found["test_runs"], tag=odd, host="h1")[0].value == 3
    assert samples(found["test_runs"], tag="plain", host="")[0].value == 0
    values = {s.labels["kind"]: s.value for s in found["test_ratio"].samples}
    assert values == {"small": 0.0185, "big": 1.5e17, "inf": float("inf"), "t": 1}
    assert found["test_ratio"].type == "gauge" and found["test_runs"].type == "counter"
    with pytest.raises(ValueError):
        ratio.add_metric(["a", "b"], 1)
    with pytest.raises(ValueError):
        gauge("bad name", "x")
