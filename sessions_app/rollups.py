"""Totals the database keeps up to date as runs are written, so that the Costs page and
`/metrics` read a few thousand rows instead of grouping millions.

Three rollups, each kept by triggers on the table it sums (every write path counts:
`save()`, `update()`, `bulk_create()`, a report from another host, raw SQL), in the
same transaction as the write, so a rollup is never behind or ahead of its rows:

- `RunDay`: finished runs (live statuses left out) per UTC day of their start, tag and
  host: what the Costs page sums over its range.
- `RunTotal`: every run per tag, host and status, all time: `/metrics`' runs, cost,
  unknown-cost and token counters.
- `TelemetryTotal`: RunTelemetry per job tag and host, all time: `/metrics`' telemetry
  counters.

Host is part of every key: one host's reports are taken one at a time (fleet.budgets
locks its row), so two transactions never wait on each other's rollup rows unless they
write the same host's runs. On PostgreSQL the triggers run once per statement with its
transition tables (an UPDATE of 100,000 rows is one grouped upsert, in key order); on
SQLite once per row, only when a summed or key column changes. A cost is summed in
millionths of a dollar (the precision of Session.cost_usd), exactly, on both backends.

A change to what is summed needs a migration that calls install() again (it replaces
the triggers) and rebuild_rollups().
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import connection, transaction

from sessions_app.models import LIVE_STATUSES, NOT_RUN_STATUSES


def _sql_list(values) -> str:
    return "(" + ", ".join(f"'{value}'" for value in values) + ")"


LIVE = _sql_list(LIVE_STATUSES)
NOT_RUN = _sql_list(NOT_RUN_STATUSES)


@dataclass(frozen=True)
class Rollup:
    table: str  # the rollup's table
    source: str  # the table it sums
    keys: dict[str, dict[str, str]]  # column -> {vendor: expression over "r."}
    values: dict[str, str]  # column -> expression over "r." (the same on both backends)
    where: str = "TRUE"  # which rows count

    def key_sql(self, vendor: str, row: str) -> list[str]:
        return [
            spec.get(vendor, spec.get("any", "")).replace("r.", f"{row}.")
            for spec in self.keys.values()
        ]

    def value_sql(self, row: str) -> list[str]:
        return [expr.replace("r.", f"{row}.") for expr in self.values.values()]

    @property
    def columns(self) -> list[str]:
        return [*self.keys, *self.values]


def _micros(vendor_cast: str, amount: str) -> str:
    return f"COALESCE(CAST(ROUND({amount} * 1000000) AS {vendor_cast}), 0)"


RUN_COST = (
    "COALESCE(r.cost_usd, r.cost_telemetry_usd, r.cost_computed_usd, "
    f"CASE WHEN r.status IN {NOT_RUN} THEN 0 END)"
)  # sessions_app.models.run_cost_expression()
NO_COST = "r.cost_usd IS NULL AND r.cost_telemetry_usd IS NULL"
RUN_VALUES = {
    "runs": "1",
    "cost_micros": _micros("BIGINT", RUN_COST),
    # sessions_app.models.unknown_cost_q()
    "unknown_cost_runs": (
        f"CASE WHEN {NO_COST} AND r.cost_computed_usd IS NULL "
        f"AND r.status NOT IN {NOT_RUN} THEN 1 ELSE 0 END"
    ),
    "computed_cost_runs": (
        f"CASE WHEN {NO_COST} AND r.cost_computed_usd IS NOT NULL THEN 1 ELSE 0 END"
    ),
    "telemetry_cost_runs": (
        "CASE WHEN r.cost_usd IS NULL AND r.cost_telemetry_usd IS NOT NULL THEN 1 ELSE 0 END"
    ),
    "input_tokens": "COALESCE(r.input_tokens, 0)",
    "output_tokens": "COALESCE(r.output_tokens, 0)",
    "cache_read_tokens": "COALESCE(r.cache_read_tokens, 0)",
    "cache_creation_tokens": "COALESCE(r.cache_creation_tokens, 0)",
}
TAG_HOST = {"script_tag": {"any": "r.script_tag"}, "host": {"any": "r.host"}}

RUN_DAY = Rollup(
    table="sessions_app_runday",
    source="sessions_app_session",
    keys={
        # The UTC day: Django keeps a UTC timestamp ("YYYY-MM-DD HH:MM:SS") on SQLite.
        "day": {
            "postgresql": "(r.started_at AT TIME ZONE 'UTC')::date",
            "sqlite": "substr(r.started_at, 1, 10)",
        },
        **TAG_HOST,
    },
    values=RUN_VALUES,
    where=f"r.status NOT IN {LIVE}",
)
RUN_TOTAL = Rollup(
    table="sessions_app_runtotal",
    source="sessions_app_session",
    keys={**TAG_HOST, "status": {"any": "r.status"}},
    values=RUN_VALUES,
)
TELEMETRY_TOTAL = Rollup(
    table="sessions_app_telemetrytotal",
    source="sessions_app_runtelemetry",
    keys={"job_tag": {"any": "r.job_tag"}, "host": {"any": "r.host"}},
    values={
        "runs": "1",
        "cost_micros": _micros("BIGINT", "r.cost_usd"),
        "api_requests": "r.api_requests",
        "api_errors": "r.api_errors",
        "tool_calls": "r.tool_calls",
        "tool_failures": "r.tool_failures",
    },
)
ROLLUPS = (RUN_DAY, RUN_TOTAL, TELEMETRY_TOTAL)

# The columns whose change moves a row's share (SQLite's UPDATE OF list).
WATCHED = {
    "sessions_app_session": [
        "status",
        "started_at",
        "script_tag",
        "host",
        "cost_usd",
        "cost_telemetry_usd",
        "cost_computed_usd",
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_creation_tokens",
    ],
    "sessions_app_runtelemetry": [
        "job_tag",
        "host",
        "cost_usd",
        "api_requests",
        "api_errors",
        "tool_calls",
        "tool_failures",
    ],
}


# ------------------------------------------------------------------ PostgreSQL
def _pg_upsert(rollup: Rollup, source_sql: str) -> str:
    """Add the signed shares of the rows `source_sql` yields (columns of the source table
    plus `sign`), grouped by key, in key order."""
    keys = rollup.key_sql("postgresql", "c")
    values = [f"c.sign * ({expr})" for expr in rollup.value_sql("c")]
    names = list(rollup.keys)
    select = [f"{expr} AS {name}" for expr, name in zip(keys, names, strict=True)] + [
        f"SUM({expr}) AS {name}" for expr, name in zip(values, rollup.values, strict=True)
    ]
    where = rollup.where.replace("r.", "c.")
    updates = ", ".join(f"{name} = t.{name} + EXCLUDED.{name}" for name in rollup.values)
    nonzero = " OR ".join(f"SUM({expr}) <> 0" for expr in values)
    return (
        f"INSERT INTO {rollup.table} AS t ({', '.join(rollup.columns)}) "  # noqa: S608 (our constants)
        f"SELECT {', '.join(select)} FROM ({source_sql}) c WHERE {where} "
        f"GROUP BY {', '.join(str(i + 1) for i in range(len(names)))} HAVING {nonzero} "
        f"ORDER BY {', '.join(str(i + 1) for i in range(len(names)))} "
        f"ON CONFLICT ({', '.join(names)}) DO UPDATE SET {updates}"
    )


# Each row a statement wrote, with the sign of its share: +1 as it is now, -1 as it was.
PG_CHANGES = {
    "INSERT": "SELECT 1 AS sign, * FROM new_rows",
    "DELETE": "SELECT -1 AS sign, * FROM old_rows",
    "UPDATE": "SELECT 1 AS sign, * FROM new_rows UNION ALL SELECT -1, * FROM old_rows",
}


def _pg_install(source: str) -> list[str]:
    rollups = [rollup for rollup in ROLLUPS if rollup.source == source]
    statements = []
    for op, rows in PG_CHANGES.items():
        name = f"{source}_rollup_{op.lower()}"
        body = ";\n".join(_pg_upsert(rollup, rows) for rollup in rollups)
        referencing = {
            "INSERT": "NEW TABLE AS new_rows",
            "DELETE": "OLD TABLE AS old_rows",
            "UPDATE": "OLD TABLE AS old_rows NEW TABLE AS new_rows",
        }[op]
        statements += [
            f"DROP TRIGGER IF EXISTS {name} ON {source}",
            f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            f"BEGIN\n{body};\nRETURN NULL;\nEND\n$$",
            f"CREATE TRIGGER {name} AFTER {op} ON {source} REFERENCING {referencing} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {name}()",
        ]
    return statements


# ------------------------------------------------------------------ SQLite
def _sqlite_add(rollup: Rollup, row: str) -> str:
    keys = rollup.key_sql("sqlite", row)
    values = rollup.value_sql(row)
    updates = ", ".join(f"{name} = {name} + excluded.{name}" for name in rollup.values)
    where = rollup.where.replace("r.", f"{row}.")
    return (
        f"INSERT INTO {rollup.table} ({', '.join(rollup.columns)}) "
        f"SELECT {', '.join([*keys, *values])} WHERE {where} "
        f"ON CONFLICT ({', '.join(rollup.keys)}) DO UPDATE SET {updates}"
    )


def _sqlite_remove(rollup: Rollup, row: str) -> str:
    # UPDATE, never INSERT: a row whose rollup row is gone (a flush deleting the rollup
    # first) must not leave a negative row behind.
    keys = rollup.key_sql("sqlite", row)
    values = rollup.value_sql(row)
    sets = ", ".join(
        f"{name} = {name} - ({expr})" for name, expr in zip(rollup.values, values, strict=True)
    )
    match = " AND ".join(f"{name} = {expr}" for name, expr in zip(rollup.keys, keys, strict=True))
    where = rollup.where.replace("r.", f"{row}.")
    return f"UPDATE {rollup.table} SET {sets} WHERE {match} AND {where}"  # noqa: S608 (our constants)


def _sqlite_install(source: str) -> list[str]:
    rollups = [rollup for rollup in ROLLUPS if rollup.source == source]
    watched = WATCHED[source]
    changed = " OR ".join(f"OLD.{column} IS NOT NEW.{column}" for column in watched)
    bodies = {
        "insert": ("AFTER INSERT", [_sqlite_add(r, "NEW") for r in rollups]),
        "delete": ("AFTER DELETE", [_sqlite_remove(r, "OLD") for r in rollups]),
        "update": (
            f"AFTER UPDATE OF {', '.join(watched)}",
            [_sqlite_remove(r, "OLD") for r in rollups] + [_sqlite_add(r, "NEW") for r in rollups],
        ),
    }
    statements = []
    for op, (when, body) in bodies.items():
        name = f"{source}_rollup_{op}"
        condition = f" WHEN {changed}" if op == "update" else ""
        steps = ";\n".join(body)
        statements += [
            f"DROP TRIGGER IF EXISTS {name}",
            f"CREATE TRIGGER {name} {when} ON {source} FOR EACH ROW{condition}\n"
            f"BEGIN\n{steps};\nEND",
        ]
    return statements


# ------------------------------------------------------------------ install, rebuild
def install_sql(vendor: str) -> list[str]:
    sources = sorted({rollup.source for rollup in ROLLUPS})
    build = {"postgresql": _pg_install, "sqlite": _sqlite_install}[vendor]
    return [statement for source in sources for statement in build(source)]


def uninstall_sql(vendor: str) -> list[str]:
    statements = []
    for source in sorted({rollup.source for rollup in ROLLUPS}):
        for op in ("insert", "delete", "update"):
            name = f"{source}_rollup_{op}"
            if vendor == "postgresql":
                statements += [
                    f"DROP TRIGGER IF EXISTS {name} ON {source}",
                    f"DROP FUNCTION IF EXISTS {name}()",
                ]
            else:
                statements.append(f"DROP TRIGGER IF EXISTS {name}")
    return statements


def rebuild_sql(rollup: Rollup, vendor: str) -> list[str]:
    """Empty the rollup and sum it again from every row of its source, written in key
    order: RunDay's rows of a day then sit together, as the triggers append them day
    after day, and a Costs range reads its own pages only (in hash order, 90 days'
    68,000 rows were spread over all 9,200 pages of a 10 M-run history's rollup)."""
    keys = rollup.key_sql(vendor, "r")
    values = [f"SUM({expr})" for expr in rollup.value_sql("r")]
    groups = ", ".join(str(i + 1) for i in range(len(keys)))
    return [
        f"DELETE FROM {rollup.table}",  # noqa: S608 (our constants)
        f"INSERT INTO {rollup.table} ({', '.join(rollup.columns)}) "  # noqa: S608 (our constants)
        f"SELECT {', '.join([*keys, *values])} FROM {rollup.source} r "
        f"WHERE {rollup.where} GROUP BY {groups} ORDER BY {groups}",
    ]


def trigger_names() -> list[str]:
    return [
        f"{source}_rollup_{op}"
        for source in sorted({rollup.source for rollup in ROLLUPS})
        for op in ("insert", "delete", "update")
    ]


def missing_triggers(target) -> list[str]:
    with target.cursor() as cursor:
        if target.vendor == "postgresql":
            cursor.execute("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")
        else:
            cursor.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        present = {row[0] for row in cursor.fetchall()}
    return [name for name in trigger_names() if name not in present]


def ensure_triggers(target) -> bool:
    """Install the triggers and rebuild the rollups if any trigger is missing (a table
    SQLite remade for a migration); True if it had to. Before the rollups' migration
    has run (no rollup table yet) there is nothing to keep."""
    if target.vendor not in ("postgresql", "sqlite"):
        return False
    tables = set(target.introspection.table_names())
    if not {rollup.table for rollup in ROLLUPS} <= tables or not missing_triggers(target):
        return False
    with transaction.atomic(using=target.alias), target.cursor() as cursor:
        for statement in install_sql(target.vendor):
            cursor.execute(statement)
        rebuild_rollups(using=target)
    return True


def rebuild_rollups(using=None) -> None:
    """Sum every rollup again from its rows, in one transaction (after a bulk load with
    triggers off, or to check one: tests compare a rebuild with the running totals)."""
    target = using or connection
    with transaction.atomic(using=target.alias), target.cursor() as cursor:
        if target.vendor == "postgresql":  # writers wait; nothing is summed twice
            for table in sorted({r.source for r in ROLLUPS}):
                cursor.execute(f"LOCK TABLE {table} IN SHARE MODE")
        for rollup in ROLLUPS:
            for statement in rebuild_sql(rollup, target.vendor):
                cursor.execute(statement)
