"""``sealtrail run``: the whole pipeline (webhook, chainer, sink) as one supervised service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sealtrail.commands import webhook_options
from sealtrail.commands.context import settings_of
from sealtrail.infra import config
from sealtrail.infra.config import parse_listen
from sealtrail.infra.errors import ConfigError
from sealtrail.infra.metrics_server import listening_loopback_socket
from sealtrail.infra.service import StopFlag
from sealtrail.supervisor import Child, Supervisor


def run(
    ctx: typer.Context,
    listen: webhook_options.Listen = "127.0.0.1:9880",
    tokens: webhook_options.Tokens = None,
    tls_cert: webhook_options.TlsCert = None,
    tls_key: webhook_options.TlsKey = None,
    allow_plain_http_tokens: webhook_options.AllowPlainHttpTokens = False,
    insecure_no_auth: webhook_options.InsecureNoAuth = False,
    cluster: webhook_options.Cluster = None,
    signing_key: Annotated[
        Path | None,
        typer.Option(envvar="SEALTRAIL_SIGNING_KEY", help="Checkpoint signing key (0600)."),
    ] = None,
    health_listen: Annotated[
        str, typer.Option(envvar="SEALTRAIL_HEALTH_LISTEN", help="Health/metrics HOST:PORT.")
    ] = "127.0.0.1:9881",
    no_webhook: Annotated[
        bool, typer.Option("--no-webhook", help="Run chainer and sink only.")
    ] = False,
    kafka_config_dir: Annotated[
        Path | None,
        typer.Option(
            envvar=config.ENV_KAFKA_CONFIG_DIR,
            help="Folder of producer.properties, chainer.properties and sink.properties: "
            "each component logs in to Kafka as its own role.",
        ),
    ] = None,
    producer_kafka_config: Annotated[
        Path | None,
        typer.Option(
            envvar=config.ENV_PRODUCER_KAFKA_CONFIG, help="Kafka client file of the webhook."
        ),
    ] = None,
    chainer_kafka_config: Annotated[
        Path | None,
        typer.Option(
            envvar=config.ENV_CHAINER_KAFKA_CONFIG, help="Kafka client file of the chainer."
        ),
    ] = None,
    sink_kafka_config: Annotated[
        Path | None,
        typer.Option(envvar=config.ENV_SINK_KAFKA_CONFIG, help="Kafka client file of the sink."),
    ] = None,
) -> None:
    """Run webhook, chainer and sink together; restart any that dies; drain all on SIGTERM."""
    settings = settings_of(ctx)

    def as_role(role: str, explicit: Path | None, args: list[str]) -> list[str]:
        # Each child gets its own --kafka-config (a global option, so it precedes the command).
        path = config.component_kafka_config(
            role, explicit, kafka_config_dir, settings.kafka_config
        )
        return (["--kafka-config", str(path)] if path is not None else []) + args

    if tokens is None and not insecure_no_auth and not no_webhook:
        raise ConfigError(
            "the webhook needs --tokens FILE (or SEALTRAIL_WEBHOOK_TOKENS); "
            "use --insecure-no-auth --cluster NAME only for local experiments"
        )
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together; give both or neither")
    if tokens is not None and tls_cert is None and not allow_plain_http_tokens and not no_webhook:
        from producers.webhook import TLS_FOR_TOKENS

        raise ConfigError(TLS_FOR_TOKENS)
    webhook_host, webhook_port = parse_listen(listen, "--listen")
    children: list[Child] = []
    if not no_webhook:
        webhook = ["produce", "webhook", "--listen", listen]
        if tokens is not None:
            webhook += ["--tokens", str(tokens)]
        if tls_cert is not None and tls_key is not None:
            webhook += ["--tls-cert", str(tls_cert), "--tls-key", str(tls_key)]
        if allow_plain_http_tokens:
            webhook += ["--allow-plain-http-tokens"]
        if insecure_no_auth:
            webhook += ["--insecure-no-auth"]
        if cluster:
            webhook += ["--cluster", cluster]
        children.append(Child("webhook", as_role("producer", producer_kafka_config, webhook)))
    # Chainer and sink serve their metrics on loopback sockets bound here and handed down;
    # /metrics here fetches them, so one scrape shows every stage.
    chain = ["chain"]
    if signing_key is not None:
        chain += ["--signing-key", str(signing_key)]
    children.append(_serving_metrics("chainer", as_role("chainer", chainer_kafka_config, chain)))
    children.append(_serving_metrics("sink", as_role("sink", sink_kafka_config, ["sink"])))
    scheme = "http" if tls_cert is None else "https"
    if webhook_host in ("0.0.0.0", "::"):
        webhook_host = "127.0.0.1"  # listening everywhere: ask it over loopback
    supervisor = Supervisor(
        settings,
        children,
        parse_listen(health_listen, "--health-listen"),
        StopFlag().install(),
        webhook_metrics_url=None
        if no_webhook
        else f"{scheme}://{webhook_host}:{webhook_port}/metrics",
        webhook_ca=tls_cert,
    )
    raise typer.Exit(supervisor.run())


def _serving_metrics(name: str, args: list[str]) -> Child:
    """A child that serves its metrics on a loopback socket bound here (--metrics-fd)."""
    sock = listening_loopback_socket()
    return Child(name, [*args, "--metrics-fd", str(sock.fileno())], metrics_socket=sock)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
