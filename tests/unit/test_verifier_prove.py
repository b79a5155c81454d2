"""processors.verifier.prove: which proof `sealtrail prove` builds (what needs no broker)."""

from __future__ import annotations

from pathlib import Path

import pytest

from processors.verifier.prove import chain_partition, make_proof
from sealtrail.infra.config import Settings
from sealtrail.infra.errors import ConfigError
from tests.unit.verifier_support import ring


def test_chain_partition_takes_the_topic_prefix_into_account(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, topic_prefix="prod-")
    assert chain_partition(settings, "prod-audit.events/3") == 3
    with pytest.raises(ConfigError, match="SEALTRAIL_TOPIC_PREFIX"):
        chain_partition(settings, "audit.events/3")


def test_a_chain_of_no_raw_partition_is_refused_before_any_read(tmp_path: Path) -> None:
    settings = Settings(kafka="127.0.0.1:1", home=tmp_path)
    warnings: list[str] = []
    with pytest.raises(ConfigError, match="is not 'audit.events/<partition>'"):
        make_proof(settings, ring(), "audit.events/x", None, (None, None), False, warnings.append)
    assert warnings == []
