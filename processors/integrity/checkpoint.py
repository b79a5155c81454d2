"""Signed tlog checkpoints (https://c2sp.org/tlog-checkpoint) and the trusted key ring.

Body (every line ends with ``\\n``)::

    <origin>
    <tree size, decimal>
    <base64 RFC 6962 root hash>
    sealtrail-head <base64 hash of record size-1, or 32 zero bytes> <timestamp_us, decimal>

The body is signed as a C2SP signed note. Parsing is canonical: a body is accepted only if
re-serialising the parsed checkpoint gives the same bytes. :func:`parse_checkpoint_note` reads a
checkpoint note without verifying it (stores, the chainer's recovery); :func:`open_checkpoint`
verifies it under a key ring.

A :class:`KeyRing` trusts each key only for a range of tree sizes ``[from_size, to_size]``
(``to_size`` None = open-ended). Every valid signature by a known key on a checkpoint must
come from a key whose range contains the checkpoint's size, otherwise KeyOutOfRange.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from processors.integrity.chains import origin_for  # re-exported: origins are named in chains
from processors.integrity.errors import (
    CheckpointMismatch,
    KeyFileError,
    KeyOutOfRange,
    MalformedCheckpoint,
)
from processors.integrity.merkle import EMPTY_ROOT
from processors.integrity.note import (
    NoteSignature,
    Signer,
    Verifier,
    open_note,
    parse_note,
    sign_note,
)
from processors.integrity.record import HASH_SIZE, ZERO_HASH

__all__ = [
    "HEAD_EXTENSION",
    "Checkpoint",
    "CheckpointNote",
    "KeyRing",
    "KeyRingEntry",
    "open_checkpoint",
    "origin_for",
    "parse_checkpoint_note",
    "sign_checkpoint",
]

HEAD_EXTENSION = "sealtrail-head"
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}")
_RING_SIZE = re.compile(r"[0-9]+")


def _ring_size(text: str) -> int:
    """A key ring size: ASCII digits only (``int`` alone would also take ``+5``, ``1_000`` and
    other scripts' digits, which no other reader of the format would)."""
    if not _RING_SIZE.fullmatch(text):
        raise ValueError(text)
    return int(text)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A claim that the chain ``origin`` had ``size`` records with this root and head."""

    origin: str
    size: int
    root_hash: bytes
    head_hash: bytes
    timestamp_us: int

    def __post_init__(self) -> None:
        if (
            not self.origin
            or any(ch <= " " or ch == "\x7f" for ch in self.origin)
            or self.origin.startswith(HEAD_EXTENSION)
        ):
            raise MalformedCheckpoint(
                "checkpoint origin must be non-empty with no spaces or control characters",
                found=self.origin,
            )
        if not 0 <= self.size < 1 << 63 or not 0 <= self.timestamp_us < 1 << 63:
            raise MalformedCheckpoint(
                "checkpoint size and timestamp must be non-negative 63-bit integers",
                chain=self.origin,
                found=(self.size, self.timestamp_us),
            )
        if len(self.root_hash) != HASH_SIZE or len(self.head_hash) != HASH_SIZE:
            raise MalformedCheckpoint(
                "checkpoint root and head hashes must be 32 bytes", chain=self.origin
            )
        if self.size == 0 and (self.root_hash != EMPTY_ROOT or self.head_hash != ZERO_HASH):
            raise MalformedCheckpoint(
                "an empty checkpoint must carry the empty-tree root and the zero head hash",
                chain=self.origin,
            )

    def body(self) -> str:
        """The checkpoint text that gets signed."""
        return (
            f"{self.origin}\n{self.size}\n{_b64(self.root_hash)}\n"
            f"{HEAD_EXTENSION} {_b64(self.head_hash)} {self.timestamp_us}\n"
        )

    @classmethod
    def parse(cls, body: str) -> Checkpoint:
        """Parse a canonical checkpoint body; raises MalformedCheckpoint."""

        def bad(why: str) -> MalformedCheckpoint:
            return MalformedCheckpoint(f"checkpoint body is malformed: {why}")

        if not body.endswith("\n"):
            raise bad("it does not end with a newline")
        lines = body[:-1].split("\n")
        if len(lines) != 4:
            raise bad(f"expected 4 lines, found {len(lines)}")
        origin, size_s, root_s, ext = lines
        ext_parts = ext.split(" ")
        if len(ext_parts) != 3 or ext_parts[0] != HEAD_EXTENSION:
            raise bad(f"line 4 must be '{HEAD_EXTENSION} <base64 hash> <timestamp_us>'")
        if not _DECIMAL.fullmatch(size_s) or not _DECIMAL.fullmatch(ext_parts[2]):
            raise bad("size and timestamp must be canonical decimal numbers")
        try:
            root = base64.b64decode(root_s.encode("ascii"), validate=True)
            head = base64.b64decode(ext_parts[1].encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError, binascii.Error):
            raise bad("root or head hash is not base64") from None
        cp = cls(origin, int(size_s), root, head, int(ext_parts[2]))
        if cp.body() != body:
            raise bad("it is not in canonical form")
        return cp


@dataclass(frozen=True, slots=True)
class CheckpointNote:
    """A checkpoint note parsed but NOT verified: the checkpoint and the signature lines that
    claim to sign it."""

    checkpoint: Checkpoint
    signatures: tuple[NoteSignature, ...]

    @property
    def signer_names(self) -> list[str]:
        """The key names on the signature lines, in order (unverified claims)."""
        return [sig.name for sig in self.signatures]


def parse_checkpoint_note(note: str) -> CheckpointNote:
    """Parse a signed checkpoint note without checking its signatures; raises
    MalformedCheckpoint. Whoever trusts what it says must use :func:`open_checkpoint`."""
    parsed = parse_note(note)
    return CheckpointNote(Checkpoint.parse(parsed.text), parsed.signatures)


@dataclass(frozen=True, slots=True)
class KeyRingEntry:
    """A trusted key and the inclusive range of tree sizes it may sign."""

    verifier: Verifier
    from_size: int = 0
    to_size: int | None = None

    def covers(self, size: int) -> bool:
        return self.from_size <= size and (self.to_size is None or size <= self.to_size)

    def describe(self) -> str:
        upper = "-" if self.to_size is None else str(self.to_size)
        return f"{self.verifier.key_label} [{self.from_size}, {upper}]"


@dataclass(slots=True)
class KeyRing:
    """The keys a verifier trusts, each for a range of tree sizes (for key rotation)."""

    entries: list[KeyRingEntry] = field(default_factory=list)

    def add(self, verifier: Verifier, from_size: int = 0, to_size: int | None = None) -> None:
        if from_size < 0 or (to_size is not None and to_size < from_size):
            raise KeyFileError(
                f"key {verifier.key_label} has an empty size range; fix the key ring"
            )
        self.entries.append(KeyRingEntry(verifier, from_size, to_size))

    def verifiers(self) -> list[Verifier]:
        """Distinct trusted verifiers."""
        return list(dict.fromkeys(e.verifier for e in self.entries))

    def __iter__(self) -> Iterator[KeyRingEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def check_range(self, verifier: Verifier, size: int, origin: str | None = None) -> None:
        """Raise KeyOutOfRange unless some entry for ``verifier`` covers ``size``."""
        mine = [e for e in self.entries if e.verifier == verifier]
        if not any(e.covers(size) for e in mine):
            raise KeyOutOfRange(
                f"key {verifier.key_label} signed tree size {size} but is trusted only for "
                f"{', '.join(e.describe() for e in mine)}; a retired or future key was used",
                chain=origin,
                seq=size,
                expected=[e.describe() for e in mine],
                found=verifier.key_label,
            )

    @classmethod
    def parse(cls, text: str, source: str = "key ring") -> KeyRing:
        """Parse lines of ``<verifier key> [from_size] [to_size|-]`` (docs/FORMAT.md section 7):
        fields are separated by whitespace, a field that starts with ``#`` starts a comment
        running to the end of the line (a ``#`` inside a field is part of it), sizes are ASCII
        decimal digits."""
        ring = cls()
        for lineno, raw in enumerate(text.splitlines(), 1):
            parts = raw.split()
            for i, part in enumerate(parts):
                if part.startswith("#"):
                    del parts[i:]
                    break
            if not parts:
                continue
            if len(parts) > 3:
                raise KeyFileError(
                    f"{source} line {lineno} has too many fields; "
                    "use '<verifier key> [from_size] [to_size|-]'"
                )
            try:
                verifier = Verifier.from_verifier_key(parts[0])
            except KeyFileError as exc:
                raise KeyFileError(f"{source} line {lineno}: {exc}") from None
            try:
                lo = _ring_size(parts[1]) if len(parts) > 1 else 0
                hi = None if len(parts) < 3 or parts[2] == "-" else _ring_size(parts[2])
            except ValueError:
                raise KeyFileError(
                    f"{source} line {lineno} has a size that is not a number; "
                    "use '<verifier key> [from_size] [to_size|-]'"
                ) from None
            ring.add(verifier, lo, hi)
        if not ring.entries:
            raise KeyFileError(f"{source} holds no verifier keys; add a .pub key line")
        return ring

    @classmethod
    def load(cls, path: str | Path) -> KeyRing:
        """Read a key ring file (a single ``.pub`` verifier key file also works)."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyFileError(
                f"cannot read key ring {p} ({type(exc).__name__}); check the path"
            ) from None
        return cls.parse(text, str(p))


def sign_checkpoint(cp: Checkpoint, signer: Signer) -> str:
    """The full signed note for ``cp``."""
    return sign_note(cp.body(), signer)


def open_checkpoint(note_text: str, keyring: KeyRing, *, origin: str | None = None) -> Checkpoint:
    """Verify a signed checkpoint note under ``keyring`` and parse it.

    Raises MalformedCheckpoint, UnknownKey, BadSignature, KeyOutOfRange, or
    CheckpointMismatch when ``origin`` is given and differs.
    """
    text, signed_by = open_note(note_text, keyring.verifiers())
    cp = Checkpoint.parse(text)
    for verifier in signed_by:
        keyring.check_range(verifier, cp.size, cp.origin)
    if origin is not None and cp.origin != origin:
        raise CheckpointMismatch(
            f"checkpoint is for {cp.origin!r}, not {origin!r}; it belongs to another chain",
            chain=origin,
            expected=origin,
            found=cp.origin,
        )
    return cp
