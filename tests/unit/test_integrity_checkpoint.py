"""Checkpoint bodies, parsing notes without verifying, signing/opening under a key ring, and
key rotation ranges."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.integrity.checkpoint import (
    Checkpoint,
    CheckpointNote,
    KeyRing,
    open_checkpoint,
    origin_for,
    parse_checkpoint_note,
    sign_checkpoint,
)
from processors.integrity.errors import (
    BadSignature,
    CheckpointMismatch,
    KeyFileError,
    KeyOutOfRange,
    MalformedCheckpoint,
    UnknownKey,
)
from processors.integrity.merkle import EMPTY_ROOT
from processors.integrity.note import NoteSignature, Signer, generate_key, parse_note, sign_note
from processors.integrity.record import ZERO_HASH

ROOT = hashlib.sha256(b"root").digest()
HEAD = hashlib.sha256(b"head").digest()
ORIGIN = origin_for("sealtrail.local", "audit.events/3")


def signer(name: str = "sealtrail.local") -> Signer:
    return Signer.from_private_key(generate_key(name)[0])


def ring(*entries: tuple[Signer, int, int | None]) -> KeyRing:
    kr = KeyRing()
    for s, lo, hi in entries:
        kr.add(s.verifier, lo, hi)
    return kr


CP = Checkpoint(ORIGIN, 1234, ROOT, HEAD, 1_700_000_000_000_001)


def test_origin_and_body() -> None:
    assert ORIGIN == "sealtrail.local/audit.events/3"
    b64 = base64.b64encode
    assert CP.body() == (
        "sealtrail.local/audit.events/3\n1234\n"
        f"{b64(ROOT).decode()}\nsealtrail-head {b64(HEAD).decode()} 1700000000000001\n"
    )
    assert Checkpoint.parse(CP.body()) == CP
    empty = Checkpoint(ORIGIN, 0, EMPTY_ROOT, ZERO_HASH, 5)
    assert Checkpoint.parse(empty.body()) == empty


@pytest.mark.parametrize(
    "body",
    [
        CP.body()[:-1],
        CP.body().replace("\n1234\n", "\n01234\n"),
        CP.body().replace("\n1234\n", "\n+1234\n"),
        CP.body().replace("\n1234\n", "\n-1\n"),
        CP.body().replace("sealtrail-head", "sealtrail-tail"),
        CP.body().replace(" 1700000000000001", "  1700000000000001"),
        CP.body().replace(" 1700000000000001", ""),
        CP.body() + "extra line\n",
        "\n".join(CP.body().split("\n")[:3]) + "\n",
        CP.body().replace(base64.b64encode(ROOT).decode(), base64.b64encode(ROOT[:31]).decode()),
        CP.body().replace(base64.b64encode(ROOT).decode(), "!!!!"),
        CP.body().replace(ORIGIN, ""),
        CP.body().replace(ORIGIN, "has space"),
        Checkpoint(ORIGIN, 0, EMPTY_ROOT, ZERO_HASH, 5).body().replace("\n0\n", "\n00\n"),
    ],
)
def test_parse_rejects_non_canonical(body: str) -> None:
    with pytest.raises(MalformedCheckpoint):
        Checkpoint.parse(body)


def test_constructor_validates() -> None:
    for args in [
        (ORIGIN, -1, ROOT, HEAD, 0),
        (ORIGIN, 1, ROOT[:5], HEAD, 0),
        (ORIGIN, 0, ROOT, ZERO_HASH, 0),  # empty tree must have the empty root
        ("bad\norigin", 1, ROOT, HEAD, 0),
    ]:
        with pytest.raises(MalformedCheckpoint):
            Checkpoint(*args)


def test_sign_and_open() -> None:
    s = signer()
    note = sign_checkpoint(CP, s)
    assert note.startswith(CP.body() + "\n\u2014 sealtrail.local ")
    assert open_checkpoint(note, ring((s, 0, None))) == CP
    assert open_checkpoint(note, ring((s, 0, None)), origin=ORIGIN) == CP
    with pytest.raises(CheckpointMismatch) as info:
        open_checkpoint(note, ring((s, 0, None)), origin=origin_for("sealtrail.local", "x/1"))
    assert info.value.kind == "checkpoint_mismatch"


def test_other_key_fails() -> None:
    note = sign_checkpoint(CP, signer())
    with pytest.raises(UnknownKey):
        open_checkpoint(note, ring((signer(), 0, None)))


def test_every_edited_line_fails() -> None:
    s = signer()
    kr = ring((s, 0, None))
    note = sign_checkpoint(CP, s)
    body_lines = CP.body().split("\n")[:4]
    for line in body_lines:
        edited = line[:-1] + ("A" if line[-1] != "A" else "B")
        tampered = note.replace(line + "\n", edited + "\n", 1)
        assert tampered != note
        with pytest.raises((BadSignature, MalformedCheckpoint)):
            open_checkpoint(tampered, kr)
    for other in [
        Checkpoint(ORIGIN, 1235, ROOT, HEAD, CP.timestamp_us),
        Checkpoint(ORIGIN, 1234, hashlib.sha256(b"other").digest(), HEAD, CP.timestamp_us),
        Checkpoint(ORIGIN, 1234, ROOT, ROOT, CP.timestamp_us),
    ]:
        forged = other.body() + note[len(CP.body()) :]
        with pytest.raises(BadSignature):
            open_checkpoint(forged, kr)


def test_parse_checkpoint_note_without_keys() -> None:
    s = signer()
    note = sign_checkpoint(CP, s)
    parsed = parse_checkpoint_note(note)
    assert parsed == CheckpointNote(CP, parse_note(note).signatures)
    assert parsed.signer_names == ["sealtrail.local"]
    assert parsed.signatures[0].key_hash == s.key_hash
    # nothing is verified: an edited size parses as the edited claim, and does not open
    edited = note.replace("\n1234\n", "\n1235\n")
    assert parse_checkpoint_note(edited).checkpoint.size == 1235
    with pytest.raises(BadSignature):
        open_checkpoint(edited, ring((s, 0, None)))


def test_parse_checkpoint_note_reads_signer_names() -> None:
    # (was the sink's own splitter test) signature lines of keys nobody here knows
    cp = Checkpoint("d/audit.events/0", 0, EMPTY_ROOT, ZERO_HASH, 7)
    k1, k2 = NoteSignature("k1", 1, b"\x01" * 64), NoteSignature("k2", 2, b"\x02" * 64)
    parsed_note = parse_checkpoint_note(cp.body() + "\n" + k1.line() + k2.line())
    parsed, names = parsed_note.checkpoint, parsed_note.signer_names
    assert parsed == cp and names == ["k1", "k2"]
    with pytest.raises(MalformedCheckpoint):
        parse_checkpoint_note("just text")
    # a signature line too short to hold a key ID and a signature is not a signed note
    with pytest.raises(MalformedCheckpoint, match="signature line"):
        parse_checkpoint_note(cp.body() + "\n\u2014 k1 AAAA\n")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda n: n.replace("\n1234\n", "\n01234\n"),  # body not canonical
        lambda n: n.replace("sealtrail-head", "sealtrail-tail"),  # wrong extension line
        lambda n: n.replace("\n\n", "\nextra line\n\n"),  # fifth body line
        lambda n: n.replace("\n\n", "\n"),  # no blank line before the signatures
        lambda n: n.rsplit(" ", 1)[0] + " AAAA\n",  # too short signature
    ],
)
def test_parse_checkpoint_note_rejects_malformed(mangle) -> None:  # type: ignore[no-untyped-def]
    s = signer()
    note = mangle(sign_checkpoint(CP, s))
    with pytest.raises(MalformedCheckpoint):
        parse_checkpoint_note(note)
    with pytest.raises((BadSignature, MalformedCheckpoint)):
        open_checkpoint(note, ring((s, 0, None)))


HASHES = st.binary(min_size=32, max_size=32)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.integers(1, (1 << 63) - 1),
    root=HASHES,
    head=HASHES,
    timestamp_us=st.integers(0, (1 << 63) - 1),
    names=st.lists(st.sampled_from(["a.example", "example.com/audit", "k"]), min_size=1),
)
def test_property_parse_checkpoint_note_gives_back_the_checkpoint(
    size: int, root: bytes, head: bytes, timestamp_us: int, names: list[str]
) -> None:
    cp = Checkpoint(ORIGIN, size, root, head, timestamp_us)
    lines = "".join(NoteSignature(n, i, bytes([i]) * 64).line() for i, n in enumerate(names))
    parsed = parse_checkpoint_note(cp.body() + "\n" + lines)
    assert parsed.checkpoint == cp and parsed.signer_names == names


def test_key_rotation_ranges() -> None:
    old, new = signer(), signer()
    kr = ring((old, 0, 999), (new, 1000, None))
    at = {n: Checkpoint(ORIGIN, n, ROOT, HEAD, 1) for n in (1, 999, 1000, 5000)}
    assert open_checkpoint(sign_checkpoint(at[999], old), kr).size == 999
    assert open_checkpoint(sign_checkpoint(at[1000], new), kr).size == 1000
    with pytest.raises(KeyOutOfRange) as info:
        open_checkpoint(sign_checkpoint(at[5000], old), kr)
    err = info.value
    assert err.kind == "key_out_of_range" and err.seq == 5000 and err.chain == ORIGIN
    assert err.found == old.verifier.key_label
    with pytest.raises(KeyOutOfRange):
        open_checkpoint(sign_checkpoint(at[1], new), kr)
    # a valid in-range signature does not excuse an out-of-range one (retired key = compromised)
    double = sign_note(at[5000].body(), new, old)
    with pytest.raises(KeyOutOfRange):
        open_checkpoint(double, kr)
    # overlapping hand-over ranges accept both
    overlap = ring((old, 0, 6000), (new, 1000, None))
    assert open_checkpoint(double, overlap).size == 5000


def test_keyring_parse_and_load(tmp_path: Path) -> None:
    a, b = signer("a.example"), signer("b.example")
    text = (
        "# sealtrail trusted keys\n"
        f"{a.verifier.verifier_key()} 0 999   # retired 2024-05\n"
        "\n"
        f"{b.verifier.verifier_key()} 1000 -\n"
    )
    path = tmp_path / "keyring.txt"
    path.write_text(text)
    kr = KeyRing.load(path)
    assert [(e.verifier, e.from_size, e.to_size) for e in kr] == [
        (a.verifier, 0, 999),
        (b.verifier, 1000, None),
    ]
    pub = tmp_path / "a.pub"
    pub.write_text(a.verifier.verifier_key() + "\n")
    single = KeyRing.load(pub)
    assert len(single) == 1 and single.entries[0].covers(10**12)
    for bad in [
        "",
        "# only comments\n",
        "notakey\n",
        f"{a.verifier.verifier_key()} x\n",
        f"{a.verifier.verifier_key()} 5 4\n",
        f"{a.verifier.verifier_key()} 1 2 3\n",
    ]:
        with pytest.raises(KeyFileError):
            KeyRing.parse(bad)
    with pytest.raises(KeyFileError):
        KeyRing.load(tmp_path / "missing")


def test_keyring_comments_fields_and_sizes() -> None:
    """docs/FORMAT.md section 7: any whitespace separates fields; '#' starts a comment only
    where a field starts (a key name may hold '#'); sizes are ASCII digits."""
    hashed = signer("audit#1.example")
    key = hashed.verifier.verifier_key()
    assert key.startswith("audit#1.example+")
    kr = KeyRing.parse(f"\t{key}\t 5 \t -\n")
    assert [(e.verifier, e.from_size, e.to_size) for e in kr] == [(hashed.verifier, 5, None)]
    kr = KeyRing.parse(f"{key} 0 9 #retired\n{key} #whole-line comment after the key\n")
    assert [(e.from_size, e.to_size) for e in kr] == [(0, 9), (0, None)]
    # A '#' inside a field is not a comment: here it makes the size not a number.
    with pytest.raises(KeyFileError, match="not a number"):
        KeyRing.parse(f"{key} 0#x\n")
    # A line whose first field starts with '#' is a comment, whatever follows.
    with pytest.raises(KeyFileError, match="no verifier keys"):
        KeyRing.parse(f"#{key}\n")
    for size in ("+5", "1_000", "\u0663", "-1", "0x10"):
        with pytest.raises(KeyFileError):
            KeyRing.parse(f"{key} {size}\n")
    assert KeyRing.parse(f"{key} 007 10\n").entries[0].from_size == 7
