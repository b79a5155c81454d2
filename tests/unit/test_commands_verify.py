"""sealtrail.commands.verify: what the command parses itself (the key ring argument)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.verifier_support import SIGNER


def test_keyring_from_file_or_key_string(tmp_path: Path) -> None:
    from sealtrail.commands.key_options import load_keyring
    from sealtrail.infra.errors import KeyFileError

    pub = SIGNER.verifier.verifier_key()
    assert load_keyring(pub).verifiers() == [SIGNER.verifier]
    (tmp_path / "k.pub").write_text(pub + "\n")
    assert load_keyring(str(tmp_path / "k.pub")).verifiers() == [SIGNER.verifier]
    for bad in (None, str(tmp_path / "missing.pub"), "x+deadbeef+AAAA"):
        with pytest.raises(KeyFileError) as err:
            load_keyring(bad)
        assert "AAAA" not in str(err.value)
