"""`sealtrail chain` refuses bad options without a broker."""

from __future__ import annotations

from typer.testing import CliRunner

from sealtrail.cli import app

runner = CliRunner()


def test_cli_rejects_bad_options(restore_signals: None) -> None:
    result = runner.invoke(app, ["chain", "--once", "--batch-records", "0"])
    assert result.exit_code == 2
    result = runner.invoke(app, ["--kafka", "127.0.0.1:1", "chain", "--instance-id", "a b"])
    assert result.exit_code == 2
    assert "whitespace" in result.output
