"""producers.webhook pieces that need no network: token files, TLS refused or required at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from producers.webhook import load_tokens
from sealtrail.infra.config import Settings
from sealtrail.infra.errors import ConfigError


def test_token_file_maps_tokens_to_clusters(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# comment\n\nsecret-a cluster-a\nsecret-b   cluster-b\nsolo\n")
    path.chmod(0o600)
    assert load_tokens(path, "default") == [
        (b"secret-a", "cluster-a"),
        (b"secret-b", "cluster-b"),
        (b"solo", "default"),
    ]
    with pytest.raises(ConfigError, match="needs --cluster") as info:
        load_tokens(path, None)
    assert "solo" not in str(info.value)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_token_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "tokens"
    path.write_text("secret-a cluster-a\n")
    path.chmod(mode)
    with pytest.raises(ConfigError, match="chmod 600") as info:
        load_tokens(path, None)
    assert "secret-a" not in str(info.value)


def test_empty_or_missing_token_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# nothing\n")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="holds no tokens"):
        load_tokens(path, None)
    with pytest.raises(ConfigError, match="cannot read"):
        load_tokens(tmp_path / "absent", None)


def test_tokens_without_tls_are_refused_at_start(tmp_path: Path) -> None:
    from producers.webhook import WebhookOptions, WebhookServer

    tokens = tmp_path / "tokens"
    tokens.write_text("secret-a cluster-a\n")
    tokens.chmod(0o600)
    with pytest.raises(ConfigError) as info:
        WebhookServer(Settings(home=tmp_path), WebhookOptions(tokens=tokens))
    message = str(info.value)
    assert "TLS" in message and "client-go" in message and "--allow-plain-http-tokens" in message
    assert "secret-a" not in message
    # allowed explicitly (a TLS-terminating proxy in front)
    WebhookServer(
        Settings(home=tmp_path), WebhookOptions(tokens=tokens, allow_plain_http_tokens=True)
    )


def test_missing_tls_files_are_refused_before_kafka_is_touched(tmp_path: Path) -> None:
    from producers.webhook import WebhookOptions, WebhookServer

    tokens = tmp_path / "tokens"
    tokens.write_text("secret-a cluster-a\n")
    tokens.chmod(0o600)
    options = WebhookOptions(
        tokens=tokens, tls_cert=tmp_path / "no.crt", tls_key=tmp_path / "no.key"
    )
    with pytest.raises(ConfigError, match="cannot load the webhook TLS files"):
        WebhookServer(Settings(home=tmp_path, kafka="127.0.0.1:1"), options)
