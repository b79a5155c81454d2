"""Chains, keys and checkpoints the verifier's unit tests build on."""

from __future__ import annotations

from processors.integrity.checkpoint import Checkpoint, KeyRing, origin_for, sign_checkpoint
from processors.integrity.merkle import CompactRange
from processors.integrity.note import Signer, generate_key
from processors.integrity.record import ChainedRecord, ChainHead, link
from processors.verifier.core import (
    ChainResult,
    RecordFields,
    RecordItem,
    SourceCheckpoint,
    ValueBatch,
)
from processors.verifier.replay import verify_chain_fields, verify_chain_values
from schemas.chained import record_value
from sealtrail.infra.errors import SealtrailError

CHAIN = "audit.events/0"
DEPLOY = "sealtrail.test"
ORIGIN = origin_for(DEPLOY, CHAIN)


def signer(name: str = "chainer") -> Signer:
    return Signer.from_private_key(generate_key(name)[0])


SIGNER = signer()


def ring(*signers: Signer, lo: int = 0, hi: int | None = None) -> KeyRing:
    r = KeyRing()
    for s in signers or (SIGNER,):
        r.add(s.verifier, lo, hi)
    return r


def build(n: int, tag: bytes = b"e") -> list[ChainedRecord]:
    head = ChainHead(CHAIN)
    return [link(head, 100 + i, 1_700_000_000_000_000 + i, tag + str(i).encode()) for i in range(n)]


def checkpoint(records: list[ChainedRecord], size: int, by: Signer = SIGNER) -> str:
    cr = CompactRange()
    for r in records[:size]:
        cr.append(r.hash)
    head = records[size - 1].hash if size else bytes(32)
    return sign_checkpoint(Checkpoint(ORIGIN, size, cr.root(), head, 1_700_000_000_000_000), by)


def fields(r: ChainedRecord) -> RecordFields:
    return (r.chain, r.seq, r.prev_hash, r.hash, r.source_offset, r.ingested_at_us, r.payload)


def item(offset: int, r: ChainedRecord) -> RecordItem:
    return offset, fields(r)


def src(records: list[ChainedRecord], start: int = 0) -> list[RecordItem]:
    return [item(start + i, r) for i, r in enumerate(records)]


def cps(*notes: str, source: str = "topic") -> list[SourceCheckpoint]:
    return [SourceCheckpoint(n, i, source) for i, n in enumerate(notes)]


def value_batches(records: list[RecordItem], size: int = 3) -> list[ValueBatch] | None:
    """``records`` as raw chain topic values in batches of ``size`` (what a Kafka reader gets);
    None when one of them has no value form (an error item, a field Avro cannot hold)."""
    offsets: list[int] = []
    values: list[bytes | None] = []
    for offset, fields in records:
        if not isinstance(fields, tuple) or offset is None:
            return None
        try:
            values.append(record_value(ChainedRecord(*fields)))
        except SealtrailError:
            return None
        offsets.append(offset)
    return [(offsets[i : i + size], values[i : i + size]) for i in range(0, len(values), size)]


def outcome(result: ChainResult) -> tuple[object, ...]:
    """What two runs over the same chain must agree on."""
    return (
        [(f.kind, f.chain, f.seq, f.offset, str(f)) for f in result.findings],
        result.records_verified,
        result.size,
        result.root,
        result.anchored,
        result.checkpoints_verified,
        result.state,
        result.probe_root,
        result.warnings,
    )


def run(records: list[RecordItem], notes: list[SourceCheckpoint], **kw: object) -> ChainResult:
    """verify_chain_fields; where the records have a value form, also verify_chain_values over
    them in batches of 1, 3 and 7, which must find exactly the same."""
    keyring = kw.pop("keyring", None) or ring()
    result = verify_chain_fields(CHAIN, records, notes, keyring, origin=ORIGIN, **kw)  # type: ignore[arg-type]
    for size in (1, 3, 7):
        batches = value_batches(records, size)
        if batches is None:
            break
        fast = verify_chain_values(CHAIN, batches, notes, keyring, origin=ORIGIN, **kw)  # type: ignore[arg-type]
        assert outcome(fast) == outcome(result), f"batches of {size}"
    return result


def kinds(result: ChainResult) -> set[str]:
    return {f.kind for f in result.findings}
