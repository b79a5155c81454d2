"""`sealtrail chain` against the real broker."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from processors.integrity.checkpoint import KeyRing
from sealtrail.cli import app
from sealtrail.infra.config import Settings
from tests.integration.chainer_support import (
    PARTITIONS,
    check_chain,
    check_checkpoints,
    cli_args,
    mixed_payloads,
    produce_raw,
)

runner = CliRunner()


def test_cli_chain_once(
    settings: Settings, keypair: tuple[Path, Path], keyring: KeyRing, restore_signals: None
) -> None:
    produce_raw(settings, mixed_payloads(0, 30))
    result = runner.invoke(
        app,
        # Only the checkpoint written at the end: a slow run must not add a timed one.
        cli_args(
            settings, "chain", "--once", "--instance-id", "t-cli", "--checkpoint-seconds", "3600"
        ),
        env={"SEALTRAIL_SIGNING_KEY": str(keypair[0])},
    )
    assert result.exit_code == 0, result.output
    assert "chained 30 records" in result.output
    for p in range(PARTITIONS):
        records = check_chain(settings, p)
        assert [cp.size for cp in check_checkpoints(settings, p, records, keyring)] == [10]
    bad = runner.invoke(app, cli_args(settings, "chain", "--once", "--batch-records", "0"))
    assert bad.exit_code == 2
