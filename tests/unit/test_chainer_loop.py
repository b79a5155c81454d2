"""The Chainer refuses what it cannot run with before it touches Kafka."""

from __future__ import annotations

from pathlib import Path

import pytest

from processors.chainer import Chainer, ChainerOptions
from processors.integrity.errors import KeyFileError
from processors.integrity.keys import write_keypair
from sealtrail.infra.config import Settings


def test_world_readable_key_refused_before_any_connection(tmp_path: Path) -> None:
    private, _public = write_keypair("t", tmp_path)
    private.chmod(0o644)
    settings = Settings(kafka="127.0.0.1:1")
    with pytest.raises(KeyFileError) as info:
        Chainer(settings, ChainerOptions(signing_key=private))
    assert "chmod 600" in str(info.value)
    assert "PRIVATE" not in str(info.value)
