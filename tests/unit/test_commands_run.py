"""sealtrail.commands.run: what `sealtrail run` refuses before it starts anything."""

from __future__ import annotations

from pathlib import Path


def test_run_refuses_tokens_without_tls_in_one_sentence(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sealtrail.cli import app

    tokens = tmp_path / "tokens"
    tokens.write_text("secret-a cluster-a\n")
    tokens.chmod(0o600)
    result = CliRunner().invoke(app, ["--home", str(tmp_path), "run", "--tokens", str(tokens)])
    assert result.exit_code == 2
    assert "bearer tokens need TLS" in result.output and "Traceback" not in result.output
    message = " ".join(result.output.split())
    assert "client-go" in message and "--allow-plain-http-tokens" in message
