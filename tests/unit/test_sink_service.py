"""processors.sink.service and options: pieces of the sink that need no broker (checkpoint
notes are parsed by processors.integrity.checkpoint: tests/unit/test_integrity_checkpoint.py)."""

from __future__ import annotations

import pytest

from processors.sink import SinkOptions
from sealtrail.infra.errors import ConfigError


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="--batch-rows"):
        SinkOptions(batch_rows=0)
