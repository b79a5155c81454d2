"""``sealtrail stack up|status|down``: the local Kafka cluster."""

from __future__ import annotations

from typing import Annotated

import typer

from sealtrail import topics
from sealtrail.commands.context import settings_of
from sealtrail.stack import local_kafka

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
) -> None:
    """Fetch the broker (once), start it, wait for metadata, create the topics."""
    settings = settings_of(ctx)
    state = local_kafka(settings, _say).up(port=port, brokers=brokers)
    if not no_topics:
        created = topics.init_topics(
            settings.with_(kafka=state.bootstrap),
            partitions=partitions,
            replication_factor=min(3, brokers),
        )
        for topic in created:
            _say(
                f"topic {topic.name}: {topic.partitions} partitions"
                f"{' (created)' if topic.created else ''}"
            )
    _say(f"Kafka is up. Use: export SEALTRAIL_KAFKA={state.bootstrap}")
    typer.echo(state.bootstrap)


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
    if not alive:
        raise typer.Exit(1)


@stack_app.command("down")
def down(ctx: typer.Context) -> None:
    """Stop every local broker (data stays; 'up' starts them again)."""
    stopped = local_kafka(settings_of(ctx), _say).down()
    typer.echo(f"stopped {stopped} broker(s)")


def register(app: typer.Typer) -> None:
    app.add_typer(stack_app, name="stack")
