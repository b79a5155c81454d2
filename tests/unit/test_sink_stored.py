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
