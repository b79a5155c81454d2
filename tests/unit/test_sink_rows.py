"""processors.sink.rows: the insert of a round and its deduplication token."""

from __future__ import annotations

from processors.sink.rows import MAX_JOINED_TOKEN, ChainBatch, ChainItem, events_insert


def _batch(chain: str, first: int, size: int) -> ChainBatch:
    items = [ChainItem(seq, None, b"", 0) for seq in range(first, first + size)]
    return ChainBatch(chain, 0, items, f"{chain}:{first}-{first + size - 1}", 0)


def test_one_chain_keeps_its_own_token() -> None:
    insert = events_insert([_batch("raw/0", 5, 3)])
    assert insert.token == "raw/0:5-7" and insert.rows == 3


def test_a_round_names_every_chain_range() -> None:
    insert = events_insert([_batch("raw/0", 0, 2), _batch("raw/1", 10, 4)])
    assert insert.token == "raw/0:0-1+raw/1:10-13"
    assert insert.rows == 6


def test_a_long_token_is_hashed_and_still_names_exactly_its_ranges() -> None:
    batches = [_batch(f"audit.events/{p}", 1_000_000, 2) for p in range(40)]
    token = events_insert(batches).token
    assert len("+".join(b.token for b in batches)) > MAX_JOINED_TOKEN
    assert token.startswith("sha256:") and len(token) == len("sha256:") + 64
    assert events_insert(batches).token == token  # a retry carries the same token
    assert events_insert(batches[:-1]).token != token
    shifted = [*batches[:-1], _batch("audit.events/39", 1_000_001, 2)]
    assert events_insert(shifted).token != token
