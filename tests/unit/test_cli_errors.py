"""Bad set-up gets one clear sentence and a non-zero exit, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sealtrail.cli import app
from sealtrail.infra import clickhouse
from sealtrail.infra.config import Settings, read_properties
from sealtrail.infra.errors import ClickHouseError, ConfigError

runner = CliRunner()


def test_missing_java_and_maven(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    result = runner.invoke(app, ["--home", str(tmp_path / "h"), "stack", "up", "--port", "29999"])
    assert result.exit_code == 2
    assert "'mvn' is not on PATH" in result.output
    assert "Traceback" not in result.output


def test_unwritable_data_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = runner.invoke(app, ["--home", str(blocker / "sub"), "stack", "up"])
    assert result.exit_code == 2
    assert "is not writable" in result.output


def test_bad_dsn() -> None:
    with pytest.raises(ConfigError, match="is not understood"):
        clickhouse.connect(Settings(clickhouse="postgres://x"))


def test_dsn_password_is_redacted() -> None:
    assert clickhouse.redact("http://u:s3cret@h:8123/db") == "http://u:***@h:8123/db"
    with pytest.raises(ConfigError) as info:
        clickhouse.connect(Settings(clickhouse="ftp://u:s3cret@h"))
    assert "s3cret" not in str(info.value)


def test_bad_properties_file(tmp_path: Path) -> None:
    path = tmp_path / "client.properties"
    path.write_text("security.protocol=SSL\nthis line is wrong\n")
    with pytest.raises(ConfigError, match="client.properties:2"):
        read_properties(path)
    with pytest.raises(ConfigError, match="cannot read"):
        read_properties(tmp_path / "missing.properties")


def test_settings_from_env() -> None:
    settings = Settings.from_env(
        {"SEALTRAIL_KAFKA": "k:1", "SEALTRAIL_TOPIC_PREFIX": "p.", "SEALTRAIL_HOME": "/data"}
    )
    assert settings.kafka == "k:1"
    assert settings.topics.chain == "p.audit.chain"
    assert settings.clickhouse_dsn == "chdb:///data/clickhouse"


def test_embedded_store_held_by_other_process(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    store = tmp_path / "ch"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from sealtrail.infra import clickhouse; "
            f"clickhouse._connect_dsn('chdb://{store}'); "
            "print('ready', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        time.sleep(0.2)
        assert (clickhouse.holder_of(store) or "").startswith(f"process {holder.pid}")
        with pytest.raises(ClickHouseError, match=f"in use by process {holder.pid}"):
            clickhouse._connect_dsn(f"chdb://{store}")
    finally:
        holder.kill()
        holder.wait()


def test_python_m_sealtrail_runs_the_cli_only_as_the_main_module(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A spawned worker (verify --jobs) imports the parent's main module as __mp_main__: it
    must not run the CLI again."""
    import runpy

    import sealtrail.cli

    calls: list[str] = []
    monkeypatch.setattr(sealtrail.cli, "main", lambda: calls.append("main"))
    runpy.run_module("sealtrail.__main__", run_name="__mp_main__")
    assert calls == []
    runpy.run_module("sealtrail.__main__", run_name="__main__")
    assert calls == ["main"]
