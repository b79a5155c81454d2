"""``sealtrail acls apply|users``: the role users and their ACLs on a cluster (docs/DEPLOY.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sealtrail import acls, kafka_users
from sealtrail.cli import settings_of
from sealtrail.kafka import admin, check_login

acls_app = typer.Typer(
    help="Kafka users (SCRAM) and ACLs of the sealtrail roles, from sealtrail/acls.py.",
    no_args_is_help=True,
)

UserPrefix = Annotated[str, typer.Option(help="Users are <prefix><role>, e.g. sealtrail-chainer.")]


@acls_app.command("apply")
def apply(
    ctx: typer.Context,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print them as kafka-acls.sh lines only.")
    ] = False,
    user_prefix: UserPrefix = acls.DEFAULT_USER_PREFIX,
) -> None:
    """Create every role's ACLs for the topics of SEALTRAIL_TOPIC_PREFIX (run as admin)."""
    settings = settings_of(ctx)
    wanted = acls.acls(settings.topic_prefix, user_prefix)
    if dry_run:
        for acl in wanted:
            typer.echo(acl.command())
        return
    check_login(settings)
    count = acls.apply(admin(settings), wanted)
    typer.echo(f"{count} ACL(s) in place for {', '.join(r.value for r in acls.COMPONENT_ROLES)}")


@acls_app.command("users")
def users(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Folder for the <role>.properties client files.")],
    ca: Annotated[
        Path | None, typer.Option(help="CA certificate the clients trust (ssl.ca.location).")
    ] = None,
    user_prefix: UserPrefix = acls.DEFAULT_USER_PREFIX,
) -> None:
    """Create or refresh the SCRAM-SHA-512 user of each component role (run as admin) and
    write its client file (0600); an existing file keeps its password."""
    settings = settings_of(ctx)
    check_login(settings)
    clients = kafka_users.role_clients(out, ca, acls.COMPONENT_ROLES, user_prefix)
    kafka_users.upsert_users(admin(settings), clients)
    for client in clients:
        typer.echo(f"{client.role.value}: user {client.user}, {client.path}")


def register(app: typer.Typer) -> None:
    app.add_typer(acls_app, name="acls")
