"""The ``--metrics-listen`` and ``--metrics-allow-remote`` options of ``sealtrail chain`` and
``sealtrail sink`` (each with its own environment variables), and the hidden ``--metrics-fd``
by which ``sealtrail run`` hands each its listening socket."""

from __future__ import annotations

from typing import Any

import typer


def listen_option(envvar: str) -> Any:
    return typer.Option(
        envvar=envvar,
        help="Serve Prometheus metrics on http://HOST:PORT/metrics (loopback only unless "
        "--metrics-allow-remote); empty: off.",
    )


def allow_remote_option(envvar: str) -> Any:
    return typer.Option(
        "--metrics-allow-remote",
        envvar=envvar,
        help="Let --metrics-listen take a non-loopback address (metrics are "
        "unauthenticated: only behind a trusted network).",
    )


def fd_option() -> Any:
    # Hidden: only 'sealtrail run' knows which descriptor it passed (sealtrail/supervisor.py).
    return typer.Option("--metrics-fd", hidden=True, min=0)
