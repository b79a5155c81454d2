"""sealtrail produce (sealtrail.commands.produce): options checked before Kafka is asked."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_produce_webhook_refuses_tokens_without_tls_before_kafka_is_touched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    import sealtrail.commands.produce as produce
    from sealtrail.cli import app

    def no_kafka(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("Kafka was asked before the options were checked")

    monkeypatch.setattr(produce, "check_login", no_kafka)
    tokens = tmp_path / "tokens"
    tokens.write_text("secret-a cluster-a\n")
    tokens.chmod(0o600)
    for args, env in (
        (["--tokens", str(tokens)], {}),
        ([], {"SEALTRAIL_WEBHOOK_TOKENS": str(tokens)}),
    ):
        result = CliRunner().invoke(
            app, ["--home", str(tmp_path), "produce", "webhook", *args], env=env
        )
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output and "secret-a" not in result.output
        # One sentence: TLS, client-go's behaviour, and the explicit override.
        message = " ".join(result.output.split())
        assert "bearer tokens need TLS" in message and "client-go" in message
        assert "--allow-plain-http-tokens" in message
