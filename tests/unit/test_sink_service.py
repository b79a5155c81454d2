"""processors.sink.service and options: pieces of the sink that need no broker."""

from __future__ import annotations

import pytest

from processors.integrity.checkpoint import Checkpoint
from processors.integrity.errors import MalformedCheckpoint
from processors.integrity.merkle import EMPTY_ROOT
from processors.integrity.record import ZERO_HASH
from processors.sink import SinkOptions, parse_checkpoint
from sealtrail.errors import ConfigError


def test_parse_checkpoint_note() -> None:
    cp = Checkpoint("d/audit.events/0", 0, EMPTY_ROOT, ZERO_HASH, 7)
    parsed, names = parse_checkpoint(cp.body() + "\n\u2014 k1 AAAA\n\u2014 k2 BBBB\n")
    assert parsed == cp and names == ["k1", "k2"]
    with pytest.raises(MalformedCheckpoint):
        parse_checkpoint("just text")


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="--batch-rows"):
        SinkOptions(batch_rows=0)
