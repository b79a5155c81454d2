"""``sealtrail chain``: the exactly-once chaining processor (docs/CHAINER.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sealtrail.commands import metrics_options
from sealtrail.commands.context import settings_of
from sealtrail.infra import config
from sealtrail.infra.kafka import check_login
from sealtrail.infra.metrics_server import metrics_listen as parse_metrics_listen
from sealtrail.infra.service import StopFlag, tune_gc


def chain(
    ctx: typer.Context,
    once: Annotated[
        bool, typer.Option("--once", help="Chain what the raw topic holds now, then exit.")
    ] = False,
    batch_records: Annotated[
        int, typer.Option(min=1, help="Records per transaction, at most.")
    ] = 5000,
    batch_ms: Annotated[
        int, typer.Option(min=1, help="Milliseconds a transaction waits for more records.")
    ] = 100,
    signing_key: Annotated[
        Path | None,
        typer.Option(
            envvar="SEALTRAIL_SIGNING_KEY",
            help="Private key file (mode 0600) that signs checkpoints; none: no checkpoints.",
        ),
    ] = None,
    checkpoint_records: Annotated[
        int, typer.Option(min=1, help="Checkpoint a chain after this many new records.")
    ] = 1000,
    checkpoint_seconds: Annotated[
        float, typer.Option(min=0.001, help="Checkpoint a chain with new records this often.")
    ] = 0.5,
    instance_id: Annotated[
        str,
        typer.Option(
            envvar="SEALTRAIL_INSTANCE_ID",
            help="Stable id of this instance (transactional id, static group member).",
            show_default="hostname",
        ),
    ] = "",
    export_checkpoints: Annotated[
        Path | None,
        typer.Option(help="Also append every committed checkpoint note to DIR/<chain>.notes."),
    ] = None,
    metrics_listen: Annotated[
        str, metrics_options.listen_option(config.ENV_CHAIN_METRICS_LISTEN)
    ] = "",
    metrics_allow_remote: Annotated[
        bool, metrics_options.allow_remote_option(config.ENV_CHAIN_METRICS_ALLOW_REMOTE)
    ] = False,
    metrics_fd: Annotated[int | None, metrics_options.fd_option()] = None,
) -> None:
    """Hash-chain the raw topic into the chain topic, exactly once, with signed checkpoints."""
    from processors.chainer import Chainer, ChainerOptions

    options = ChainerOptions(
        once=once,
        batch_records=batch_records,
        batch_ms=batch_ms,
        signing_key=signing_key,
        checkpoint_records=checkpoint_records,
        checkpoint_seconds=checkpoint_seconds,
        instance_id=instance_id,
        export_checkpoints=export_checkpoints,
        metrics_listen=parse_metrics_listen(metrics_listen, metrics_allow_remote, fd=metrics_fd),
    )
    settings = settings_of(ctx)
    check_login(settings)  # a refused login is one sentence, not a silent retry loop
    tune_gc()
    stats = Chainer(settings, options, StopFlag().install()).run()
    typer.echo(
        f"chained {stats.records} records in {stats.transactions} transactions, "
        f"{stats.checkpoints} checkpoints"
    )


def register(app: typer.Typer) -> None:
    app.command("chain")(chain)
