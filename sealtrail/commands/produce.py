"""``sealtrail produce webhook|file|load``: put Kubernetes audit events on the raw topic."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from sealtrail.cli import settings_of
from sealtrail.errors import ConfigError, KafkaUnavailable
from sealtrail.kafka import check_login
from sealtrail.service import StopFlag

produce_app = typer.Typer(
    help="Producers: the audit webhook, the log file shipper and a load generator.",
    no_args_is_help=True,
)
log = logging.getLogger("sealtrail.produce")


@produce_app.command("webhook")
def webhook(
    ctx: typer.Context,
    listen: Annotated[
        str, typer.Option(envvar="SEALTRAIL_WEBHOOK_LISTEN", help="HOST:PORT to listen on.")
    ] = "127.0.0.1:9880",
    tokens: Annotated[
        Path | None,
        typer.Option(
            envvar="SEALTRAIL_WEBHOOK_TOKENS",
            help="File of 'TOKEN CLUSTER' lines (mode 600): bearer tokens and their clusters.",
        ),
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="TLS certificate (PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key (PEM).")] = None,
    client_ca: Annotated[
        Path | None,
        typer.Option(help="CA bundle for client certificates (cluster = cert CN or --cluster)."),
    ] = None,
    insecure_no_auth: Annotated[
        bool, typer.Option("--insecure-no-auth", help="Accept unauthenticated requests.")
    ] = False,
    cluster: Annotated[
        str | None,
        typer.Option(help="Cluster name for --insecure-no-auth, client certs or lone tokens."),
    ] = None,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body.")] = 10 * 1024 * 1024,
    max_event_bytes: Annotated[int, typer.Option(help="Largest single event.")] = 100 * 1024,
    ack_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for Kafka before answering 503.")
    ] = 10.0,
    max_inflight: Annotated[
        int, typer.Option(help="Events waiting for Kafka before answering 503.")
    ] = 50_000,
) -> None:
    """Serve the Kubernetes audit webhook backend (POST / with audit EventLists)."""
    from producers.webhook import WebhookOptions, WebhookServer

    settings = settings_of(ctx)
    # Short: the webhook also starts (and answers 503) while Kafka is down.
    check_login(settings, timeout=3.0)
    server = WebhookServer(
        settings,
        WebhookOptions(
            listen=listen,
            tokens=tokens,
            tls_cert=tls_cert,
            tls_key=tls_key,
            client_ca=client_ca,
            insecure_no_auth=insecure_no_auth,
            cluster=cluster,
            max_body_bytes=max_body_bytes,
            max_event_bytes=max_event_bytes,
            ack_timeout=ack_timeout,
            max_inflight=max_inflight,
        ),
    )
    stop = StopFlag().install()
    port = server.start()
    typer.echo(f"webhook listening on {server.url()} (port {port})", err=True)
    while not stop.wait(1.0):
        pass
    left = server.stop()
    if left:
        raise KafkaUnavailable(
            f"{left} record(s) were not acknowledged by Kafka before shutdown; their senders "
            "were answered 503 and will retry"
        )
    typer.echo("webhook stopped", err=True)


@produce_app.command("file")
def file(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="kube-apiserver audit log (JSON lines).")],
    cluster: Annotated[str, typer.Option(help="Cluster name stamped on every event.")],
    follow: Annotated[
        bool, typer.Option("--follow", help="Keep reading; follow rotation.")
    ] = False,
    position_file: Annotated[
        Path | None,
        typer.Option(help="Position file (default $SEALTRAIL_HOME/shipper/<path>.pos)."),
    ] = None,
) -> None:
    """Ship an audit log file to Kafka, resuming from its saved position."""
    from producers.file_shipper import FileShipper

    settings = settings_of(ctx)
    check_login(settings)
    stop = StopFlag().install()
    shipper = FileShipper(
        settings, path, cluster, follow=follow, position_file=position_file, stop=stop
    )
    stats = shipper.run()
    typer.echo(stats.summary(path))


@produce_app.command("load")
def load(
    ctx: typer.Context,
    count: Annotated[int, typer.Option(help="Number of events.")] = 10_000,
    rate: Annotated[float, typer.Option(help="Events per second (0 = as fast as possible).")] = 0,
    clusters: Annotated[int, typer.Option(help="Clusters cluster-1..K.")] = 3,
    seed: Annotated[int | None, typer.Option(help="Seed: the same seed, the same events.")] = None,
    via: Annotated[str, typer.Option(help="'kafka' or 'webhook'.")] = "kafka",
    url: Annotated[
        str, typer.Option(help="Webhook URL for --via webhook.")
    ] = "http://127.0.0.1:9880/",
    token: Annotated[
        str | None,
        typer.Option(envvar="SEALTRAIL_WEBHOOK_TOKEN", help="Bearer token for --via webhook."),
    ] = None,
) -> None:
    """Generate realistic synthetic audit events and send them."""
    from producers.load import send_kafka, send_webhook

    if via == "kafka":
        check_login(settings_of(ctx))
        stats = send_kafka(settings_of(ctx), count, rate, clusters, seed)
    elif via == "webhook":
        stats = send_webhook(url, token, count, rate, clusters, seed)
    else:
        raise ConfigError(f"--via {via!r} is not known; use 'kafka' or 'webhook'")
    typer.echo(stats.summary())


def register(app: typer.Typer) -> None:
    app.add_typer(produce_app, name="produce")
