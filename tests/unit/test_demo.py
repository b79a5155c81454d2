"""sealtrail.demo: what it tells a user to type next matches what it ran."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from sealtrail.demo import Demo
from sealtrail.infra import config


def test_the_closing_hint_runs_the_pipeline_on_the_demos_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(config.ENV_HOME, str(tmp_path))
    monkeypatch.setenv(config.ENV_KAFKA, "127.0.0.1:29092")
    args = argparse.Namespace(stop=False, webhook_port=28443, quick=True, port=29092, load=1)
    Demo(args).finish()
    out = capsys.readouterr().out
    assert "export SEALTRAIL_KAFKA=127.0.0.1:29092" in out
    assert "--listen 127.0.0.1:28443 --health-listen 127.0.0.1:28444" in out
