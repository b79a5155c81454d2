"""``sealtrail verify``, ``prove``, ``verify-proof`` and ``checkpoints export``."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from processors.integrity.checkpoint import Checkpoint, KeyRing, open_checkpoint, origin_for
from processors.integrity.errors import IntegrityError
from processors.integrity.note import Verifier
from processors.verifier import offsite
from processors.verifier.report import Report, previous_success, write_metrics
from sealtrail.commands.context import settings_of
from sealtrail.infra.config import Settings
from sealtrail.infra.errors import ClickHouseError, ConfigError, KeyFileError, SealtrailError

ENV_VERIFIER_KEYS = "SEALTRAIL_VERIFIER_KEYS"
SHOW_FINDINGS = 10


def _say(message: str) -> None:
    typer.echo(message, err=True)


_VERIFIER_KEY = re.compile(r"[^+\s]+\+[0-9a-f]{8}\+[A-Za-z0-9+/]+=*")


def load_keyring(value: str | None) -> KeyRing:
    """A key ring from a file path (key ring or .pub) or a verifier key string."""
    if not value:
        raise KeyFileError(
            f"no verifier key given; pass --key FILE (a .pub file or key ring) or set "
            f"{ENV_VERIFIER_KEYS}"
        )
    path = Path(value)
    # A key name may contain '/' (example.com/audit), so only the key's shape tells it from a path.
    if path.exists() or not _VERIFIER_KEY.fullmatch(value.strip()):
        return KeyRing.load(path)
    ring = KeyRing()
    ring.add(Verifier.from_verifier_key(value))
    return ring


KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--key",
        envvar=ENV_VERIFIER_KEYS,
        help="Trusted verifier key(s): a key ring file, a .pub file or a verifier key string.",
        show_envvar=True,
    ),
]


# ------------------------------------------------------------------------------ verify


class _Progress:
    """A rich progress bar on a terminal, plain lines every few seconds otherwise."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
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
                TextColumn("verifying"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]:>8.0f} rec/s"),
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
            _say(f"verified {self.done} of ~{self.total} records ({rate:.0f} records/s)")

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
    return verify_deployment(
        settings,
        ring,
        client,
        VerifyOptions(**options),
        lambda total: _Progress(total, progress),
    )


