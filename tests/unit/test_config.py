"""sealtrail.infra.config: settings helpers that need no network, and the per-component Kafka client
files of ``sealtrail run``."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sealtrail.cli import app
from sealtrail.infra.config import component_kafka_config, parse_listen
from sealtrail.infra.errors import ConfigError


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:9880") == ("127.0.0.1", 9880)
    assert parse_listen(":9880") == ("0.0.0.0", 9880)
    assert parse_listen("[::1]:443") == ("::1", 443)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_listen("localhost")
    with pytest.raises(ConfigError, match="--health-listen"):
        parse_listen("127.0.0.1:99999", "--health-listen")


def test_own_file_then_directory_then_the_global_file(tmp_path: Path) -> None:
    (tmp_path / "chainer.properties").write_text("security.protocol=SASL_SSL\n")
    own = tmp_path / "own.properties"
    own.write_text("security.protocol=SASL_SSL\n")
    fallback = tmp_path / "global.properties"
    assert component_kafka_config("chainer", own, tmp_path, fallback) == own
    assert component_kafka_config("chainer", None, tmp_path, fallback) == (
        tmp_path / "chainer.properties"
    )
    assert component_kafka_config("chainer", None, None, fallback) == fallback
    with pytest.raises(ConfigError, match="sink Kafka client file .* does not exist"):
        component_kafka_config("sink", None, tmp_path, fallback)


def test_run_refuses_a_missing_component_file_in_one_sentence(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["run", "--kafka-config-dir", str(tmp_path), "--insecure-no-auth", "--cluster", "c"],
    )
    assert result.exit_code == 2
    assert "the producer Kafka client file" in result.output
    assert "Traceback" not in result.output
