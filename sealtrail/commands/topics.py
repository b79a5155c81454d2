"""``sealtrail topics init|check``: the append-only topics."""

from __future__ import annotations

from typing import Annotated

import typer

from sealtrail.commands.context import settings_of
from sealtrail.infra import topics

topics_app = typer.Typer(help="Create and check the append-only topics.", no_args_is_help=True)


@topics_app.command("init")
def init(
    ctx: typer.Context,
    partitions: Annotated[int, typer.Option(help="Partitions (one hash chain each).")] = 6,
    replication_factor: Annotated[int, typer.Option(help="Replicas of each partition.")] = 1,
) -> None:
    """Create missing topics with append-only settings; refuse existing unsafe ones."""
    for topic in topics.init_topics(settings_of(ctx), partitions, replication_factor):
        typer.echo(
            f"{topic.name}: {topic.partitions} partitions"
            f"{' (created)' if topic.created else ' (exists, settings checked)'}"
        )


@topics_app.command("check")
def check(ctx: typer.Context) -> None:
    """Check that every topic exists and is append-only."""
    topics.check_topics(settings_of(ctx))
    typer.echo("topics are present and append-only")


def register(app: typer.Typer) -> None:
    app.add_typer(topics_app, name="topics")
