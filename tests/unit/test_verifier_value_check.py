"""processors.verifier.value_check: the fused fast path over raw values finds exactly what the
general path (decode every value, then check it) finds, on clean and on mutated chains."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.verifier.core import value_item
from processors.verifier.replay import verify_chain_fields, verify_chain_values
from processors.verifier.value_check import ChainValueCheck
from schemas.chained import record_value
from tests.unit.verifier_support import CHAIN, ORIGIN, build, checkpoint, cps, outcome, ring

RECORDS = build(12)
VALUES = [record_value(r) for r in RECORDS]
NOTES = cps(checkpoint(RECORDS, 5), checkpoint(RECORDS, 12))


def both(values: list[bytes | None], batch: int) -> None:
    offsets = list(range(len(values)))
    items = [value_item(o, v) for o, v in zip(offsets, values, strict=True)]
    general = verify_chain_fields(CHAIN, items, NOTES, ring(), origin=ORIGIN)
    cuts = range(0, len(values), batch)
    batches = [(offsets[i : i + batch], values[i : i + batch]) for i in cuts]
    fast = verify_chain_values(CHAIN, batches, NOTES, ring(), origin=ORIGIN)
    assert outcome(fast) == outcome(general)


def test_clean_values_all_pass_the_fast_check() -> None:
    hashes: list[bytes] = []
    stop = ChainValueCheck(CHAIN).run(list(VALUES), 0, len(VALUES), 0, bytes(32), hashes)
    assert stop == len(VALUES) and hashes == [r.hash for r in RECORDS]
    both(list(VALUES), 4)


def test_the_fast_check_stops_at_the_first_record_it_does_not_pass() -> None:
    values: list[bytes | None] = list(VALUES)
    values[7] = values[7][:-1] + bytes([values[7][-1] ^ 1])  # payload byte flipped
    hashes: list[bytes] = []
    assert ChainValueCheck(CHAIN).run(values, 0, len(values), 0, bytes(32), hashes) == 7
    assert len(hashes) == 7
    # Another chain's values never pass for this chain, nor does a missing value.
    assert ChainValueCheck("audit.events/1").run(list(VALUES), 0, 3, 0, bytes(32), []) == 0
    assert ChainValueCheck(CHAIN).run([None], 0, 1, 0, bytes(32), []) == 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.integers(0, len(VALUES) - 1),
            st.sampled_from(["flip", "cut", "insert", "drop", "none", "swap", "repeat"]),
            st.integers(0, 10_000),
            st.integers(0, 255),
        ),
        max_size=3,
    ),
    st.integers(1, 8),
)
def test_mutated_chains_get_the_same_findings_on_both_paths(
    mutations: list[tuple[int, str, int, int]], batch: int
) -> None:
    values: list[bytes | None] = list(VALUES)
    for index, how, at, byte in mutations:
        if index >= len(values):
            continue
        value = values[index]
        if how == "none":
            values[index] = None
        elif how == "drop":
            del values[index]
        elif how == "swap" and index + 1 < len(values):
            values[index], values[index + 1] = values[index + 1], values[index]
        elif how == "repeat":
            values.insert(index, value)
        elif value:
            at %= len(value)
            if how == "flip":
                values[index] = value[:at] + bytes([value[at] ^ (byte or 1)]) + value[at + 1 :]
            elif how == "cut":
                values[index] = value[:at]
            else:
                values[index] = value[:at] + bytes([byte]) + value[at:]
    both(values, batch)
