"""What every sub-command needs from the CLI: the settings the root callback built.

Sub-commands import this, never :mod:`sealtrail.cli`, so the CLI sits above the commands and
imports them to register them, without an import cycle.
"""

from __future__ import annotations

import typer

from sealtrail.infra import config


def settings_of(ctx: typer.Context) -> config.Settings:
    """The settings the root callback built (also works when a sub-app is invoked alone)."""
    root = ctx.find_root()
    if isinstance(root.obj, config.Settings):
        return root.obj
    return config.Settings.from_env()
