"""Chainer options: validation and the CLI's env fallbacks."""

from __future__ import annotations

from pathlib import Path

import pytest

from processors.chainer import ChainerOptions, options_from_env
from sealtrail.infra.errors import ConfigError


def test_options_validation() -> None:
    assert ChainerOptions().validated().instance_id  # hostname by default
    assert ChainerOptions(instance_id="a").validated().instance_id == "a"
    for bad in (
        ChainerOptions(batch_records=0),
        ChainerOptions(batch_ms=0),
        ChainerOptions(checkpoint_records=0),
        ChainerOptions(checkpoint_seconds=0),
        ChainerOptions(instance_id="a b"),
    ):
        with pytest.raises(ConfigError):
            bad.validated()


def test_options_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SEALTRAIL_SIGNING_KEY", str(tmp_path / "k.key"))
    monkeypatch.setenv("SEALTRAIL_INSTANCE_ID", "from-env")
    options = options_from_env(once=True)
    assert options.signing_key == tmp_path / "k.key"
    assert options.instance_id == "from-env"
    assert options_from_env(instance_id="given").instance_id == "given"
