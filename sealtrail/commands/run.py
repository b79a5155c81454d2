"""``sealtrail run``: the whole pipeline (webhook, chainer, sink) as one supervised service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sealtrail import config
from sealtrail.cli import settings_of
from sealtrail.errors import ConfigError
from sealtrail.service import StopFlag
from sealtrail.supervisor import Supervisor


def _host_port(value: str, option: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{option} must be HOST:PORT, got {value!r}")
    return host or "127.0.0.1", int(port)


def run(
    ctx: typer.Context,
    listen: Annotated[
        str, typer.Option(envvar="SEALTRAIL_WEBHOOK_LISTEN", help="Webhook HOST:PORT.")
    ] = "127.0.0.1:9880",
    tokens: Annotated[
        Path | None,
        typer.Option(envvar="SEALTRAIL_WEBHOOK_TOKENS", help="Webhook token file (TOKEN CLUSTER)."),
    ] = None,
    insecure_no_auth: Annotated[
        bool, typer.Option("--insecure-no-auth", help="Accept webhook posts without a token.")
    ] = False,
    cluster: Annotated[
        str | None, typer.Option(help="Cluster name when the webhook has no token file.")
    ] = None,
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
    webhook_host, webhook_port = _host_port(listen, "--listen")
    children: list[tuple[str, list[str]]] = []
    if not no_webhook:
        webhook = ["produce", "webhook", "--listen", listen]
        if tokens is not None:
            webhook += ["--tokens", str(tokens)]
        if insecure_no_auth:
            webhook += ["--insecure-no-auth"]
        if cluster:
            webhook += ["--cluster", cluster]
        children.append(("webhook", as_role("producer", producer_kafka_config, webhook)))
    chain = ["chain"]
    if signing_key is not None:
        chain += ["--signing-key", str(signing_key)]
    children.append(("chainer", as_role("chainer", chainer_kafka_config, chain)))
    children.append(("sink", as_role("sink", sink_kafka_config, ["sink"])))
    supervisor = Supervisor(
        settings,
        children,
        _host_port(health_listen, "--health-listen"),
        StopFlag().install(),
        webhook_metrics_url=None if no_webhook else f"http://{webhook_host}:{webhook_port}/metrics",
    )
    raise typer.Exit(supervisor.run())


def register(app: typer.Typer) -> None:
    app.command("run")(run)
