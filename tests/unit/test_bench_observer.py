"""The bench observer's marker search (bench/observer.py): found among look-alikes, else None."""

from __future__ import annotations

import json

from bench.observer import MARK, find_mark, mark_name


def test_finds_the_marker_after_bytes_that_start_like_it() -> None:
    event = json.dumps({"auditID": mark_name(42), "note": "~ ~b ~bench"}).encode()
    value = b"\x00~\x7e~bench-mark\x01" + event  # binary noise holding the marker's first byte
    assert find_mark(value) == "~bench-mark~00000042"


def test_no_marker_and_a_cut_off_marker_are_none() -> None:
    assert find_mark(json.dumps({"auditID": "0b3c", "path": "~/x"}).encode()) is None
    assert find_mark(b"{}") is None
    assert find_mark(b'{"auditID":"' + MARK + b"0042") is None  # fewer digits than a marker has


def test_mark_names_are_fixed_width() -> None:
    assert mark_name(0) == "~bench-mark~00000000"
    assert len({len(mark_name(n)) for n in (0, 7, 12_345_678)}) == 1
