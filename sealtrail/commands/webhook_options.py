"""Webhook options shared by ``sealtrail produce webhook`` and ``sealtrail run``: one spelling of
each flag, its env var and its help."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Listen = Annotated[
    str, typer.Option(envvar="SEALTRAIL_WEBHOOK_LISTEN", help="Webhook HOST:PORT to listen on.")
]
Tokens = Annotated[
    Path | None,
    typer.Option(
        envvar="SEALTRAIL_WEBHOOK_TOKENS",
        help="File of 'TOKEN CLUSTER' lines (mode 600): bearer tokens and their clusters.",
    ),
]
TlsCert = Annotated[
    Path | None,
    typer.Option(envvar="SEALTRAIL_WEBHOOK_TLS_CERT", help="Webhook TLS certificate (PEM)."),
]
TlsKey = Annotated[
    Path | None,
    typer.Option(envvar="SEALTRAIL_WEBHOOK_TLS_KEY", help="Webhook TLS private key (PEM)."),
]
AllowPlainHttpTokens = Annotated[
    bool,
    typer.Option(
        "--allow-plain-http-tokens",
        envvar="SEALTRAIL_WEBHOOK_ALLOW_PLAIN_HTTP_TOKENS",
        help="Accept --tokens without TLS (only behind a TLS-terminating proxy: "
        "kube-apiserver sends tokens only over https).",
    ),
]
InsecureNoAuth = Annotated[
    bool, typer.Option("--insecure-no-auth", help="Accept unauthenticated webhook requests.")
]
Cluster = Annotated[
    str | None,
    typer.Option(help="Cluster name for --insecure-no-auth, client certificates or lone tokens."),
]
