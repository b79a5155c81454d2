"""Which proof ``sealtrail prove`` builds, and from what: from ClickHouse's stored subtrees in
O(log n) reads when the store can give it (checked against the signed roots), else from every
record of the chain in Kafka. The proof formats and their checks are :mod:`processors.proofs`;
the command parses options and writes the proof."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from processors.integrity.chains import partition_of
from processors.integrity.checkpoint import Checkpoint, KeyRing, open_checkpoint, origin_for
from processors.integrity.errors import IntegrityError, Truncated
from processors.integrity.record import ChainedRecord
from processors.proofs import LeafHashes, make_consistency, make_inclusion
from processors.verified_read import signed_checkpoints, stored_consistency, stored_inclusion
from processors.verifier import kafka_source
from processors.verifier.core import RecordItem
from processors.verifier.kafka_source import read_checkpoint_notes
from sealtrail.infra.config import Settings
from sealtrail.infra.errors import ConfigError, SealtrailError
from sealtrail.infra.reader import open_reader

__all__ = ["chain_partition", "kafka_checkpoints", "kafka_leaves", "make_proof"]


def make_proof(
    settings: Settings,
    ring: KeyRing,
    chain: str,
    seq: int | None,
    sizes: tuple[int | None, int | None],
    consistency: bool,
    warn: Callable[[str], None],
) -> dict[str, Any]:
    """An inclusion proof of record ``seq`` in the newest signed checkpoint covering it or, with
    ``consistency``, a proof that checkpoint ``sizes[1]`` extends checkpoint ``sizes[0]``.
    ``ConfigError`` (one sentence) when the options or the signed checkpoints do not allow it;
    ``warn`` hears why a proof from the store was given up for Kafka."""
    stored = _proof_from_store(settings, chain, ring, seq, sizes, consistency, warn)
    if stored is not None:
        return stored
    cps = kafka_checkpoints(settings, chain, ring)
    from_size, to_size = sizes
    if consistency:
        if from_size is None or to_size is None or from_size > to_size:
            raise ConfigError("--consistency needs --from SIZE1 --to SIZE2 with SIZE1 <= SIZE2")
        by_size = {cp.size: (note, cp) for note, cp in cps}
        missing = [s for s in (from_size, to_size) if s not in by_size]
        if missing:
            raise ConfigError(
                f"chain {chain} has no validly signed checkpoint of size {missing[0]}; "
                f"available: {', '.join(str(s) for s in sorted(by_size)) or 'none'}"
            )
        leaves = kafka_leaves(settings, chain, to_size)
        return make_consistency(chain, by_size[from_size], by_size[to_size], leaves)
    if seq is None or seq < 0:
        raise ConfigError("pass --seq N (the record to prove) or --consistency")
    later = [(n, cp) for n, cp in cps if cp.size > seq]
    if not later:
        raise ConfigError(
            f"no signed checkpoint of chain {chain} covers seq {seq} yet; wait for the next "
            "checkpoint and try again"
        )
    note, cp = later[-1]
    leaves = kafka_leaves(settings, chain, cp.size, (seq,))
    return make_inclusion(chain, seq, note, cp, leaves)


def chain_partition(settings: Settings, chain: str) -> int:
    """The raw-topic partition ``chain`` names; ``ConfigError`` if it names none."""
    partition = partition_of(chain, settings.topics.raw)
    if partition is None:
        raise ConfigError(
            f"chain {chain!r} is not '{settings.topics.raw}/<partition>'; check --chain and "
            "SEALTRAIL_TOPIC_PREFIX"
        )
    return partition


def kafka_checkpoints(
    settings: Settings, chain: str, ring: KeyRing
) -> list[tuple[str, Checkpoint]]:
    """Validly signed checkpoints of ``chain`` from the topic, sorted by size."""
    partition = chain_partition(settings, chain)
    out: dict[int, tuple[str, Checkpoint]] = {}
    for item in read_checkpoint_notes(settings, partition, chain):
        try:
            cp = open_checkpoint(item.note, ring, origin=origin_for(settings.deployment, chain))
        except IntegrityError:
            continue  # 'sealtrail verify' reports bad checkpoints; a proof needs a good one
        out.setdefault(cp.size, (item.note, cp))
    return [out[k] for k in sorted(out)]


def kafka_leaves(
    settings: Settings, chain: str, size: int, keep: tuple[int, ...] = ()
) -> LeafHashes:
    """The leaf hashes of ``chain``'s first ``size`` records, read from Kafka.

    The checkpoints were read first; a chain that ends short of one while a transaction is open
    on its partition is read again once its end moves (its commit marker may lag the
    checkpoint's, see :func:`~processors.verifier.kafka_source.chain_end_moved`)."""
    partition = chain_partition(settings, chain)
    deadline = time.monotonic() + kafka_source.MARKER_PATIENCE_S
    while True:
        _low, high, items = kafka_source.iter_records(settings, partition)
        try:
            return LeafHashes.from_records(chain, _records(items), size, keep)
        except Truncated:
            if not kafka_source.chain_end_moved(settings, partition, high, deadline):
                raise


def _records(items: Iterator[RecordItem]) -> Iterator[ChainedRecord]:
    for _offset, fields in items:
        if not isinstance(fields, tuple):
            raise fields  # a record that is not one: the proof cannot be built
        yield ChainedRecord(*fields)


def _proof_from_store(
    settings: Settings,
    chain: str,
    ring: KeyRing,
    seq: int | None,
    sizes: tuple[int | None, int | None],
    consistency: bool,
    warn: Callable[[str], None],
) -> dict[str, Any] | None:
    """The proof built from ClickHouse's stored subtrees in O(log n) reads (through the sink's
    live-read socket while it runs), checked against the signed roots; None when the store
    cannot give it (then the chain is read from Kafka, as before)."""
    incomplete = None in sizes if consistency else seq is None or seq < 0
    if incomplete:
        return None  # the Kafka path explains what is missing
    try:
        reader = open_reader(settings, wait_s=5.0)
    except SealtrailError:
        return None
    db = settings.clickhouse_database
    try:
        cps = signed_checkpoints(reader, db, settings.deployment, chain, ring)
        if consistency:
            by_size = {cp.size: (note, cp) for note, cp in cps}
            if sizes[0] not in by_size or sizes[1] not in by_size:
                return None
            return stored_consistency(reader, db, chain, by_size[sizes[0]], by_size[sizes[1]])
        assert seq is not None
        covering = [(note, cp) for note, cp in cps if cp.size > seq]
        if not covering:
            return None
        note, cp = covering[0]
        return stored_inclusion(reader, db, chain, seq, note, cp)
    except (IntegrityError, LookupError) as exc:
        warn(f"the proof from ClickHouse does not check ({exc}); reading the chain from Kafka")
        return None
    except SealtrailError:
        return None
    finally:
        reader.close()
