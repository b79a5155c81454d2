"""The ``sealtrail`` command. Sub-commands live in :mod:`sealtrail.commands`, one module per area.

Every :class:`~sealtrail.infra.errors.SealtrailError` is caught once, here, printed as one line and
turned into its exit code. Tracebacks are for bugs only.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from sealtrail import __version__
from sealtrail.infra import config
from sealtrail.infra.errors import EXIT_ERROR, SealtrailError

# Sub-command modules, each with ``register(app: typer.Typer) -> None``.
COMMAND_MODULES = [
    "sealtrail.commands.stack",
    "sealtrail.commands.topics",
    "sealtrail.commands.acls",
    "sealtrail.commands.produce",
    "sealtrail.commands.chain",
    "sealtrail.commands.keys",
    "sealtrail.commands.sink",
    "sealtrail.commands.run",
    "sealtrail.commands.verify",
]


def fail(message: str, code: int = EXIT_ERROR) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


class SealtrailGroup(TyperGroup):
    """Catches sealtrail errors raised anywhere below and exits with their code."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except SealtrailError as err:
            fail(str(err), err.exit_code)
        except KeyboardInterrupt:
            typer.secho("interrupted", err=True)
            raise typer.Exit(130) from None


app = typer.Typer(
    cls=SealtrailGroup,
    name="sealtrail",
    help="Tamper-evident Kubernetes audit logs on Kafka, with integrity-checked SQL analytics.",
    no_args_is_help=True,
    # Locals can hold keys and tokens: never print them.
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sealtrail {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    kafka: Annotated[
        str, typer.Option(envvar=config.ENV_KAFKA, help="Kafka bootstrap servers.")
    ] = config.DEFAULT_KAFKA,
    kafka_config: Annotated[
        Path | None,
        typer.Option(envvar=config.ENV_KAFKA_CONFIG, help="librdkafka properties file (TLS/SASL)."),
    ] = None,
    clickhouse: Annotated[
        str,
        typer.Option(
            envvar=config.ENV_CLICKHOUSE,
            help="ClickHouse DSN: chdb:///path (embedded) or http(s)://user:pass@host:8123.",
            show_default="chdb://$SEALTRAIL_HOME/clickhouse",
        ),
    ] = "",
    clickhouse_database: Annotated[
        str, typer.Option(envvar=config.ENV_CLICKHOUSE_DATABASE, help="ClickHouse database.")
    ] = config.DEFAULT_DATABASE,
    home: Annotated[
        Path, typer.Option(envvar=config.ENV_HOME, help="Data dir for the local stack and keys.")
    ] = Path(config.DEFAULT_HOME),
    topic_prefix: Annotated[
        str, typer.Option(envvar=config.ENV_TOPIC_PREFIX, help="Prefix for every topic name.")
    ] = "",
    deployment: Annotated[
        str,
        typer.Option(envvar=config.ENV_DEPLOYMENT, help="Deployment name, the checkpoint origin."),
    ] = config.DEFAULT_DEPLOYMENT,
    log_level: Annotated[
        str, typer.Option(envvar="SEALTRAIL_LOG_LEVEL", help="debug, info, warning or error.")
    ] = "info",
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print version.")
    ] = False,
) -> None:
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        raise typer.BadParameter("use debug, info, warning or error", param_hint="--log-level")
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    ctx.obj = config.Settings(
        kafka=kafka,
        kafka_config=kafka_config,
        clickhouse=clickhouse,
        clickhouse_database=clickhouse_database,
        home=home,
        topic_prefix=topic_prefix,
        deployment=deployment,
    )


for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(app)


def main() -> None:
    app(prog_name="sealtrail")


if __name__ == "__main__":  # ``python -m sealtrail.cli``: how ``sealtrail run`` starts children
    main()
