"""schemas.chained: the one ChainedRecord <-> chain-topic value mapping."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processors.integrity.record import ChainedRecord
from schemas.chained import record_value, value_record
from schemas.codec import decode_chained, encode_audit_event
from sealtrail.infra.errors import SealtrailError

records = st.builds(
    ChainedRecord,
    chain=st.text(max_size=30),
    seq=st.integers(0, (1 << 63) - 1),
    prev_hash=st.binary(min_size=32, max_size=32),
    hash=st.binary(min_size=32, max_size=32),
    source_offset=st.integers(0, (1 << 63) - 1),
    ingested_at_us=st.integers(-(1 << 63), (1 << 63) - 1),
    payload=st.binary(max_size=200),
)


@given(records)
def test_value_record_inverts_record_value(record: ChainedRecord) -> None:
    value = record_value(record)
    assert value_record(value) == record
    assert decode_chained(value)["ingested_at"] == record.ingested_at_us


def test_a_value_that_is_not_a_chained_event_is_refused() -> None:
    with pytest.raises(SealtrailError):
        value_record(b"not avro")
    with pytest.raises(SealtrailError, match="not a dev.sealtrail.ChainedEvent"):
        value_record(
            encode_audit_event({"cluster": "c", "source": "s", "received_at": 0, "original": b""})
        )
