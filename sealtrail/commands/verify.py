"""``sealtrail verify``, ``prove``, ``verify-proof`` and ``checkpoints export``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from processors.integrity.checkpoint import KeyRing
from processors.verifier import offsite
from processors.verifier.report import Report, previous_success, write_metrics
from sealtrail.commands.context import settings_of
from sealtrail.commands.key_options import KeyOpt, load_keyring
from sealtrail.infra.config import Settings
from sealtrail.infra.errors import ClickHouseError, ConfigError, SealtrailError

SHOW_FINDINGS = 10


def _say(message: str) -> None:
    typer.echo(message, err=True)


# ------------------------------------------------------------------------------ verify


class _Progress:
    """A rich progress bar on a terminal, plain lines every few seconds otherwise."""

    def __init__(self, total: int, enabled: bool, what: str = "records") -> None:
        self.total = total
        self.what = what
        unit = "rec/s" if what == "records" else "rows/s"
        self.done = 0
        self._bar: Any = None
        self._last = time.monotonic()
        self._start = self._last
        self.enabled = enabled
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("verifying" if what == "records" else "checking ClickHouse rows"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn(f"{{task.fields[rate]:>8.0f}} {unit}"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._task = self._bar.add_task("verify", total=max(total, 1), rate=0.0)
            self._bar.start()

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last < (0.2 if self._bar else 5.0):
            return
        self._last = now
        rate = self.done / max(now - self._start, 1e-9)
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, rate=rate)
        elif self.enabled:
            if self.what == "records":
                _say(f"verified {self.done} of ~{self.total} records ({rate:.0f} records/s)")
            else:
                _say(f"checked {self.done} of {self.total} ClickHouse rows ({rate:.0f} rows/s)")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)
            self._bar.stop()


def _clickhouse_client(settings: Settings, mode: str) -> Any:
    """The client when the cross-check should run, else None (mode: auto, off, required)."""
    if mode == "off":
        return None
    from processors.verifier.clickhouse_source import events_table_exists
    from sealtrail.infra import clickhouse as ch

    path = ch.chdb_path(settings.clickhouse_dsn)
    if path is not None and not path.exists():
        if mode == "required":
            raise ClickHouseError(
                f"the embedded ClickHouse at {path} does not exist; run the sink first or set "
                "SEALTRAIL_CLICKHOUSE"
            )
        return None
    try:
        # Read-only: the sink's live-read socket while it runs, else the store opened directly.
        from sealtrail.infra.reader import open_reader

        # Typed Any: the verifier's readers are annotated with clickhouse-connect's Client, whose
        # query() a ReadClient answers the same way.
        client: Any = open_reader(settings)
        exists = events_table_exists(client, settings.clickhouse_database)
    except SealtrailError as exc:
        if mode == "required":
            raise
        _say(f"warning: skipping the ClickHouse cross-check: {exc}")
        return None
    if not exists:
        if mode == "required":
            raise ClickHouseError(
                f"table {settings.clickhouse_database}.events does not exist in "
                f"{ch.redact(settings.clickhouse_dsn)}; run the sink or drop --clickhouse-required"
            )
        return None
    return client


def run_verify(
    settings: Settings,
    ring: KeyRing,
    *,
    clickhouse: str = "auto",
    progress: bool = True,
    **options: Any,
) -> Report:
    """Open ClickHouse read-only as ``clickhouse`` says (auto, off, required) and the progress
    bar, then run :func:`processors.verifier.run.run_verify`."""
    from processors.verifier.run import VerifyOptions
    from processors.verifier.run import run_verify as verify_deployment

    client = _clickhouse_client(settings, clickhouse)
    try:
        return verify_deployment(
            settings,
            ring,
            client,
            VerifyOptions(**options),
            lambda total, what="records": _Progress(total, progress, what),
        )
    finally:
        if client is not None:
            # Removes the check session's scratch directory (a cron run left one per run).
            client.close()


def _print_report(report: Report) -> None:
    for w in report.to_json()["warnings"]:
        _say(f"warning: {w}")
    for line in report.unsigned_tails():
        _say(line)
    findings = report.findings()
    for f in findings[:SHOW_FINDINGS]:
        ev = f.evidence()
        _say(
            f"FINDING {ev['kind']}: {ev['message']} [chain={ev['chain']} seq={ev['seq']} "
            f"offset={ev['offset']} expected={ev['expected']} found={ev['found']}]"
        )
    more = report.findings_total - min(len(findings), SHOW_FINDINGS)
    if more > 0:
        _say(f"... and {more} more finding(s); see the --json report")
    typer.echo(summary_line(report))


def summary_line(report: Report) -> str:
    """The one line ``sealtrail verify`` prints on stdout."""
    chains = len(report.chains)
    anchored = sum(1 for r in report.chains if r.anchored)
    # An empty chain (a raw partition without events) is never anchored: say so, or "3
    # chain(s) verified, 2 anchored" reads like an unsigned chain.
    empty = f", {report.empty_chains} empty" if report.empty_chains else ""
    ch = (
        f", ClickHouse rows checked: {sum(r.records_verified for r in report.clickhouse)}"
        if report.clickhouse_checked
        else ", ClickHouse not checked"
    )
    verdict = "OK" if report.ok else f"FAILED ({report.findings_total} finding(s))"
    return (
        f"{verdict}: {report.records_verified} records in {chains} chain(s) verified, "
        f"{anchored} anchored by signed checkpoints{empty}{ch}"
    )


def verify(
    ctx: typer.Context,
    key: KeyOpt = None,
    state: Annotated[
        Path | None, typer.Option(help="State file: verify only what is new since the last run.")
    ] = None,
    full: Annotated[
        bool, typer.Option("--full", help="Replay every chain from the start.")
    ] = False,
    offsite_dir: Annotated[
        Path | None,
        typer.Option("--offsite", help="Directory of exported checkpoints (truncation/rebuild)."),
    ] = None,
    no_clickhouse: Annotated[
        bool, typer.Option("--no-clickhouse", help="Skip the ClickHouse cross-check.")
    ] = False,
    clickhouse_required: Annotated[
        bool,
        typer.Option("--clickhouse-required", help="Fail (exit 2) if the events table is absent."),
    ] = False,
    require_anchored: Annotated[
        bool,
        typer.Option(
            "--require-anchored", help="A chain without a signed checkpoint is a finding."
        ),
    ] = False,
    jobs: Annotated[int, typer.Option(help="Parallel processes (0 = min(cpus, chains)).")] = 0,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the full report as JSON.")
    ] = None,
    metrics_file: Annotated[
        Path | None, typer.Option(help="Prometheus textfile (node-exporter textfile collector).")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for Kafka to answer.")] = 10.0,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress output.")] = False,
    sink_group: Annotated[
        str | None,
        typer.Option(
            help="The sink's consumer group: rows missing below its committed offsets were "
            "deleted from ClickHouse, not merely not loaded yet.",
            show_default="<topic prefix>sealtrail-sink",
        ),
    ] = None,
    recompute_outside: Annotated[
        bool,
        typer.Option(
            "--recompute-outside",
            help="Read every ClickHouse row into the verifier and recompute hashes, links, "
            "Merkle root and decoded columns here, instead of in ClickHouse's SQL: for a "
            "verifier who does not trust the ClickHouse server's own code.",
        ),
    ] = False,
) -> None:
    """Verify chains, checkpoints and ClickHouse rows (exit 0 ok, 1 finding, 2 cannot verify)."""
    settings = settings_of(ctx)
    if no_clickhouse and clickhouse_required:
        raise ConfigError("--no-clickhouse and --clickhouse-required contradict each other")
    if jobs < 0:
        raise ConfigError("--jobs must be 0 (automatic) or positive")
    ring = load_keyring(key)
    if offsite_dir is not None and not offsite_dir.is_dir():
        raise ConfigError(f"--offsite {offsite_dir} is not a directory; export checkpoints first")
    report = run_verify(
        settings,
        ring,
        state_file=state,
        full=full,
        offsite_dir=offsite_dir,
        clickhouse="off" if no_clickhouse else "required" if clickhouse_required else "auto",
        require_anchored=require_anchored,
        jobs=jobs,
        timeout=timeout,
        progress=not quiet,
        sink_group=sink_group,
        recompute_outside=recompute_outside,
    )
    if json_out is not None:
        report.write_json(json_out)
    if metrics_file is not None:
        last = report.finished if report.ok else previous_success(metrics_file)
        write_metrics(metrics_file, report, last)
    _print_report(report)
    if not report.ok:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------ proofs


def prove(
    ctx: typer.Context,
    chain: Annotated[str, typer.Option(help="Chain id, e.g. audit.events/0.")],
    key: KeyOpt = None,
    seq: Annotated[int | None, typer.Option(help="Record to prove included.")] = None,
    consistency: Annotated[
        bool, typer.Option("--consistency", help="Prove checkpoint FROM extends checkpoint TO.")
    ] = False,
    from_size: Annotated[int | None, typer.Option("--from", help="Older checkpoint size.")] = None,
    to_size: Annotated[int | None, typer.Option("--to", help="Newer checkpoint size.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the proof here (default stdout).")] = None,
) -> None:
    """Print a JSON inclusion proof (--seq) or consistency proof (--consistency --from --to)."""
    from processors.verifier.prove import make_proof

    settings = settings_of(ctx)
    ring = load_keyring(key)
    doc = make_proof(settings, ring, chain, seq, (from_size, to_size), consistency, warn=_say)
    _write_proof(doc, out)


def _write_proof(doc: dict[str, Any], out: Path | None) -> None:
    text = json.dumps(doc, indent=1) + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        from processors.verifier.state import write_atomic

        write_atomic(out, text)
        _say(f"proof written to {out}")


def verify_proof_cmd(
    proof_file: Annotated[Path, typer.Argument(help="A proof written by 'sealtrail prove'.")],
    key: KeyOpt = None,
) -> None:
    """Check a proof offline (no Kafka, no ClickHouse). Exit 0 proved, 1 not proved."""
    from processors.proofs import verify_proof

    ring = load_keyring(key)
    try:
        text = proof_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read {proof_file} ({type(exc).__name__}); check the path"
        ) from None
    proven = verify_proof(text, ring)
    typer.echo(f"PROVED: {proven.statement}")


# ------------------------------------------------------------------------------ export

checkpoints_app = typer.Typer(help="Signed checkpoints.", no_args_is_help=True)


@checkpoints_app.command("export")
def export(
    ctx: typer.Context,
    to: Annotated[Path, typer.Option("--to", help="Directory outside Kafka to append notes to.")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for Kafka to answer.")] = 10.0,
) -> None:
    """Append every checkpoint note not yet exported to DIR (one file per chain)."""
    from processors.verifier.kafka_source import chain_id, chain_partitions, read_checkpoint_notes

    settings = settings_of(ctx)
    added = not_text = 0
    for p in chain_partitions(settings, timeout=timeout):
        chain = chain_id(settings, p)
        notes = []
        for item in read_checkpoint_notes(settings, p, chain):
            if not item.note.isascii() and not _is_utf8(item.note):
                not_text += 1  # a note it cannot be; `sealtrail verify` reports it
                continue
            notes.append(item.note)
        added += offsite.append_notes(to, chain, notes)
    typer.echo(f"exported {added} new checkpoint(s) to {to}")
    if not_text:
        _say(f"skipped {not_text} record(s) that are not UTF-8; run 'sealtrail verify'")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_VERIFY_EPILOG = (
    "On an embedded store nobody else holds, ClickHouse decodes the stored payloads from "
    "temporary files in TMPDIR (a private directory, up to about 256 MiB at a time, removed "
    "after each page); a running sink does that for it."
)


def register(app: typer.Typer) -> None:
    app.command("verify", epilog=_VERIFY_EPILOG)(verify)
    app.command("prove")(prove)
    app.command("verify-proof")(verify_proof_cmd)
    app.add_typer(checkpoints_app, name="checkpoints")
