"""C2SP signed notes (https://c2sp.org/signed-note) with Ed25519 keys.

Byte compatible with Go's ``golang.org/x/mod/sumdb/note``:

* key ID ``= uint32be(SHA-256(name || 0x0A || 0x01 || pubkey32)[:4])``
* verifier key ``"<name>+<8 lowercase hex key ID>+<base64(0x01 || pubkey32)>"``
* private key ``"PRIVATE+KEY+<name>+<8 hex key ID>+<base64(0x01 || seed32)>"``
* note ``= text || "\\n" || ("— <name> <base64(uint32be(keyID) || sig64)>\\n")+``; the text
  ends with a newline, and the signature covers exactly the text bytes (UTF-8).

Reading a note is two steps: :func:`parse_note` checks the syntax and splits the text from
its signature lines without checking any signature (what a store or a relay needs);
:func:`open_note` builds on it and verifies the signatures by trusted keys.

Key parsing errors raise :class:`KeyFileError` whose message never contains key material.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from processors.integrity.errors import (
    BadSignature,
    KeyFileError,
    MalformedCheckpoint,
    UnknownKey,
)

__all__ = [
    "ALG_ED25519",
    "MAX_NOTE_BYTES",
    "MAX_SIGNATURES",
    "SIG_PREFIX",
    "Note",
    "NoteSignature",
    "Signer",
    "Verifier",
    "generate_key",
    "is_valid_name",
    "key_id",
    "open_note",
    "parse_note",
    "sign_note",
]

ALG_ED25519 = 0x01
SIG_PREFIX = "\u2014 "  # em dash, space
MAX_SIGNATURES = 100
MAX_NOTE_BYTES = 1 << 20
_PRIVATE_PREFIX = "PRIVATE+KEY+"
# What a malformed key file's message tells the user to run (tests check it is a real command).
_REGENERATE = "regenerate it with `sealtrail keys generate --name NAME`"


def is_valid_name(name: str) -> bool:
    """A key name is non-empty UTF-8 without Unicode spaces and without ``+`` (Go's rule), and
    without control characters below U+0020, which no note may contain (so such a name could
    never sign one). ``/`` is allowed: origin-style names like ``example.com/audit`` are usual."""
    if not name or "+" in name:
        return False
    if any(ch.isspace() or ch < " " for ch in name):
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def key_id(name: str, public_key: bytes) -> int:
    """The 32-bit key ID of an Ed25519 ``public_key`` (32 raw bytes) under ``name``."""
    digest = hashlib.sha256(
        name.encode("utf-8") + b"\n" + bytes([ALG_ED25519]) + public_key
    ).digest()
    return int(struct.unpack(">I", digest[:4])[0])


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _b64decode(text: str) -> bytes:
    """Strict standard base64 (padding required, no stray characters)."""
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    if base64.b64encode(raw).decode("ascii") != text:
        raise ValueError("non-canonical base64")
    return raw


def _parse_key(text: str, kind: str) -> tuple[str, int, bytes]:
    """Split ``name+hhhhhhhh+base64(alg || key32)``; never echo key material in errors."""

    def bad(why: str) -> KeyFileError:
        return KeyFileError(f"{kind} is malformed ({why}); {_REGENERATE}")

    parts = text.split("+", 2)
    if len(parts) != 3:
        raise bad("expected name+keyid+base64")
    name, hex_id, b64 = parts
    if not is_valid_name(name):
        raise bad("invalid key name")
    if len(hex_id) != 8 or any(c not in "0123456789abcdef" for c in hex_id):
        raise bad("key ID must be 8 lowercase hex digits")
    try:
        raw = _b64decode(b64)
    except (ValueError, UnicodeEncodeError, binascii.Error):
        raise bad("key is not valid base64") from None
    if len(raw) != 33 or raw[0] != ALG_ED25519:
        raise bad("not an Ed25519 key")
    return name, int(hex_id, 16), raw[1:]


class Verifier:
    """An Ed25519 note verifier: a key name, its key ID and the public key."""

    __slots__ = ("_key", "key_hash", "name", "public_key")

    def __init__(self, name: str, public_key: bytes) -> None:
        if not is_valid_name(name):
            raise KeyFileError(
                "key name must be non-empty with no whitespace, control characters or '+'"
            )
        if len(public_key) != 32:
            raise KeyFileError("an Ed25519 public key is 32 bytes")
        self.name = name
        self.public_key = bytes(public_key)
        self.key_hash = key_id(name, self.public_key)
        self._key = Ed25519PublicKey.from_public_bytes(self.public_key)

    @classmethod
    def from_verifier_key(cls, vkey: str) -> Verifier:
        """Parse ``name+hhhhhhhh+base64(0x01 || pubkey)``; raises KeyFileError."""
        name, hash_, pub = _parse_key(vkey.strip(), "verifier key")
        verifier = cls(name, pub)
        if verifier.key_hash != hash_:
            raise KeyFileError(
                "verifier key is malformed (key ID does not match the key); "
                "copy the .pub file again"
            )
        return verifier

    def verifier_key(self) -> str:
        """The verifier key string (public, safe to share)."""
        b64 = base64.b64encode(bytes([ALG_ED25519]) + self.public_key).decode("ascii")
        return f"{self.name}+{self.key_hash:08x}+{b64}"

    @property
    def key_label(self) -> str:
        """``name+hhhhhhhh``: a public identifier for messages and reports."""
        return f"{self.name}+{self.key_hash:08x}"

    def verify(self, msg: bytes, sig: bytes) -> None:
        """Raise BadSignature unless ``sig`` is this key's Ed25519 signature of ``msg``."""
        try:
            self._key.verify(sig, msg)
        except InvalidSignature:
            raise BadSignature(
                f"signature by key {self.key_label} does not verify; "
                "the signed text was altered or the signature forged",
                expected=self.key_label,
            ) from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Verifier):
            return NotImplemented
        return self.name == other.name and self.public_key == other.public_key

    def __hash__(self) -> int:
        return hash((self.name, self.public_key))

    def __repr__(self) -> str:
        return f"Verifier({self.key_label})"


