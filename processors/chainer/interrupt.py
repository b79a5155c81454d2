"""A stop request that ended a wait on Kafka (shared by recovery and the transaction guard)."""

from __future__ import annotations

__all__ = ["Interrupted"]


class Interrupted(Exception):  # noqa: N818 - control flow, not an error
    """Stop was requested while the chainer waited on Kafka.

    Raised by :mod:`.recovery` (waiting for committed offsets or a fresh reader) and by
    :mod:`.transactions` (a transactional call still running ``STOP_GRACE_S`` after the stop
    request). ``Chainer.run`` catches it and exits without draining: nothing is left to drain,
    and whatever the call did is settled by the next start's recovery, as after a crash.
    """
