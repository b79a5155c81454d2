"""``sealtrail acls apply|users``: the role users and their ACLs on a cluster (docs/DEPLOY.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sealtrail import kafka_users
from sealtrail.commands.context import settings_of
from sealtrail.infra import acls
from sealtrail.infra.kafka import admin, check_login, wait_for_cluster
from sealtrail.infra.pki import ensure_tls

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
    wait_for_cluster(settings)  # an unreachable cluster is one sentence, not an ACL refusal
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
    files_only: Annotated[
        bool,
        typer.Option(
            "--files-only", help="Only write the client files (new random passwords); no Kafka."
        ),
    ] = False,
) -> None:
    """Create or refresh the SCRAM-SHA-512 user of each role (run as a super user) and write
    its client file (0600); an existing file keeps its password, so files written first with
    --files-only (e.g. as deployment secrets) become the users' credentials."""
    settings = settings_of(ctx)
    clients = kafka_users.role_clients(out, ca, tuple(acls.Role), user_prefix)
    if not files_only:
        wait_for_cluster(settings)  # an unreachable cluster is one sentence, not a refusal
        check_login(settings)
        kafka_users.upsert_users(admin(settings), clients)
    for client in clients:
        typer.echo(f"{client.role.value}: user {client.user}, {client.path}")


@acls_app.command("certs")
def certs(
    out: Annotated[Path, typer.Option(help="Folder for ca.pem, ca.key and the broker's files.")],
    host: Annotated[
        list[str], typer.Option(help="Host name or IP the brokers are reached by (repeat).")
    ],
) -> None:
    """Make a private CA and one broker certificate (PEM keystore, keys 0600), as
    'stack up --secure' does, e.g. for compose.yaml; production may use its own CA."""
    files = ensure_tls(out, tuple(host))
    typer.echo(f"CA: {files.ca_cert}; broker keystore: {files.broker_keystore}")


def register(app: typer.Typer) -> None:
    app.add_typer(acls_app, name="acls")
