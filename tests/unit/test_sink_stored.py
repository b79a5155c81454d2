"""processors.sink.stored: which seqs ClickHouse already holds."""

from __future__ import annotations

from processors.sink.stored import StoredSeqs


def test_stored_tracks_holes() -> None:
    stored = StoredSeqs(contiguous=3, extra={5, 7})
    assert [stored.has(s) for s in range(9)] == [1, 1, 1, 0, 0, 1, 0, 1, 0]
    stored.add([3, 4])
    assert stored.contiguous == 6 and stored.extra == {7}
    stored.add([6])
    assert stored.contiguous == 8 and not stored.extra


def test_none_from_is_has_for_every_later_seq() -> None:
    for stored in (StoredSeqs(), StoredSeqs(contiguous=3), StoredSeqs(contiguous=3, extra={5, 7})):
        for seq in range(10):
            assert stored.none_from(seq) == (not any(stored.has(s) for s in range(seq, 12)))


def test_add_run_equals_adding_each_seq() -> None:
    for contiguous, extra, first, count in [
        (0, set(), 0, 4),  # the usual case
        (3, set(), 5, 2),  # a run after a hole
        (3, {5, 7}, 3, 2),  # filling a hole
        (3, {5, 7}, 6, 3),  # over a stored seq
    ]:
        run, each = StoredSeqs(contiguous, set(extra)), StoredSeqs(contiguous, set(extra))
        run.add_run(first, count)
        each.add(range(first, first + count))
        assert (run.contiguous, run.extra) == (each.contiguous, each.extra)
