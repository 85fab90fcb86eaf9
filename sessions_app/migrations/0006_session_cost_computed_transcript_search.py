"""Computed cost and subagent count on Session; the full-text index of transcripts.

The index is vendor-specific (an FTS5 virtual table on SQLite, a tsvector column with
a GIN index on PostgreSQL), so it is made with SQL here rather than as a model.
"""

from django.db import migrations, models

TABLE = "sessions_app_transcriptline"

SQLITE = [
    f"CREATE VIRTUAL TABLE IF NOT EXISTS {TABLE} USING fts5("
    "text, session_id UNINDEXED, part UNINDEXED, byte_offset UNINDEXED, kind UNINDEXED, "
    "tokenize = 'unicode61')",
]
POSTGRES = [
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        id bigserial PRIMARY KEY,
        session_id uuid NOT NULL,
        part text NOT NULL DEFAULT '',
        byte_offset bigint NOT NULL,
        kind varchar(32) NOT NULL,
        text text NOT NULL,
        tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple', text)) STORED
    )""",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_tsv ON {TABLE} USING gin (tsv)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_session ON {TABLE} (session_id)",
]


def create_index(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    statements = {"sqlite": SQLITE, "postgresql": POSTGRES}.get(vendor, [])
    for statement in statements:
        schema_editor.execute(statement)


def drop_index(apps, schema_editor):
    if schema_editor.connection.vendor in ("sqlite", "postgresql"):
        schema_editor.execute(f"DROP TABLE IF EXISTS {TABLE}")


class Migration(migrations.Migration):
    dependencies = [
        ("sessions_app", "0005_unwrapped_leftovers"),
    ]

    operations = [
        migrations.AddField(
            model_name="session",
            name="cost_computed_usd",
            field=models.DecimalField(blank=True, decimal_places=6, max_digits=12, null=True),
        ),
        migrations.AddField(
            model_name="session",
            name="subagent_files",
            field=models.PositiveIntegerField(
                default=0,
                help_text="subagent transcripts counted in its tokens and computed cost",
            ),
        ),
        migrations.AddField(
            model_name="session",
            name="search_indexed_bytes",
            field=models.BigIntegerField(blank=True, null=True),
        ),
        migrations.RunPython(create_index, drop_index),
    ]
