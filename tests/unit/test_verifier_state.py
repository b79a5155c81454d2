"""processors.verifier.state: the state file an incremental run starts from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from processors.verifier.state import (
    ClickHouseState,
    load_clickhouse_state,
    load_state,
    save_state,
)
from sealtrail.infra.errors import ConfigError
from tests.unit.verifier_support import CHAIN, DEPLOY, build, checkpoint, cps, run, src


def test_state_round_trip_and_bad_file(tmp_path: Path) -> None:
    recs = build(7)
    st = run(src(recs), cps(checkpoint(recs, 7))).state
    assert st is not None
    path = tmp_path / "state.json"
    save_state(path, DEPLOY, {CHAIN: st})
    assert load_state(path, DEPLOY) == {CHAIN: st}
    with pytest.raises(ConfigError):
        load_state(path, "other")
    path.write_text("{not json")
    with pytest.raises(ConfigError):
        load_state(path, DEPLOY)


def test_state_remembers_clickhouse_parts(tmp_path: Path) -> None:
    recs = build(7)
    st = run(src(recs), cps(checkpoint(recs, 7))).state
    assert st is not None
    path = tmp_path / "state.json"
    assert load_clickhouse_state(path) is None  # a first run
    save_state(path, DEPLOY, {CHAIN: st})
    assert load_clickhouse_state(path) is None  # none saved: the next check is a full one
    ch = ClickHouseState("8a1c", {"201810_1_1_0": (7, "63d0")}, {CHAIN: 7}, {CHAIN: st.compact})
    save_state(path, DEPLOY, {CHAIN: st}, ch)
    assert load_state(path, DEPLOY) == {CHAIN: st}
    assert load_clickhouse_state(path) == ch
    doc = json.loads(path.read_text())
    doc["clickhouse"]["parts"] = {"x": "not a pair"}
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="clickhouse section"):
        load_clickhouse_state(path)
