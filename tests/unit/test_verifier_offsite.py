"""processors.verifier.offsite: the offsite checkpoint files."""

from __future__ import annotations

from pathlib import Path

import pytest

from processors.verifier import offsite
from sealtrail.infra.errors import ConfigError
from tests.unit.verifier_support import CHAIN, build, checkpoint


def test_offsite_files_round_trip(tmp_path: Path) -> None:
    recs = build(5)
    notes = [checkpoint(recs, 2), checkpoint(recs, 5)]
    assert offsite.append_notes(tmp_path, CHAIN, notes) == 2
    assert offsite.append_notes(tmp_path, CHAIN, notes) == 0
    assert offsite.read_notes(tmp_path, CHAIN) == notes
    assert offsite.chains_in(tmp_path) == [CHAIN]
    # the chainer's --export-checkpoints writes the same format without re-reading the file
    offsite.write_notes(tmp_path, "audit.events/1", notes)
    assert offsite.read_notes(tmp_path, "audit.events/1") == notes
    (tmp_path / offsite.chain_file(tmp_path, CHAIN).name).write_text("junk\n")
    with pytest.raises(ConfigError):
        offsite.read_notes(tmp_path, CHAIN)