def _print_report(report: Report) -> None:
    for w in report.to_json()["warnings"]:
        _say(f"warning: {w}")
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
    chains = len(report.chains)
    anchored = sum(1 for r in report.chains if r.anchored)
    ch = (
        f", ClickHouse rows checked: {sum(r.records_verified for r in report.clickhouse)}"
        if report.clickhouse_checked
        else ", ClickHouse not checked"
    )
    verdict = "OK" if report.ok else f"FAILED ({report.findings_total} finding(s))"
    typer.echo(
        f"{verdict}: {report.records_verified} records in {chains} chain(s) verified, "
        f"{anchored} anchored by signed checkpoints{ch}"
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


def _checkpoints(settings: Settings, chain: str, ring: KeyRing) -> list[tuple[str, Checkpoint]]:
    """Validly signed checkpoints of ``chain`` from the topic, sorted by size."""
    from processors.verifier.kafka_source import read_checkpoint_notes

    partition = _partition_of(settings, chain)
    out: dict[int, tuple[str, Checkpoint]] = {}
    for item in read_checkpoint_notes(settings, partition, chain):
        try:
            cp = open_checkpoint(item.note, ring, origin=origin_for(settings.deployment, chain))
        except IntegrityError:
            continue  # 'sealtrail verify' reports bad checkpoints; a proof needs a good one
        out.setdefault(cp.size, (item.note, cp))
    return [out[k] for k in sorted(out)]


def _partition_of(settings: Settings, chain: str) -> int:
    from processors.integrity.chains import partition_of

    partition = partition_of(chain, settings.topics.raw)
    if partition is None:
        raise ConfigError(
            f"chain {chain!r} is not '{settings.topics.raw}/<partition>'; check --chain and "
            "SEALTRAIL_TOPIC_PREFIX"
        )
    return partition


def _leaves(settings: Settings, chain: str, size: int, keep: tuple[int, ...] = ()) -> Any:
    from processors.integrity.record import ChainedRecord
    from processors.proofs import LeafHashes
    from processors.verifier.kafka_source import iter_records

    _low, _high, items = iter_records(settings, _partition_of(settings, chain))

    def recs() -> Any:
        for _offset, fields in items:
            if not isinstance(fields, tuple):
                raise fields  # a record that is not one: the proof cannot be built
            yield ChainedRecord(*fields)

    return LeafHashes.from_records(chain, recs(), size, keep)


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
    from processors.proofs import make_consistency, make_inclusion

    settings = settings_of(ctx)
    ring = load_keyring(key)
    stored = _prove_from_store(settings, chain, ring, seq, (from_size, to_size), consistency)
    if stored is not None:
        _write_proof(stored, out)
        return
    cps = _checkpoints(settings, chain, ring)
    if consistency:
        if from_size is None or to_size is None or from_size > to_size:
            raise ConfigError("--consistency needs --from SIZE1 --to SIZE2 with SIZE1 <= SIZE2")
        sizes = {cp.size: (note, cp) for note, cp in cps}
        missing = [s for s in (from_size, to_size) if s not in sizes]
        if missing:
            raise ConfigError(
                f"chain {chain} has no validly signed checkpoint of size {missing[0]}; "
                f"available: {', '.join(str(s) for s in sorted(sizes)) or 'none'}"
            )
        leaves = _leaves(settings, chain, to_size)
        doc = make_consistency(chain, sizes[from_size], sizes[to_size], leaves)
    else:
        if seq is None or seq < 0:
            raise ConfigError("pass --seq N (the record to prove) or --consistency")
        later = [(n, cp) for n, cp in cps if cp.size > seq]
        if not later:
            raise ConfigError(
                f"no signed checkpoint of chain {chain} covers seq {seq} yet; wait for the next "
                "checkpoint and try again"
            )
        note, cp = later[-1]
        leaves = _leaves(settings, chain, cp.size, (seq,))
        doc = make_inclusion(chain, seq, note, cp, leaves)
    _write_proof(doc, out)


def _write_proof(doc: dict[str, Any], out: Path | None) -> None:
    text = json.dumps(doc, indent=1) + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        from processors.verifier.state import write_atomic

        write_atomic(out, text)
        _say(f"proof written to {out}")


def _prove_from_store(
    settings: Settings,
    chain: str,
    ring: KeyRing,
    seq: int | None,
    sizes: tuple[int | None, int | None],
    consistency: bool,
) -> dict[str, Any] | None:
    """The proof built from ClickHouse's stored subtrees in O(log n) reads (through the sink's
    live-read socket while it runs), checked against the signed roots; None when the store
    cannot give it (then the chain is read from Kafka, as before)."""
    from processors.verified_read import signed_checkpoints, stored_consistency, stored_inclusion
    from sealtrail.infra.reader import open_reader

    incomplete = None in sizes if consistency else seq is None or seq < 0
    if incomplete:
        return None  # the Kafka path explains what is missing
    try:
        reader = open_reader(settings, wait_s=5.0)
    except SealtrailError:
        return None
    db = settings.clickhouse_database
    try:
        cps = signed_checkpoints(reader, db, settings.deployment, chain, ring)
        if consistency:
            by_size = {cp.size: (note, cp) for note, cp in cps}
            if sizes[0] not in by_size or sizes[1] not in by_size:
                return None
            return stored_consistency(reader, db, chain, by_size[sizes[0]], by_size[sizes[1]])
        assert seq is not None
        covering = [(note, cp) for note, cp in cps if cp.size > seq]
        if not covering:
            return None
        note, cp = covering[0]
        return stored_inclusion(reader, db, chain, seq, note, cp)
    except (IntegrityError, LookupError) as exc:
        _say(f"the proof from ClickHouse does not check ({exc}); reading the chain from Kafka")
        return None
    except SealtrailError:
        return None
    finally:
        reader.close()


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


def register(app: typer.Typer) -> None:
    app.command("verify")(verify)
    app.command("prove")(prove)
    app.command("verify-proof")(verify_proof_cmd)
    app.add_typer(checkpoints_app, name="checkpoints")
