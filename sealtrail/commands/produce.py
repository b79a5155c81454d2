"""``sealtrail produce webhook|file|load``: put Kubernetes audit events on the raw topic."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from sealtrail.commands import webhook_options
from sealtrail.commands.context import settings_of
from sealtrail.infra.errors import ConfigError, KafkaUnavailable
from sealtrail.infra.kafka import check_login
from sealtrail.infra.service import StopFlag, tune_gc

produce_app = typer.Typer(
    help="Producers: the audit webhook, the log file shipper and a load generator.",
    no_args_is_help=True,
)
log = logging.getLogger("sealtrail.produce")


@produce_app.command("webhook")
def webhook(
    ctx: typer.Context,
    listen: webhook_options.Listen = "127.0.0.1:9880",
    tokens: webhook_options.Tokens = None,
    tls_cert: webhook_options.TlsCert = None,
    tls_key: webhook_options.TlsKey = None,
    allow_plain_http_tokens: webhook_options.AllowPlainHttpTokens = False,
    client_ca: Annotated[
        Path | None,
        typer.Option(help="CA bundle for client certificates (cluster = cert CN or --cluster)."),
    ] = None,
    insecure_no_auth: webhook_options.InsecureNoAuth = False,
    cluster: webhook_options.Cluster = None,
    max_body_bytes: Annotated[
        int,
        typer.Option(help="Largest request body (0: no limit; large bodies are streamed)."),
    ] = 0,
    max_event_bytes: Annotated[
        int,
        typer.Option(
            help="Largest event chained as an event; a larger one is chained as a reject "
            "holding its first MiB and its SHA-256 (at most 48 MiB)."
        ),
    ] = 32 * 1024 * 1024,
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
    # Built first: its options, token file and TLS files are refused before Kafka is touched.
    server = WebhookServer(
        settings,
        WebhookOptions(
            listen=listen,
            tokens=tokens,
            tls_cert=tls_cert,
            tls_key=tls_key,
            client_ca=client_ca,
            insecure_no_auth=insecure_no_auth,
            allow_plain_http_tokens=allow_plain_http_tokens,
            cluster=cluster,
            max_body_bytes=max_body_bytes,
            max_event_bytes=max_event_bytes,
            ack_timeout=ack_timeout,
            max_inflight=max_inflight,
        ),
    )
    # Short: the webhook also starts (and answers 503) while Kafka is down.
    check_login(settings, timeout=3.0)
    stop = StopFlag().install()
    tune_gc()
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
    tune_gc()
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
    ca: Annotated[
        Path | None,
        typer.Option(
            help="CA certificate (PEM) an https --url is verified against: the webhook's "
            "--tls-cert or its CA (default: the system's CAs)."
        ),
    ] = None,
) -> None:
    """Generate realistic synthetic audit events and send them."""
    from producers.load import send_kafka, send_webhook

    if via == "kafka":
        check_login(settings_of(ctx))
        stats = send_kafka(settings_of(ctx), count, rate, clusters, seed)
    elif via == "webhook":
        stats = send_webhook(url, token, count, rate, clusters, seed, ca=ca)
    else:
        raise ConfigError(f"--via {via!r} is not known; use 'kafka' or 'webhook'")
    typer.echo(stats.summary())


def register(app: typer.Typer) -> None:
    app.add_typer(produce_app, name="produce")
