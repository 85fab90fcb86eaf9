"""An existing database upgrades with `migrate` alone: one made with the migrations of
the layout before the floors (the leaves below), filled through the models as they
were then, is migrated to this layout and every row is found through today's models.
Models that move between apps must keep their tables for this to hold."""

from __future__ import annotations

import json

from django.core.management import call_command

from tests.server_fixtures import manage

# The newest migration of each app before the code was laid out in floors.
LEAVES_BEFORE_THE_FLOORS = [
    ("sessions_app", "0008_session_live_host"),
    ("jobs_app", "0003_job_kill_leftovers"),
    ("monitor_app", "0003_remote_job_actions"),
    ("alerts_app", "0001_alerts_channels_rules_outbox"),
    ("opsconsole", "0002_apitoken_expires_at"),
]

UPGRADE = """
import json, uuid
from datetime import UTC, datetime
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

before = [tuple(leaf) for leaf in json.loads({leaves!r})]
executor = MigrationExecutor(connection)
executor.migrate(before)
then = executor.loader.project_state(before).apps
now = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
Job = then.get_model("jobs_app", "Job")
job = Job.objects.create(scheduler="cron", label="nightly report", host="host-a",
    tags=["nightly"])
then.get_model("jobs_app", "AuditEntry").objects.create(actor="ops", action="run", job=job,
    target="nightly report", ok=True)
session_id = uuid.uuid4()
then.get_model("sessions_app", "Session").objects.create(session_id=session_id,
    script_tag="nightly", host="host-a", status="failed", started_at=now, ended_at=now, job=job)
then.get_model("monitor_app", "Event").objects.create(at=now, host="host-a", kind="run_ended",
    session_id=session_id, job=job, message="nightly failed", dedupe_key="run_ended:1")
then.get_model("monitor_app", "HostSample").objects.create(host="host-a", seq=7, taken_at=now,
    interval_seconds=2.0, sample_ms=1.0, etag='"a7"', api_document="{{}}", state_document="{{}}",
    received_at=now, reported=True)
then.get_model("monitor_app", "HostToken").objects.create(host="host-a", key_prefix="oh_abc",
    token_hash="0" * 64)
incident = then.get_model("alerts_app", "Incident").objects.create(key="job:1:failed",
    rule="failed", job=job, host="host-a", opened_at=now)
then.get_model("alerts_app", "Alert").objects.create(created_at=now, rule="failed",
    phase="opened", incident=incident, job=job, host="host-a", title="nightly failed", body="")
then.get_model("alerts_app", "Channel").objects.create(name="ops", url="json://127.0.0.1:9/x")

executor = MigrationExecutor(connection)
executor.migrate(executor.loader.graph.leaf_nodes())

from alerts_app.models import Alert, Channel, Incident
from jobs_app.models import AuditEntry, Job
from monitor_app.models import Event, HostSample, HostToken
from sessions_app.models import Session

session = Session.objects.get(session_id=session_id)
print(json.dumps({{
    "job": Job.objects.get().label,
    "audit": AuditEntry.objects.get().job.label,
    "session": [session.status, session.job.label],
    "event": Event.objects.get().job_id == session.job_id,
    "host": [HostSample.objects.get().seq, HostToken.objects.get().host],
    "incident": Incident.objects.get().key,
    "alert": Alert.objects.get().incident.key,
    "channel": Channel.objects.get().name,
}}))
"""


def test_a_database_of_the_layout_before_upgrades_with_migrate_alone(console_state, tmp_path):
    env = dict(
        console_state.env,
        DATABASE_URL=f"sqlite:///{tmp_path / 'before.sqlite3'}",
        DJANGO_SETTINGS_MODULE="opsconsole.settings",
    )
    script = UPGRADE.format(leaves=json.dumps(LEAVES_BEFORE_THE_FLOORS))
    found = json.loads(manage(env, "shell", "--no-imports", "-c", script).strip().splitlines()[-1])
    assert found == {
        "job": "nightly report",
        "audit": "nightly report",
        "session": ["failed", "nightly report"],
        "event": True,
        "host": [7, "host-a"],
        "incident": "job:1:failed",
        "alert": "job:1:failed",
        "channel": "ops",
    }


def test_the_models_and_their_migrations_agree(db):
    """A model moved or changed without its migration would fail the upgrade above."""
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)
