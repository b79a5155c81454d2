"""sealtrail.commands.sink: history's kind -> resource mapping."""

from __future__ import annotations

from pathlib import Path

import pytest

from sealtrail.commands.sink import resource_of
from sealtrail.infra.errors import ConfigError


def test_kinds_map_to_resources() -> None:
    assert resource_of("deployment") == "deployments"
    assert resource_of("Deploy") == "deployments"
    assert resource_of("deployments.apps") == "deployments"
    assert resource_of("ingress") == "ingresses"
    assert resource_of("networkpolicy") == "networkpolicies"
    assert resource_of("widget") == "widgets"
    with pytest.raises(ConfigError, match="not a Kubernetes kind"):
        resource_of("a b")


def test_query_refuses_a_write_before_opening_any_store(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sealtrail.cli import app

    result = CliRunner().invoke(
        app, ["--home", str(tmp_path), "query", "ALTER TABLE sealtrail.events DELETE WHERE 1"]
    )
    assert result.exit_code == 2
    assert "refused" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "clickhouse").exists()