class Signer:
    """An Ed25519 note signer. Never printable: ``repr`` shows only the public label."""

    __slots__ = ("_key", "verifier")

    def __init__(self, name: str, seed: bytes) -> None:
        if len(seed) != 32:
            raise KeyFileError("an Ed25519 private key seed is 32 bytes")
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self.verifier = Verifier(name, _raw_public(self._key.public_key()))

    @classmethod
    def from_private_key(cls, skey: str) -> Signer:
        """Parse ``PRIVATE+KEY+name+hhhhhhhh+base64(0x01 || seed)``; raises KeyFileError."""
        skey = skey.strip()
        if not skey.startswith(_PRIVATE_PREFIX):
            raise KeyFileError(
                f"private key is malformed (expected PRIVATE+KEY+...); {_REGENERATE}"
            )
        name, hash_, seed = _parse_key(skey[len(_PRIVATE_PREFIX) :], "private key")
        signer = cls(name, seed)
        if signer.key_hash != hash_:
            raise KeyFileError(
                f"private key is malformed (key ID does not match the key); {_REGENERATE}"
            )
        return signer

    @property
    def name(self) -> str:
        return self.verifier.name

    @property
    def key_hash(self) -> int:
        return self.verifier.key_hash

    def sign(self, msg: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``msg``."""
        return self._key.sign(msg)

    def private_key(self) -> str:
        """The private key string. Secret: write it only to a 0600 file."""
        seed = self._key.private_bytes_raw()
        b64 = base64.b64encode(bytes([ALG_ED25519]) + seed).decode("ascii")
        return f"{_PRIVATE_PREFIX}{self.name}+{self.key_hash:08x}+{b64}"

    def __repr__(self) -> str:
        return f"Signer({self.verifier.key_label})"


def generate_key(name: str) -> tuple[str, str]:
    """A fresh key pair for ``name``: ``(private key string, verifier key string)``."""
    key = Ed25519PrivateKey.generate()
    signer = Signer(name, key.private_bytes_raw())
    return signer.private_key(), signer.verifier.verifier_key()


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line of a note, as written: key name, 32-bit key ID, signature bytes."""

    name: str
    key_hash: int
    signature: bytes

    @property
    def key_label(self) -> str:
        """``name+hhhhhhhh``, as in :attr:`Verifier.key_label`."""
        return f"{self.name}+{self.key_hash:08x}"

    def line(self) -> str:
        """The signature line, newline included."""
        blob = struct.pack(">I", self.key_hash) + self.signature
        return f"{SIG_PREFIX}{self.name} {base64.b64encode(blob).decode('ascii')}\n"


@dataclass(frozen=True, slots=True)
class Note:
    """A signed note split into its text and its signature lines. Nothing here is verified:
    a signature line only claims that a key signed the text."""

    text: str
    signatures: tuple[NoteSignature, ...]

    @property
    def signer_names(self) -> list[str]:
        """The key names on the signature lines, in order (unverified claims)."""
        return [sig.name for sig in self.signatures]

    def render(self) -> str:
        """The note as text; ``parse_note(note.render()) == note`` for every parsed note."""
        return self.text + "\n" + "".join(sig.line() for sig in self.signatures)


def _parse_signature(line: str) -> NoteSignature:
    if not line.startswith(SIG_PREFIX):
        raise MalformedCheckpoint("signed note has a signature line without the em dash")
    name, _, b64 = line[len(SIG_PREFIX) :].rpartition(" ")
    try:
        blob = _b64decode(b64) if b64 else b""
    except (ValueError, UnicodeEncodeError, binascii.Error):
        blob = b""
    if not is_valid_name(name) or len(blob) < 5:
        raise MalformedCheckpoint("signed note has a malformed signature line")
    return NoteSignature(name, int(struct.unpack(">I", blob[:4])[0]), blob[4:])


def _check_text(text: str, what: str) -> bytes:
    """UTF-8 encode, refusing control characters other than newline."""
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedCheckpoint(f"{what} is not valid UTF-8; it was corrupted") from None
    if len(raw) > MAX_NOTE_BYTES:
        raise MalformedCheckpoint(
            f"{what} is larger than {MAX_NOTE_BYTES} bytes; refusing to parse it",
            found=len(raw),
        )
    for ch in text:
        if ch < " " and ch != "\n":
            raise MalformedCheckpoint(
                f"{what} contains control character U+{ord(ch):04X}; it was corrupted"
            )
    return raw


def sign_note(text: str, *signers: Signer) -> str:
    """Sign ``text`` (which must end with a newline) with every signer, in order."""
    if not signers:
        raise ValueError("sign_note needs at least one signer")
    raw = _check_text(text, "note text")
    if not text.endswith("\n") or "\n\n" in text:
        raise MalformedCheckpoint("note text must end with a newline and contain no blank line")
    seen: set[tuple[str, int]] = set()
    signatures = []
    for signer in signers:
        ident = (signer.name, signer.key_hash)
        if ident in seen:
            raise ValueError(f"duplicate signer {signer.verifier.key_label}")
        seen.add(ident)
        signatures.append(NoteSignature(signer.name, signer.key_hash, signer.sign(raw)))
    return Note(text, tuple(signatures)).render()


def parse_note(note: str) -> Note:
    """Split a signed note into its text and signature lines WITHOUT verifying any signature.

    The whole syntax is checked (size, control characters, the blank line, the final newline,
    each signature line), so a note this accepts differs from a verifiable one only in its
    signatures. Raises MalformedCheckpoint.
    """
    _check_text(note, "signed note")
    split = note.rfind("\n\n")
    if split < 0:
        raise MalformedCheckpoint("signed note has no blank line before its signatures")
    text, sigs = note[: split + 1], note[split + 2 :]
    if not sigs or not sigs.endswith("\n"):
        raise MalformedCheckpoint("signed note has no signature lines or lacks a final newline")
    lines = sigs[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise MalformedCheckpoint(
            f"signed note has more than {MAX_SIGNATURES} signatures; refusing to check them",
            found=len(lines),
        )
    return Note(text, tuple(_parse_signature(line) for line in lines))


def open_note(note: str, verifiers: Iterable[Verifier]) -> tuple[str, list[Verifier]]:
    """Verify a signed note; return its text and the known verifiers whose signatures verified.

    Signatures by unknown keys are ignored. Raises MalformedCheckpoint on bad syntax
    (:func:`parse_note`), BadSignature if any signature by a known key fails (the whole note
    is rejected), and UnknownKey if no known key signed it.
    """
    known: dict[tuple[str, int], Verifier] = {}
    for v in verifiers:
        prior = known.setdefault((v.name, v.key_hash), v)
        if prior != v:
            raise KeyFileError(
                f"two different trusted keys share the label {v.key_label}; "
                "remove one from the key ring"
            )
    parsed = parse_note(note)
    text_bytes = parsed.text.encode("utf-8")
    verified: list[Verifier] = []
    seen: set[tuple[str, int]] = set()
    unknown: list[str] = []
    for sig in parsed.signatures:
        ident = (sig.name, sig.key_hash)
        verifier = known.get(ident)
        if verifier is None:
            unknown.append(sig.key_label)
            continue
        if ident in seen:
            continue
        seen.add(ident)
        verifier.verify(text_bytes, sig.signature)
        verified.append(verifier)
    if not verified:
        raise UnknownKey(
            "the note is not signed by any trusted key (signed by "
            f"{', '.join(unknown) or 'nobody'}); add the signer's .pub file to the key ring "
            "if you trust it",
            found=unknown,
        )
    return parsed.text, verified
