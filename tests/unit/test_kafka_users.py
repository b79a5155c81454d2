"""Role client files: 0600, one SCRAM user each, passwords kept across runs."""

from __future__ import annotations

import stat
from pathlib import Path

from sealtrail.infra.acls import Role
from sealtrail.infra.config import read_properties
from sealtrail.kafka_users import role_clients


def test_client_files_are_private_and_keep_their_passwords(tmp_path: Path) -> None:
    ca = Path("/run/secrets/kafka_ca")
    first = role_clients(tmp_path / "clients", ca)
    assert [c.role for c in first] == list(Role)
    for client in first:
        assert stat.S_IMODE(client.path.stat().st_mode) == 0o600
        props = read_properties(client.path)
        assert props["security.protocol"] == "SASL_SSL"
        assert props["sasl.mechanism"] == "SCRAM-SHA-512"
        assert props["sasl.username"] == f"sealtrail-{client.role.value}"
        assert props["sasl.password"] == client.password and len(client.password) >= 24
        assert props["ssl.ca.location"] == str(ca)
    assert stat.S_IMODE((tmp_path / "clients").stat().st_mode) == 0o700
    assert len({c.password for c in first}) == len(first)

    mtimes = [c.path.stat().st_mtime_ns for c in first]
    again = role_clients(tmp_path / "clients", ca)
    assert [c.password for c in again] == [c.password for c in first]
    # Unchanged files are not rewritten (they may be read-only secret mounts).
    assert [c.path.stat().st_mtime_ns for c in again] == mtimes
