"""``sealtrail sink``, ``sealtrail query`` and ``sealtrail history``: ClickHouse in and out."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import shutil
import sys
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Any

import typer
from clickhouse_connect.driver.client import Client
from rich.console import Console
from rich.table import Table

from processors.sink import Sink, SinkOptions
from sealtrail.commands import metrics_options
from sealtrail.commands.context import settings_of
from sealtrail.commands.key_options import KeyOpt, load_keyring
from sealtrail.infra import config
from sealtrail.infra.config import Settings
from sealtrail.infra.errors import ConfigError
from sealtrail.infra.kafka import check_login
from sealtrail.infra.metrics_server import metrics_listen as parse_metrics_listen
from sealtrail.infra.reader import ReadClient, as_reader, open_reader
from sealtrail.infra.readonly_sql import require_read_only
from sealtrail.infra.service import StopFlag, tune_gc

log = logging.getLogger(__name__)

# Kubernetes kinds (as K9s and kubectl users type them) -> the audit objectRef.resource.
KIND_TO_RESOURCE: dict[str, str] = {
    "pod": "pods",
    "po": "pods",
    "deployment": "deployments",
    "deploy": "deployments",
    "replicaset": "replicasets",
    "rs": "replicasets",
    "statefulset": "statefulsets",
    "sts": "statefulsets",
    "daemonset": "daemonsets",
    "ds": "daemonsets",
    "job": "jobs",
    "cronjob": "cronjobs",
    "cj": "cronjobs",
    "service": "services",
    "svc": "services",
    "configmap": "configmaps",
    "cm": "configmaps",
    "secret": "secrets",
    "namespace": "namespaces",
    "ns": "namespaces",
    "node": "nodes",
    "no": "nodes",
    "serviceaccount": "serviceaccounts",
    "sa": "serviceaccounts",
    "ingress": "ingresses",
    "ing": "ingresses",
    "networkpolicy": "networkpolicies",
    "netpol": "networkpolicies",
    "persistentvolume": "persistentvolumes",
    "pv": "persistentvolumes",
    "persistentvolumeclaim": "persistentvolumeclaims",
    "pvc": "persistentvolumeclaims",
    "role": "roles",
    "rolebinding": "rolebindings",
    "clusterrole": "clusterroles",
    "clusterrolebinding": "clusterrolebindings",
    "storageclass": "storageclasses",
    "sc": "storageclasses",
    "horizontalpodautoscaler": "horizontalpodautoscalers",
    "hpa": "horizontalpodautoscalers",
    "poddisruptionbudget": "poddisruptionbudgets",
    "pdb": "poddisruptionbudgets",
    "customresourcedefinition": "customresourcedefinitions",
    "crd": "customresourcedefinitions",
    "endpoints": "endpoints",
    "event": "events",
    "ev": "events",
}


class OutputFormat(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


def resource_of(kind: str) -> str:
    """The plural, lowercase resource for a kind, short name or plural (``deployments.apps`` ok)."""
    word = kind.strip().lower().split(".", 1)[0]
    if not word or not word.replace("-", "").isalnum():
        raise ConfigError(f"{kind!r} is not a Kubernetes kind; use e.g. deployment/web")
    if word in KIND_TO_RESOURCE:
        return KIND_TO_RESOURCE[word]
    if word in KIND_TO_RESOURCE.values() or word.endswith("s"):
        return word
    if word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    if word.endswith(("x", "ch", "sh")):
        return word + "es"
    return word + "s"


def run_query(
    client: Client | ReadClient, database: str, sql: str, parameters: dict[str, Any] | None = None
) -> tuple[list[str], list[Sequence[Any]]]:
    """Run read-only ``sql`` with ``database`` as the default database; one clear line on
    error, and a write statement refused (:mod:`sealtrail.infra.readonly_sql`)."""
    result = as_reader(client, database).query(sql, parameters=parameters)
    return list(result.column_names), list(result.result_rows)


def _cell(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if value is None:
        return ""
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | bytes | bytearray):
        return _cell(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def render(names: list[str], rows: list[Sequence[Any]], fmt: OutputFormat, title: str = "") -> None:
    if fmt is OutputFormat.json:
        typer.echo(json.dumps([dict(zip(names, map(_jsonable, row), strict=True)) for row in rows]))
        return
    if fmt is OutputFormat.csv:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(names)
        for row in rows:
            writer.writerow([_cell(v) for v in row])
        typer.echo(out.getvalue(), nl=False)
        return
    # Not a terminal (pipes, tests): wide enough that cells are not cut.
    width = None if sys.stdout.isatty() else max(200, shutil.get_terminal_size().columns)
    console = Console(width=width, highlight=False)
    table = Table(title=title or None, show_lines=False)
    for name in names:
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*(str(_cell(v)) for v in row))
    console.print(table)
    console.print(f"{len(rows)} row(s)", style="dim")


def sink(
    ctx: typer.Context,
    once: Annotated[
        bool, typer.Option("--once", help="Store what is in the topics now, then exit.")
    ] = False,
    batch_rows: Annotated[
        int,
        typer.Option(
            help="Rows a partition buffers before it is inserted; the buffers flushed together "
            "are one insert."
        ),
    ] = 10000,
    batch_ms: Annotated[
        int,
        typer.Option(
            help="Longest a row waits before its insert (ms); with the embedded store a batch "
            "goes once the previous insert is done and --linger-ms has passed."
        ),
    ] = 1000,
    linger_ms: Annotated[
        int,
        typer.Option(
            envvar=config.ENV_SINK_LINGER_MS,
            help="Embedded store: how long rows wait for company once no insert runs (ms, at "
            "most --batch-ms). Longer: fewer, larger inserts (less CPU and merging per row), "
            "rows queryable later (docs/DEPLOY.md).",
        ),
    ] = 250,
    group: Annotated[
        str,
        typer.Option(help="Kafka consumer group.", show_default="<topic prefix>sealtrail-sink"),
    ] = "",
    metrics_listen: Annotated[
        str, metrics_options.listen_option(config.ENV_SINK_METRICS_LISTEN)
    ] = "",
    metrics_allow_remote: Annotated[
        bool, metrics_options.allow_remote_option(config.ENV_SINK_METRICS_ALLOW_REMOTE)
    ] = False,
    metrics_fd: Annotated[int | None, metrics_options.fd_option()] = None,
) -> None:
    """Load the chain and checkpoint topics into ClickHouse, exactly once (until SIGTERM)."""
    settings = settings_of(ctx)
    options = SinkOptions(
        batch_rows=batch_rows,
        batch_ms=batch_ms,
        linger_ms=linger_ms,
        once=once,
        group=group,
        metrics_listen=parse_metrics_listen(metrics_listen, metrics_allow_remote, fd=metrics_fd),
    )
    stop = StopFlag().install()
    check_login(settings)  # a refused login is one sentence, not a silent retry loop
    tune_gc()
    stats = Sink(settings, options, stop).run()
    typer.echo(
        f"stored {stats.inserted} event row(s), {stats.checkpoints} checkpoint(s), "
        f"{stats.rejects} reject(s); skipped {stats.skipped} already stored",
        err=True,
    )


VerifyOpt = Annotated[
    bool,
    typer.Option(
        "--verify",
        help="Check every shown row against the signed log: verified yes / no: reason / pending "
        "(exit 1 if a row fails).",
    ),
]


def _verified_output(
    settings: Settings,
    reader: ReadClient,
    ring: Any,
    names: list[str],
    types: Sequence[str],
    rows: list[Sequence[Any]],
    fmt: OutputFormat,
) -> tuple[list[str], list[Sequence[Any]], int]:
    """The rows with ``verified`` and ``checkpoint`` columns, and how many failed."""
    from processors.verified_read import verify_rows

    if "chain" not in names or "seq" not in names:
        raise ConfigError(
            "--verify needs the SELECT to return the chain and seq columns of events; add "
            "'chain, seq' to its select list"
        )
    ci, si = names.index("chain"), names.index("seq")
    keys: list[tuple[str, int]] = []
    for row in rows:
        if not isinstance(row[ci], str) or not isinstance(row[si], int):
            raise ConfigError(
                "--verify needs chain (a string) and seq (an integer) as events stores them; "
                "select them unchanged"
            )
        keys.append((row[ci], row[si]))
    shown = [
        {n: (t, v) for n, t, v in zip(names, types, row, strict=True) if n not in ("chain", "seq")}
        for row in rows
    ]
    verdicts = verify_rows(
        reader, settings.clickhouse_database, settings.deployment, ring, keys, shown
    )
    out: list[Sequence[Any]] = []
    for row, verdict in zip(rows, verdicts, strict=True):
        if fmt is OutputFormat.json:
            extra: list[Any] = [verdict.verified, verdict.reason or None, verdict.checkpoint_size]
        else:
            extra = [verdict.label, verdict.checkpoint_size]
        out.append([*row, *extra])
    extra_names = (
        ["verified", "reason", "checkpoint_size"]
        if fmt is OutputFormat.json
        else ["verified", "checkpoint"]
    )
    failed = sum(1 for v in verdicts if v.verified is False)
    return [*names, *extra_names], out, failed


def _report_failures(failed: int, shown: int) -> None:
    if failed:
        typer.echo(
            f"{failed} of {shown} shown row(s) failed verification against the signed log",
            err=True,
        )
        raise typer.Exit(1)


def query(
    ctx: typer.Context,
    sql: Annotated[str, typer.Argument(help="SQL; tables and views of the sealtrail database.")],
    fmt: Annotated[OutputFormat, typer.Option("--format", "-f", help="Output format.")] = (
        OutputFormat.table
    ),
    verify: VerifyOpt = False,
    key: KeyOpt = None,
) -> None:
    """Run read-only SQL on the audit store (see docs/QUERIES.md)."""
    settings = settings_of(ctx)
    require_read_only(sql)  # a write is refused before anything is opened
    ring = load_keyring(key) if verify else None
    reader = open_reader(settings)
    try:
        result = reader.query(sql)
        names = list(result.column_names)
        rows: list[Sequence[Any]] = list(result.result_rows)
        failed = 0
        if verify:
            names, rows, failed = _verified_output(
                settings, reader, ring, names, result.column_types, rows, fmt
            )
    finally:
        reader.close()
    render(names, rows, fmt)
    _report_failures(failed, len(rows))


HISTORY_SQL = """
SELECT event_time AS time, cluster, namespace, user_name AS user, verb, subresource,
       response_code AS code, user_agent, stage
