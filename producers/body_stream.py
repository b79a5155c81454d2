"""Split a request body that arrives in chunks into its EventList items, with bounded memory.

The webhook reads bodies too large to hold whole (kube-apiserver's buffered backend sends up to
400 events of any size in one EventList) chunk by chunk and feeds them to a :class:`BodySplitter`.
It hands back each item of the top-level ``items`` array as its exact bytes as soon as the item is
complete, so the caller can encode and produce it before the rest of the body has arrived. Memory
holds at most one item, the envelope (``kind``, ``apiVersion``, ``metadata``) and one chunk.

An item larger than ``max_item_bytes`` is not kept: it is hashed while it streams past and comes
back as :class:`Oversize` (its first ``keep_bytes`` bytes, its size and its SHA-256), so the caller
can park it as a reject that proves which bytes it was.

The splitter only finds structure (strings, brackets, commas); whether an item is a valid audit
Event is decided by :func:`producers.k8s.parse_item`, exactly as for bodies parsed whole. It reads
bytes, never decoded text: UTF-8 multi-byte sequences contain no ASCII bytes, so a structural byte
is never part of a character.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from producers.k8s import (
    REJECT_KEEP_BYTES,
    BadRequestBody,
    Reject,
    RejectKind,
    eventlist_api_version,
    is_event_list,
    over_limit_reason,
    parse_item,
)

__all__ = [
    "BodySplitter",
    "End",
    "Item",
    "ItemsStart",
    "Outcome",
    "Oversize",
    "Piece",
    "StreamParser",
]

_STRUCT = re.compile(rb'[\[\]{}"]')
# The rest of a string after its opening quote, up to (not including) the closing quote; stops
# early at a backslash that ends the buffer (its escaped character has not arrived yet).
_STR_TAIL = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*', re.DOTALL)
_WS = re.compile(rb"[ \t\n\r]*")
_SCALAR_END = re.compile(rb"[ \t\n\r,\]}]")
_BOM = b"\xef\xbb\xbf"
# Consumed bytes are dropped from the buffer once this many have piled up (amortised cost).
_COMPACT_AT = 1 << 20


@dataclass(frozen=True, slots=True)
class Item:
    """One element of the ``items`` array, its exact bytes."""

    raw: bytes


@dataclass(frozen=True, slots=True)
class Oversize:
    """One element of ``items`` over the size limit: its first bytes, its size and SHA-256."""

    prefix: bytes
    size: int
    sha256: bytes


@dataclass(frozen=True, slots=True)
class ItemsStart:
    """The ``items`` array begins; ``members`` are the top-level members seen before it."""

    members: dict[str, Any]


@dataclass(frozen=True, slots=True)
class End:
    """The body is complete. ``members`` are the top-level members except a streamed ``items``
    array; ``whole`` is the top-level object's exact bytes when it had no such array (a single
    Event) and was within the size limit, else None (``whole_too_large`` tells which)."""

    members: dict[str, Any]
    streamed_items: bool
    whole: bytes | None
    whole_too_large: bool


Piece = Item | Oversize | ItemsStart | End


class _Value:
    """Resumable scan of one JSON value starting at ``start`` in the buffer."""

    __slots__ = ("depth", "in_string", "pos", "scalar", "start")

    def __init__(self, start: int) -> None:
        self.start = start
        self.pos = start
        self.depth = 0
        self.in_string = False
        self.scalar = False


class BodySplitter:
    """``feed(chunk)`` and finally ``close()``; each returns the pieces completed so far.

    Raises :class:`producers.k8s.BadRequestBody` where the body's structure is broken; everything
    returned before that stays valid (the caller decides what to do with the rest).
    """

    def __init__(self, max_item_bytes: int, keep_bytes: int) -> None:
        self.max_item_bytes = max_item_bytes
        self.keep_bytes = keep_bytes
        self._buf = bytearray()
        self._base = 0  # body offset of self._buf[0]
        self._pos = 0  # next index of self._buf to look at
        self._state = "start"
        self._key = ""
        self._first_member = True
        self._members: dict[str, Any] = {}
        self._streamed_items = False
        self._top_start = -1  # body offset of the top-level '{'
        self._top_end = -1
        self._value: _Value | None = None
        # An oversize item being skipped: its hash, kept prefix and size so far.
        self._skip: tuple[Any, bytearray, int] | None = None
        # The top-level object (without a streamed items array) is over the limit: not kept.
        self._top_oversize = False
        # A top-level member too large to decode (only possible once _top_oversize is set):
        # the one being scanned, and whether any was left out of _members.
        self._member_cap = max(max_item_bytes, 1 << 20)
        self._skipping_member = False
        self._member_skipped = False
        self._closed = False
        self.size = 0  # bytes fed so far

    # -- public --------------------------------------------------------------------------------
    def feed(self, chunk: bytes) -> list[Piece]:
        if self._closed:
            raise ValueError("feed() after close()")
        self.size += len(chunk)
        self._buf.extend(chunk)
        out: list[Piece] = []
        self._run(out, final=False)
        self._check_top_size()
        self._compact()
        return out

    def close(self) -> list[Piece]:
        self._closed = True
        out: list[Piece] = []
        self._run(out, final=True)
        if self._state != "done":
            if self._state == "start":
                raise BadRequestBody(
                    "Request body is empty; send an audit.k8s.io EventList or Event."
                )
            raise BadRequestBody(
                "Request body is not valid JSON (unexpected end of data); send audit.k8s.io events."
            )
        return out

    # -- scanning ------------------------------------------------------------------------------
    def _bad(self, what: str) -> BadRequestBody:
        return BadRequestBody(
            f"Request body is not valid JSON ({what} at byte {self._base + self._pos}); "
            "send audit.k8s.io events."
        )

    def _skip_ws(self) -> bool:
        """Move past whitespace; True if a non-whitespace byte is now at ``_pos``."""
        m = _WS.match(self._buf, self._pos)
        assert m is not None
        self._pos = m.end()
        return self._pos < len(self._buf)

    def _run(self, out: list[Piece], final: bool) -> None:
        buf = self._buf
        while True:
            state = self._state
            if state == "start":
                if (
                    len(buf) - self._pos < len(_BOM)
                    and not final
                    and _BOM.startswith(bytes(buf[self._pos :]))
                ):
                    return
                if buf.startswith(_BOM, self._pos) and self._base + self._pos == 0:
                    self._pos += len(_BOM)
                if not self._skip_ws():
                    return
                if buf[self._pos] != 0x7B:  # {
                    raise BadRequestBody(
                        "Request body is not a JSON object; send an audit.k8s.io EventList or "
                        "Event."
                    )
                self._top_start = self._base + self._pos
                self._pos += 1
                self._state = "top_key"
            elif state == "top_key":
                if not self._skip_ws():
                    return
                ch = buf[self._pos]
                if ch == 0x7D and self._first_member:  # }
                    self._pos += 1
                    self._top_end = self._base + self._pos
                    self._state = "trailer"
                    continue
                if ch != 0x22:  # "
                    raise self._bad("expected a property name")
                m = _STR_TAIL.match(buf, self._pos + 1)
                assert m is not None
                if m.end() >= len(buf) or buf[m.end()] != 0x22:
                    if final:
                        raise self._bad("unterminated string")
                    return  # the key has not arrived whole
                try:
                    self._key = json.loads(bytes(buf[self._pos : m.end() + 1]))
                except ValueError:
                    raise self._bad("invalid property name") from None
                self._pos = m.end() + 1
                self._first_member = False
                self._state = "top_colon"
            elif state == "top_colon":
                if not self._skip_ws():
                    return
                if buf[self._pos] != 0x3A:  # :
                    raise self._bad("expected ':'")
                self._pos += 1
                self._state = "top_value_start"
            elif state == "top_value_start":
                if not self._skip_ws():
                    return
                if self._key == "items" and buf[self._pos] == 0x5B:  # [
                    if self._streamed_items or "items" in self._members:
                        raise BadRequestBody(
                            "Request body has two items arrays; send one EventList per request."
                        )
                    if self._member_skipped:
                        raise BadRequestBody(
                            "EventList members before items are over the size limit; send the "
                            "webhook backend's EventList."
                        )
                    self._streamed_items = True
                    self._pos += 1
                    out.append(ItemsStart(dict(self._members)))
                    self._state = "items_first"
                    continue
                self._value = _Value(self._pos)
                self._state = "top_value"
            elif state == "top_value":
                assert self._value is not None
                end = self._scan(self._value, final)
                if end is None:
                    self._check_top_size()
                    return
                if self._skipping_member:
                    self._skipping_member = False
                    self._member_skipped = True
                else:
                    try:
                        self._members[self._key] = _loads(bytes(buf[self._value.start : end]))
                    except ValueError as exc:
                        raise self._bad(str(exc)) from None
                self._value = None
                self._pos = end
                self._state = "top_after"
            elif state == "top_after":
                if not self._skip_ws():
                    return
                ch = buf[self._pos]
                self._pos += 1
                if ch == 0x2C:  # ,
                    self._state = "top_key_next"
                elif ch == 0x7D:  # }
                    self._top_end = self._base + self._pos
                    self._state = "trailer"
                else:
                    self._pos -= 1
                    raise self._bad("expected ',' or '}'")
            elif state == "top_key_next":
                if not self._skip_ws():
                    return
                if buf[self._pos] != 0x22:
                    raise self._bad("expected a property name")
                self._state = "top_key"
            elif state == "items_first":
                if not self._skip_ws():
                    return
                if buf[self._pos] == 0x5D:  # ]
                    self._pos += 1
                    self._state = "top_after"
                    continue
                self._value = _Value(self._pos)
                self._state = "item"
            elif state == "item":
                assert self._value is not None
                end = self._scan(self._value, final)
                if end is None:
                    self._check_item_size()
                    return
                out.append(self._finish_item(end))
                self._value = None
                self._pos = end
                self._state = "item_after"
            elif state == "item_after":
                if not self._skip_ws():
                    return
                ch = buf[self._pos]
                if ch == 0x2C:  # ,
                    self._pos += 1
                    if not self._skip_ws():
                        self._state = "item_next"
                        return
                    if buf[self._pos] == 0x5D:
                        raise self._bad("expected a value")
                    self._value = _Value(self._pos)
                    self._state = "item"
                elif ch == 0x5D:  # ]
                    self._pos += 1
                    self._state = "top_after"
                else:
                    raise self._bad("expected ',' or ']'")
            elif state == "item_next":
                if not self._skip_ws():
                    return
                if buf[self._pos] == 0x5D:
                    raise self._bad("expected a value")
                self._value = _Value(self._pos)
                self._state = "item"
            elif state == "trailer":
                if not self._skip_ws():
                    if final:
                        out.append(self._end())
                        self._state = "done"
                    return
                raise BadRequestBody(
                    "Request body has data after the JSON object; send one object per request."
                )
            else:  # done
                if self._skip_ws():
                    raise BadRequestBody(
                        "Request body has data after the JSON object; send one object per request."
                    )
                return

    def _scan(self, value: _Value, final: bool) -> int | None:
        """Advance ``value`` through the buffer; its end index once complete, else None."""
        buf = self._buf
        pos = value.pos
        n = len(buf)
        if value.depth == 0 and not value.in_string and pos == value.start:
            ch = buf[pos]
            if ch == 0x22:  # a string value
                value.in_string = True
                pos += 1
            elif ch not in (0x7B, 0x5B):  # a scalar: runs to a delimiter
                value.scalar = True
        if value.scalar:
            m = _SCALAR_END.search(buf, pos)
            if m is None:
                value.pos = n
                return n if final else None
            if m.start() == value.start:
                raise self._bad("expected a value")
            return m.start()
        while True:
            if value.in_string:
                m = _STR_TAIL.match(buf, pos)
                assert m is not None
                pos = m.end()
                if pos >= n or buf[pos] != 0x22:
                    value.pos = pos  # at the end, or at a trailing backslash
                    return None
                pos += 1
                value.in_string = False
                if value.depth == 0:
                    return pos
                continue
            m = _STRUCT.search(buf, pos)
            if m is None:
                value.pos = n
                return None
            pos = m.end()
            ch = buf[m.start()]
            if ch == 0x22:
                value.in_string = True
            elif ch in (0x7B, 0x5B):
                value.depth += 1
            else:
                value.depth -= 1
                if value.depth < 0:
                    raise self._bad("unbalanced brackets")
                if value.depth == 0:
                    return pos

    # -- sizes and pieces ----------------------------------------------------------------------
    def _check_item_size(self) -> None:
        """Start (or continue) skipping an item that has grown over the limit."""
        value = self._value
        assert value is not None
        size = value.pos - value.start
        if self._skip is None and size <= self.max_item_bytes:
            return
        if self._skip is None:
            self._skip = (hashlib.sha256(), bytearray(), 0)
        hasher, kept, seen = self._skip
        upto = value.pos
        part = self._buf[value.start : upto]
        hasher.update(part)
        if len(kept) < self.keep_bytes:
            kept.extend(part[: self.keep_bytes - len(kept)])
        self._skip = (hasher, kept, seen + len(part))
        # Drop what was hashed; the scan goes on from the same place.
        del self._buf[:upto]
        self._base += upto
        self._pos = 0
        value.pos -= upto
        value.start = 0

    def _finish_item(self, end: int) -> Item | Oversize:
        value = self._value
        assert value is not None
        part = self._buf[value.start : end]
        if self._skip is None:
            if len(part) <= self.max_item_bytes:
                return Item(bytes(part))
            self._skip = (hashlib.sha256(), bytearray(), 0)
        hasher, kept, seen = self._skip
        self._skip = None
        hasher.update(part)
        if len(kept) < self.keep_bytes:
            kept.extend(part[: self.keep_bytes - len(kept)])
        return Oversize(bytes(kept), seen + len(part), hasher.digest())

    def _check_top_size(self) -> None:
        """A top-level object (no streamed items) over the limit is no longer kept: it can only
        be a single Event too large to accept, parked by the caller from its own copy."""
        if self._streamed_items or self._top_oversize or self._top_start < 0:
            return
        if self._base + len(self._buf) - self._top_start > self.max_item_bytes:
            self._top_oversize = True

    def _end(self) -> End:
        whole: bytes | None = None
        if not self._streamed_items and not self._top_oversize:
            start = self._top_start - self._base
            whole = bytes(self._buf[start : start + self._top_end - self._top_start])
        return End(dict(self._members), self._streamed_items, whole, self._top_oversize)

    def _compact(self) -> None:
        """Drop consumed bytes that nothing needs any more."""
        if self._state == "start":
            return
        value = self._value
        if (
            self._top_oversize
            and self._state == "top_value"
            and value is not None
            and (self._skipping_member or value.pos - value.start > self._member_cap)
        ):
            # An oversize member of a single Event: never decoded, so scanned bytes can go.
            self._skipping_member = True
            drop = value.pos
            if drop >= _COMPACT_AT:
                del self._buf[:drop]
                self._base += drop
                self._pos = 0
                value.start -= drop
                value.pos = 0
            return
        keep_from = self._pos if value is None else min(self._pos, value.start)
        if not self._streamed_items and not self._top_oversize and self._top_start >= 0:
            keep_from = min(keep_from, self._top_start - self._base)  # a single Event, kept whole
        if keep_from >= _COMPACT_AT or (keep_from > 0 and keep_from == len(self._buf)):
            del self._buf[:keep_from]
            self._base += keep_from
            self._pos -= keep_from
            if value is not None:
                value.start -= keep_from
                value.pos -= keep_from


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _loads(raw: bytes) -> Any:
    return json.loads(raw, parse_constant=_no_constants)


Outcome = dict[str, Any] | Reject
"""An AuditEvent datum to produce, or a reject to chain."""


class StreamParser:
    """A request body fed in chunks -> AuditEvent datums and rejects, in body order.

    The same per-item checks as :func:`producers.k8s.parse_body`; the difference is where the
    body as a whole is broken: items completed before the break have already been handed out
    (and produced), and the caller parks the body itself with :meth:`body_reject`.
    """

    def __init__(self, cluster: str, received_at_us: int, max_event_bytes: int) -> None:
        self.cluster = cluster
        self.received_at_us = received_at_us
        self.max_event_bytes = max_event_bytes
        self._splitter = BodySplitter(max_event_bytes, REJECT_KEEP_BYTES)
        self._list_api: str | None = None  # known once the envelope was checked
        self._waiting: list[Item | Oversize] = []  # items seen before kind/apiVersion
        self._hash = hashlib.sha256()
        self._prefix = bytearray()
        self.size = 0
        self.items = 0

    def feed(self, chunk: bytes) -> list[Outcome]:
        self._account(chunk)
        return self._outcomes(self._splitter.feed(chunk))

    def close(self) -> list[Outcome]:
        return self._outcomes(self._splitter.close())

    def drain(self, chunk: bytes) -> None:
        """Account for the rest of a body that can no longer be parsed (for :meth:`body_reject`)."""
        self._account(chunk)

    def body_reject(self, reason: str) -> Reject:
        """The whole body as a reject: its first bytes, its size and the SHA-256 of all of it."""
        return Reject(
            reason, bytes(self._prefix), self.size, self._hash.digest(), RejectKind.BAD_BODY
        )

    def _account(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self._hash.update(chunk)
        if len(self._prefix) < REJECT_KEEP_BYTES:
            self._prefix.extend(chunk[: REJECT_KEEP_BYTES - len(self._prefix)])

    def _outcomes(self, pieces: list[Piece]) -> list[Outcome]:
        out: list[Outcome] = []
        for piece in pieces:
            if isinstance(piece, Item | Oversize):
                self.items += 1
                if self._list_api is None:
                    self._waiting.append(piece)
                else:
                    out.append(self._item(piece, self._list_api))
            elif isinstance(piece, ItemsStart):
                members = piece.members
                if "kind" in members and "apiVersion" in members:
                    self._list_api = self._envelope(members)
            else:
                out.extend(self._end(piece))
        return out

    def _envelope(self, members: dict[str, Any]) -> str:
        if not is_event_list(members):
            raise BadRequestBody(
                "Request body is not an EventList but has an items array; send the webhook "
                "backend's EventList or one Event."
            )
        return eventlist_api_version(members)

    def _item(self, piece: Item | Oversize, list_api: str) -> Outcome:
        if isinstance(piece, Oversize):
            reason = over_limit_reason(piece.size, self.max_event_bytes)
            return Reject(reason, piece.prefix, piece.size, piece.sha256, RejectKind.TOO_LARGE)
        return parse_item(
            piece.raw,
            self.cluster,
            self.received_at_us,
            list_api,
            max_event_bytes=self.max_event_bytes,
        )

    def _end(self, end: End) -> list[Outcome]:
        members = end.members
        if end.streamed_items:
            if self._list_api is None:
                self._list_api = self._envelope(members)
                waiting, self._waiting = self._waiting, []
                return [self._item(piece, self._list_api) for piece in waiting]
            return []
        if is_event_list(members):
            eventlist_api_version(members)
            if "items" not in members:
                raise BadRequestBody(
                    "EventList has no items array; send the webhook backend's EventList."
                )
            if members["items"] is not None:
                raise BadRequestBody("EventList items must be an array.")
            return []
        if end.whole is None:
            reason = over_limit_reason(self.size, self.max_event_bytes)
            return [self.body_reject(reason)]
        return [
            parse_item(
                end.whole,
                self.cluster,
                self.received_at_us,
                "",
                in_list=False,
                max_event_bytes=self.max_event_bytes,
            )
        ]
