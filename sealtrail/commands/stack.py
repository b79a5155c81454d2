"""``sealtrail stack up|status|down``: the local Kafka cluster."""

from __future__ import annotations

from typing import Annotated

import typer

from sealtrail.commands.context import settings_of
from sealtrail.infra import topics
from sealtrail.infra.acls import Role
from sealtrail.kafka_users import client_file
from sealtrail.stack import LocalKafka, local_kafka

stack_app = typer.Typer(
    help="Run a real local Apache Kafka (KRaft) cluster for demos and tests.", no_args_is_help=True
)


def _say(message: str) -> None:
    typer.echo(message, err=True)


@stack_app.command("up")
def up(
    ctx: typer.Context,
    port: Annotated[
        int, typer.Option(help="First broker port (brokers use PORT, PORT+1, ...).")
    ] = 9092,
    brokers: Annotated[int, typer.Option(help="1, or 3 for a three-voter quorum.")] = 1,
    partitions: Annotated[int, typer.Option(help="Partitions of the topics it creates.")] = 6,
    no_topics: Annotated[bool, typer.Option("--no-topics", help="Do not create topics.")] = False,
    secure: Annotated[
        bool,
        typer.Option(
            "--secure",
            help="TLS + SASL/SCRAM-SHA-512 + ACLs: one user per role, client files in "
            "$SEALTRAIL_HOME/clients (docs/SECURITY.md).",
        ),
    ] = False,
) -> None:
    """Fetch the broker (once), start it, wait for metadata, create the topics."""
    settings = settings_of(ctx)
    kafka = local_kafka(settings, _say)
    state = kafka.up(port=port, brokers=brokers, secure=secure, topic_prefix=settings.topic_prefix)
    admin = settings.with_(kafka=state.bootstrap)
    if secure:
        admin = admin.with_(kafka_config=client_file(kafka.clients_dir, Role.ADMIN))
    if not no_topics:
        created = topics.init_topics(
            admin,
            partitions=partitions,
            replication_factor=min(3, brokers),
        )
        for topic in created:
            _say(
                f"topic {topic.name}: {topic.partitions} partitions"
                f"{' (created)' if topic.created else ''}"
            )
    _say(f"Kafka is up. Use: export SEALTRAIL_KAFKA={state.bootstrap}")
    if secure:
        _say(
            "Secured: each component uses its role's file, e.g. "
            f"SEALTRAIL_KAFKA_CONFIG={client_file(kafka.clients_dir, Role.CHAINER)}; "
            "'sealtrail stack status' lists them"
        )
    typer.echo(state.bootstrap)


def _show_roles(kafka: LocalKafka) -> None:
    for role in Role:
        path = client_file(kafka.clients_dir, role)
        mark = "" if path.exists() else " (missing)"
        typer.echo(f"role {role.value}: {path}{mark}")


@stack_app.command("status")
def status(ctx: typer.Context) -> None:
    """Show the local brokers and whether they run. Exit 1 if none runs."""
    kafka = local_kafka(settings_of(ctx))
    state, alive = kafka.status()
    if state is None:
        typer.echo(f"no local stack in {kafka.root}")
        raise typer.Exit(1)
    alive_ids = {node.node_id for node in alive}
    for node in state.nodes:
        mark = "running" if node.node_id in alive_ids else "stopped"
        typer.echo(
            f"node {node.node_id}: 127.0.0.1:{node.port} {mark}"
            f"{f' (pid {node.pid})' if node.node_id in alive_ids else ''}"
        )
    typer.echo(f"bootstrap: {state.bootstrap}")
    if state.secure:
        typer.echo("security: SASL_SSL (SCRAM-SHA-512), StandardAuthorizer, one user per role")
        _show_roles(kafka)
    else:
        typer.echo("security: none (PLAINTEXT, no authorizer; 'stack up --secure' locks it down)")
    if not alive:
        raise typer.Exit(1)


@stack_app.command("down")
def down(ctx: typer.Context) -> None:
    """Stop every local broker (data stays; 'up' starts them again)."""
    stopped = local_kafka(settings_of(ctx), _say).down()
    typer.echo(f"stopped {stopped} broker(s)")


def register(app: typer.Typer) -> None:
    app.add_typer(stack_app, name="stack")