FROM events_dedup
WHERE resource = %(resource)s AND name = %(name)s
  AND (%(namespace)s = '' OR namespace = %(namespace)s)
  AND (%(cluster)s = '' OR cluster = %(cluster)s)
  AND stage IN ('ResponseComplete', 'ResponseStarted', 'Panic')
ORDER BY event_time DESC, audit_id
LIMIT %(limit)s
"""

# --verify reads events itself (a view could be redefined to show other values) under the
# events column names, so every shown value is compared with the verified row.
HISTORY_VERIFY_SQL = """
SELECT event_time, cluster, namespace, user_name, verb, subresource, response_code,
       user_agent, stage, chain, seq
FROM events
WHERE decode_ok = 1 AND resource = %(resource)s AND name = %(name)s
  AND (%(namespace)s = '' OR namespace = %(namespace)s)
  AND (%(cluster)s = '' OR cluster = %(cluster)s)
  AND stage IN ('ResponseComplete', 'ResponseStarted', 'Panic')
ORDER BY event_time DESC, audit_id, chain, seq
LIMIT 1 BY cluster, audit_id, stage
LIMIT %(limit)s
"""
_HISTORY_HEADERS = {"event_time": "time", "user_name": "user", "response_code": "code"}


def history(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="KIND/NAME, e.g. deployment/web or pods/web-0.")],
    namespace: Annotated[str, typer.Option("--namespace", "-n", help="Namespace.")] = "",
    cluster: Annotated[str, typer.Option(help="Cluster name.")] = "",
    limit: Annotated[int, typer.Option(help="Most rows to show.")] = 50,
    fmt: Annotated[OutputFormat, typer.Option("--format", "-f", help="Output format.")] = (
        OutputFormat.table
    ),
    verify: VerifyOpt = False,
    key: KeyOpt = None,
) -> None:
    """Show the audit history of one Kubernetes object, newest first."""
    kind, sep, name = target.partition("/")
    if not sep or not name or not kind:
        raise ConfigError(f"{target!r} is not KIND/NAME; use e.g. deployment/web")
    if limit < 1:
        raise ConfigError(f"--limit must be at least 1, not {limit}")
    resource = resource_of(kind)
    settings = settings_of(ctx)
    ring = load_keyring(key) if verify else None
    params = {
        "resource": resource,
        "name": name,
        "namespace": namespace,
        "cluster": cluster,
        "limit": limit,
    }
    reader = open_reader(settings)
    failed = 0
    try:
        result = reader.query(HISTORY_VERIFY_SQL if verify else HISTORY_SQL, parameters=params)
        names = list(result.column_names)
        rows: list[Sequence[Any]] = list(result.result_rows)
        if verify:
            names, rows, failed = _verified_output(
                settings, reader, ring, names, result.column_types, rows, fmt
            )
            names = [_HISTORY_HEADERS.get(n, n) for n in names]
    finally:
        reader.close()
    where = f"{resource}/{name}" + (f" in {namespace}" if namespace else "")
    where += f" on {cluster}" if cluster else ""
    if not rows and fmt is OutputFormat.table:
        typer.echo(f"no audit events for {where}")
        return
    title = f"{'verified ' if verify else ''}history of {where}"
    render(names, rows, fmt, title=title)
    _report_failures(failed, len(rows))


def register(app: typer.Typer) -> None:
    app.command("sink")(sink)
    app.command("query")(query)
    app.command("history")(history)
