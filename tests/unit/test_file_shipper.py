"""producers.file_shipper pieces that need no network: position files, first-line hashes."""

from __future__ import annotations

from pathlib import Path

import pytest

from producers.file_shipper import (
    Position,
    default_position_file,
    first_line_hash,
    load_position,
    save_position,
)
from sealtrail.infra.config import Settings
from sealtrail.infra.errors import ConfigError


def test_position_file_round_trip_and_errors(tmp_path: Path) -> None:
    pos = tmp_path / "d" / "p.pos"
    assert load_position(pos) is None
    save_position(pos, Position(12, 345, "ab"))
    assert load_position(pos) == Position(12, 345, "ab")
    assert not (tmp_path / "d" / "p.pos.tmp").exists()
    pos.write_text("{not json")
    with pytest.raises(ConfigError, match="remove it"):
        load_position(pos)


def test_default_position_file_is_under_home(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    path = default_position_file(settings, Path("/var/log/kube/audit.log"))
    assert path.parent == tmp_path / "home" / "shipper"
    assert path.name.startswith("var_log_kube_audit.log-") and path.suffix == ".pos"


def test_first_line_hash(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"partial")
    with path.open("rb") as handle:
        assert first_line_hash(handle) == ""
    path.write_bytes(b"one\ntwo\n")
    with path.open("rb") as handle:
        handle.seek(5)
        assert first_line_hash(handle) != "" and handle.tell() == 5
