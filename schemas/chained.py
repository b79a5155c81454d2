"""ChainedRecord <-> chain-topic value: the one mapping between the integrity core's record and
its Avro ``ChainedEvent`` encoding (schemas/chained_event.avsc, docs/FORMAT.md section 1).

The chainer encodes with :func:`record_value`; the sink, the verifier and the chainer's recovery
decode with :func:`value_record`. Decoding checks the Avro only: whether the fields make a valid
record (32-byte hashes, links) is the integrity core's verdict, and what a store can hold is the
store's.
"""

from __future__ import annotations

from processors.integrity.record import ChainedRecord
from schemas.codec import decode_chained_fields, encode_chained

__all__ = ["record_value", "value_record"]


def record_value(record: ChainedRecord) -> bytes:
    """The chain-topic value of ``record`` (single-object encoded ChainedEvent)."""
    return encode_chained(
        {
            "chain": record.chain,
            "seq": record.seq,
            "prev_hash": record.prev_hash,
            "hash": record.hash,
            "source_offset": record.source_offset,
            "ingested_at": record.ingested_at_us,
            "payload": record.payload,
        }
    )


def value_record(value: bytes) -> ChainedRecord:
    """The record a chain-topic value holds (``DecodeError`` / ``UnknownFingerprint`` if the
    value is not a ChainedEvent). The verifier's replay reads the same fields as a plain tuple
    (:func:`schemas.codec.decode_chained_fields`, no object per record); this is that tuple as a
    record."""
    return ChainedRecord(*decode_chained_fields(value))
