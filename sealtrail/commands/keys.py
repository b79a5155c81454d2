"""``sealtrail keys generate``: an Ed25519 checkpoint signing key pair."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sealtrail.commands.context import settings_of

keys_app = typer.Typer(help="Checkpoint signing keys.", no_args_is_help=True)


@keys_app.command("generate")
def generate(
    ctx: typer.Context,
    name: Annotated[
        str,
        typer.Option(
            help="Key name, e.g. an origin-style example.com/audit (no whitespace, no '+', not "
            "starting with '#')."
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            help="Directory for NAME.key (0600) and NAME.pub, NAME percent-encoded ('/' -> %2F).",
            show_default="$SEALTRAIL_HOME/keys",
        ),
    ] = None,
) -> None:
    """Write NAME.key and NAME.pub; print their paths and the public verifier key only."""
    from processors.integrity.keys import write_keypair

    directory = out if out is not None else settings_of(ctx).keys_dir
    private, public = write_keypair(name, directory)
    verifier = public.read_text(encoding="utf-8").strip()
    typer.echo(
        f"private key: {private} (mode 0600; pass it as --signing-key / SEALTRAIL_SIGNING_KEY)"
    )
    typer.echo(f"public key:  {public}")
    typer.echo(f"verifier key: {verifier}")


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
