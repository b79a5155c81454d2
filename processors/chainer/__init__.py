"""The chaining processor: raw partition p -> hash chain ``<raw>/p`` in chain partition p.

Exactly once, with Kafka transactions (the consume-transform-produce loop of
confluent-kafka-python's ``examples/eos_transactions.py``): each batch of raw records is
linked, produced to the chain topic together with any due signed checkpoints, and the raw
offsets are sent to the same transaction. A batch is either fully visible (chain records,
checkpoints and offsets) or not at all, so the chain tail always agrees with the committed
offsets, and every (re)start recovers the chain heads from Kafka alone.

Payloads are never decoded: whatever bytes the raw topic holds get chained. See
docs/CHAINER.md for the design, the error policy and operations.

Modules: :mod:`.loop` (the loop, :class:`Chainer`), :mod:`.recovery` (chain state read back
from Kafka), :mod:`.transactions` (the transaction guard and error policy),
:mod:`.checkpoints` (when a checkpoint is due, signing, offsite copies), :mod:`.state` (a
chain's in-memory state), :mod:`.options` (options and stats), :mod:`.metrics` (Prometheus
metrics), :mod:`.names` (group, transactional and chain ids), :mod:`.linker` (linking and encoding a
run of records in one loop) and :mod:`.interrupt`.
"""

from processors.chainer.checkpoints import RANGE_HEADER
from processors.chainer.loop import Chainer
from processors.chainer.names import chain_id, group_id, transactional_id
from processors.chainer.options import (
    ENV_INSTANCE_ID,
    ENV_SIGNING_KEY,
    ChainerOptions,
    ChainerStats,
    options_from_env,
)
from processors.chainer.recovery import ChainDivergence

__all__ = [
    "ENV_INSTANCE_ID",
    "ENV_SIGNING_KEY",
    "RANGE_HEADER",
    "ChainDivergence",
    "Chainer",
    "ChainerOptions",
    "ChainerStats",
    "chain_id",
    "group_id",
    "options_from_env",
    "transactional_id",
]
