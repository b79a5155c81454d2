"""The ClickHouse schema of the sink: versioned, idempotent migrations and the analytics views.

Every migration is a list of statements that can run any number of times (``IF NOT EXISTS``,
``CREATE OR REPLACE VIEW``); applied versions are recorded in ``schema_migrations`` so a newer
sink only runs what is missing. Never edit a released migration: add a new version.

``events`` holds exactly one row per chained record (``decode_ok = 0`` with empty decoded columns
when the payload does not decode), so the verifier can check that ClickHouse holds seq 0..head of
every chain and recompute each hash from ``chain, seq, prev_hash, source_offset, ingested_at,
payload``. The lookup by (chain, seq) is served by a ``_part_offset`` projection: it stores only
the sort key and row positions, so the per-chain index costs a few bytes per row instead of a
second copy of the payloads (chdb/ClickHouse >= 25.x).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError as DriverError

from sealtrail.infra.clickhouse import command, first_line, validate_identifier
from sealtrail.infra.errors import ClickHouseError

log = logging.getLogger(__name__)

UNKNOWN_SETTING = 115  # ClickHouse's error code for a setting it does not know

__all__ = [
    "CHECKPOINT_COLUMNS",
    "DECODED_COLUMNS",
    "EVENT_COLUMNS",
    "MIGRATIONS",
    "RECORD_COLUMNS",
    "REJECT_COLUMNS",
    "SUBTREE_COLUMNS",
    "VIEWS",
    "Migration",
    "applied_versions",
    "migrate",
]

# The events columns a chained record's own fields fill (what its hash covers, docs/FORMAT.md
# section 2), then those the sink decodes from its payload; EVENT_COLUMNS is both, in insert
# order (the sink builds its column lists in this order).
RECORD_COLUMNS: tuple[str, ...] = (
    "chain",
    "seq",
    "prev_hash",
    "hash",
    "source_offset",
    "ingested_at",
    "payload",
)
DECODED_COLUMNS: tuple[str, ...] = (
    "decode_ok",
    "cluster",
    "source",
    "event_time",
    "received_at",
    "audit_id",
    "stage",
    "level",
    "verb",
    "request_uri",
    "user_name",
    "user_groups",
    "impersonated_user",
    "source_ips",
    "user_agent",
    "resource",
    "namespace",
    "name",
    "subresource",
    "api_group",
    "api_version",
    "response_code",
    "annotations",
    "actor",
    "action",
    "resource_generic",
    "outcome",
    "attributes",
)
EVENT_COLUMNS: tuple[str, ...] = RECORD_COLUMNS + DECODED_COLUMNS

REJECT_COLUMNS: tuple[str, ...] = (
    "chain",
    "seq",
    "hash",
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
    "error",
    "payload",
    "at",
)

CHECKPOINT_COLUMNS: tuple[str, ...] = (
    "chain",
    "origin",
    "size",
    "root_hash",
    "head_hash",
    "timestamp",
    "key_name",
    "note",
    "parse_error",
    "kafka_partition",
    "kafka_offset",
    "loaded_at",
)


@dataclass(frozen=True, slots=True)
class Migration:
    """Statements applied once per database, in version order. A ``tuning`` migration only sets
    table settings: a server too old to know one skips it with a warning (nothing depends on
    it) instead of refusing to start."""

    version: int
    name: str
    statements: tuple[str, ...]
    tuning: bool = False


_EVENTS = """
CREATE TABLE IF NOT EXISTS {db}.events
(
    chain LowCardinality(String),
    seq UInt64,
    prev_hash FixedString(32),
    hash FixedString(32),
    source_offset UInt64,
    ingested_at DateTime64(6, 'UTC'),
    payload String CODEC(ZSTD(3)),
    decode_ok UInt8,
    cluster LowCardinality(String),
    source LowCardinality(String),
    event_time DateTime64(6, 'UTC'),
    received_at DateTime64(6, 'UTC'),
    audit_id String,
    stage LowCardinality(String),
    level LowCardinality(String),
    verb LowCardinality(String),
    request_uri String CODEC(ZSTD(1)),
    user_name String,
    user_groups Array(String),
    impersonated_user String,
    source_ips Array(String),
    user_agent String CODEC(ZSTD(1)),
    resource LowCardinality(String),
    namespace String,
    name String,
    subresource LowCardinality(String),
    api_group LowCardinality(String),
    api_version LowCardinality(String),
    response_code Nullable(Int32),
    annotations Map(String, String) CODEC(ZSTD(1)),
    actor String,
    action String,
    resource_generic String,
    outcome String,
    attributes Map(String, String) CODEC(ZSTD(1)),
    PROJECTION by_chain_seq (SELECT _part_offset ORDER BY chain, seq)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (cluster, event_time, resource, namespace, name)
SETTINGS non_replicated_deduplication_window = 10000,
         deduplicate_merge_projection_mode = 'rebuild'
"""

_REJECTS = """
CREATE TABLE IF NOT EXISTS {db}.rejects
(
    chain LowCardinality(String),
    seq Nullable(UInt64),
    hash String,
    kafka_topic LowCardinality(String),
    kafka_partition UInt32,
    kafka_offset UInt64,
    error String,
    payload String CODEC(ZSTD(3)),
    at DateTime64(6, 'UTC')
)
ENGINE = MergeTree
ORDER BY (kafka_topic, kafka_partition, kafka_offset)
SETTINGS non_replicated_deduplication_window = 10000
"""

_CHECKPOINTS = """
CREATE TABLE IF NOT EXISTS {db}.checkpoints
(
    chain LowCardinality(String),
    origin String,
    size UInt64,
    root_hash String,
    head_hash String,
    timestamp DateTime64(6, 'UTC'),
    key_name String,
    note String,
    parse_error String,
    kafka_partition UInt32,
    kafka_offset UInt64,
    loaded_at DateTime64(6, 'UTC')
)
ENGINE = MergeTree
ORDER BY (chain, size, kafka_partition, kafka_offset)
SETTINGS non_replicated_deduplication_window = 10000
"""

# Stored Merkle subtrees (processors/integrity/subtrees.py): one row per perfect aligned subtree
# of 256 leaves or more, written by the sink once its records are stored, so a proof reads
# O(log n) rows. Deterministic rows, one insert per range with a deduplication token.
_SUBTREES = """
CREATE TABLE IF NOT EXISTS {db}.subtrees
(
    chain LowCardinality(String),
    height UInt8,
    idx UInt64,
    hash FixedString(32)
)
ENGINE = MergeTree
ORDER BY (chain, height, idx)
SETTINGS non_replicated_deduplication_window = 10000
"""

SUBTREE_COLUMNS: tuple[str, ...] = ("chain", "height", "idx", "hash")

# Analytics views. They read events_dedup, so a batch the webhook delivered twice (both copies
# are chained and kept as evidence) is counted once; the copies are identical apart from their
# chain position, so which one LIMIT 1 BY keeps does not matter. Plain views: the filters run on
# the sort key and LowCardinality columns, so a materialized copy would not pay for its writes.
VIEWS: dict[str, str] = {
    "events_dedup": """
SELECT * FROM {db}.events
WHERE decode_ok = 1
LIMIT 1 BY cluster, audit_id, stage
""",
    "actor_activity": """
SELECT cluster, user_name AS actor, toDate(event_time) AS day, verb, resource,
       count() AS events, countIf(response_code >= 400) AS failed,
       min(event_time) AS first_seen, max(event_time) AS last_seen
FROM {db}.events_dedup
WHERE stage IN ('ResponseComplete', 'Panic') OR (source = 'generic')
GROUP BY cluster, actor, day, verb, resource
""",
    "resource_changes": """
SELECT event_time, cluster, namespace, resource, name, subresource, verb, user_name,
       impersonated_user, response_code, user_agent, audit_id
FROM {db}.events_dedup
WHERE verb IN ('create', 'update', 'patch', 'delete', 'deletecollection')
  AND stage = 'ResponseComplete'
""",
    "secret_access": """
SELECT event_time, cluster, namespace, name, verb, user_name, impersonated_user,
       startsWith(user_name, 'system:serviceaccount:') AS is_service_account,
       response_code, user_agent, source_ips, audit_id
FROM {db}.events_dedup
WHERE resource = 'secrets' AND stage IN ('ResponseComplete', 'Panic')
""",
    "denied_requests": """
SELECT event_time, cluster, user_name, verb, resource, namespace, name, subresource,
       response_code, annotations['authorization.k8s.io/reason'] AS reason, user_agent,
       source_ips, audit_id
FROM {db}.events_dedup
WHERE response_code IN (401, 403)
""",
    # A streaming exec/attach logs ResponseStarted and later ResponseComplete: one row per call.
    "pod_exec": """
SELECT event_time, cluster, namespace, name AS pod, subresource, user_name,
       impersonated_user, response_code, request_uri, user_agent, source_ips, audit_id
FROM {db}.events_dedup
WHERE resource = 'pods' AND subresource IN ('exec', 'attach')
  AND stage IN ('ResponseStarted', 'ResponseComplete', 'Panic')
LIMIT 1 BY cluster, audit_id
""",
    "rbac_changes": """
SELECT event_time, cluster, resource, namespace, name, verb, user_name, impersonated_user,
       response_code, user_agent, audit_id
FROM {db}.events_dedup
WHERE api_group = 'rbac.authorization.k8s.io'
  AND resource IN ('roles', 'clusterroles', 'rolebindings', 'clusterrolebindings')
  AND verb IN ('create', 'update', 'patch', 'delete', 'deletecollection', 'escalate', 'bind')
  AND stage = 'ResponseComplete'
""",
}


def _views_statements() -> tuple[str, ...]:
    return tuple(
        f"CREATE OR REPLACE VIEW {{db}}.{name} AS {body.strip()}" for name, body in VIEWS.items()
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "events, rejects, checkpoints", (_EVENTS, _REJECTS, _CHECKPOINTS)),
    Migration(2, "analytics views", _views_statements()),
    Migration(3, "stored Merkle subtrees", (_SUBTREES,)),
    # An insert of a batch makes a part of a few MiB to a few tens; as a wide part it is two
    # files per column (and its projection's), and creating, writing and syncing those cost
    # about a quarter of the insert's CPU (bench/profiles/sink-native-*.txt). Compact parts
    # (one data file) up to 128 MiB; merges make wide parts above it, where reading one
    # column of many rows pays.
    Migration(
        4,
        "events: compact parts below 128 MiB",
        ("ALTER TABLE {db}.events MODIFY SETTING min_bytes_for_wide_part = 134217728",),
    ),
    # A caught-up sink inserts every few hundred ms, and merging those parts rewrote each row
    # about twice within 100,000 records at 7,000/s, a third of the sink's CPU (bench/profiles/
    # README.txt). Merging ranges of parts up to 10 (not 5) times the size of their largest
    # part cut that by a third: fewer rewrites per row over the table's life (about log 10
    # instead of log 5 of its growth), a few more parts to open per query.
    Migration(
        5,
        "events: wider merges",
        ("ALTER TABLE {db}.events MODIFY SETTING merge_selector_base = 10",),
        tuning=True,
    ),
)

_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS {db}.schema_migrations
(
    version UInt32,
    name String,
    applied_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree
ORDER BY version
"""


def applied_versions(client: Client, database: str) -> set[int]:
    db = validate_identifier(database)
    command(client, _MIGRATIONS_TABLE.format(db=db))
    rows = client.query(f"SELECT DISTINCT version FROM {db}.schema_migrations").result_rows
    return {int(row[0]) for row in rows}


def _tune(client: Client, statement: str, name: str) -> None:
    try:
        client.command(statement)
    except DriverError as exc:
        if getattr(exc, "code", None) != UNKNOWN_SETTING and "UNKNOWN_SETTING" not in str(exc):
            raise ClickHouseError(f"ClickHouse refused a statement: {first_line(exc)}") from None
        log.warning(
            "this ClickHouse does not know a table setting of migration '%s' (%s); going on "
            "without it (upgrade ClickHouse to have it, then run: %s)",
            name,
            first_line(exc),
            statement,
        )


def migrate(
    client: Client, database: str, migrations: Sequence[Migration] = MIGRATIONS
) -> list[int]:
    """Create the database and apply missing migrations in order; return the versions applied."""
    db = validate_identifier(database)
    command(client, f"CREATE DATABASE IF NOT EXISTS {db}")
    done = applied_versions(client, db)
    applied: list[int] = []
    for migration in sorted(migrations, key=lambda m: m.version):
        if migration.version in done:
            continue
        for statement in migration.statements:
            if migration.tuning:
                _tune(client, statement.format(db=db), migration.name)
            else:
                command(client, statement.format(db=db))
        # Recorded after its statements: a crash in between re-runs idempotent statements.
        command(
            client,
            f"INSERT INTO {db}.schema_migrations (version, name) VALUES "
            f"({migration.version}, '{migration.name.replace(chr(39), '')}')",
        )
        applied.append(migration.version)
    return applied
