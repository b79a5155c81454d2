"""C2SP signed notes: byte compatibility with Go's sumdb/note, parsing without verifying, and
fail-closed opening."""

from __future__ import annotations

import base64

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.integrity.errors import BadSignature, KeyFileError, MalformedCheckpoint, UnknownKey
from processors.integrity.note import (
    MAX_SIGNATURES,
    Note,
    NoteSignature,
    Signer,
    Verifier,
    generate_key,
    is_valid_name,
    key_id,
    open_note,
    parse_note,
    sign_note,
)

# golang.org/x/mod/sumdb/note: the example in the package doc and note_test.go.
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT
    + "\n"
    + "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqd"
    + "ngotpRZb6KE6RyyBwJnAM=\n"
)
# Other published verifier keys: Go's note_test.go (EnochRoot), C2SP signed-note's example,
# and transparency-dev/formats' TEST key whose base64 contains '+'.
OTHER_VKEYS = [
    "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop",
    "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
    "TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6",
]


def test_go_vector_sign_is_byte_identical() -> None:
    signer = Signer.from_private_key(GO_SKEY)
    assert signer.name == "PeterNeumann" and signer.key_hash == 0xC74F20A3
    assert signer.verifier.verifier_key() == GO_VKEY
    assert signer.private_key() == GO_SKEY
    assert sign_note(GO_TEXT, signer) == GO_NOTE
    assert "PRIVATE" not in repr(signer) and "AYEK" not in repr(signer)


def test_go_vector_open() -> None:
    v = Verifier.from_verifier_key(GO_VKEY)
    text, signed = open_note(GO_NOTE, [v])
    assert text == GO_TEXT and signed == [v]
    with pytest.raises(BadSignature) as info:
        open_note(GO_NOTE.replace("cryptography", "cryptographY"), [v])
    assert info.value.kind == "bad_signature"


@pytest.mark.parametrize("vkey", OTHER_VKEYS)
def test_published_verifier_keys_parse(vkey: str) -> None:
    v = Verifier.from_verifier_key(vkey)
    assert v.verifier_key() == vkey
    assert key_id(v.name, v.public_key) == v.key_hash


def test_mangled_keys_fail_without_leaking_material() -> None:
    material = GO_VKEY.split("+", 2)[2]
    b = GO_VKEY
    variants = {b[i:j] for i in range(len(b)) for j in range(i + 1, len(b) + 1)} - {b}
    variants |= {b[:i] + chr(ord(b[i]) + 1) + b[i + 1 :] for i in range(len(b))}
    for bad in variants:
        try:
            Verifier.from_verifier_key(bad)
        except KeyFileError as exc:
            assert material not in str(exc) and material[:12] not in str(exc)
        else:
            pytest.fail(f"accepted mangled key {bad!r}")
    seed_b64 = GO_SKEY.split("+", 4)[4]
    for bad in [
        GO_SKEY[:-1],
        GO_SKEY.replace("PRIVATE", "PUBLIC"),
        GO_SKEY.replace("c74f", "c75f"),
        GO_SKEY[len("PRIVATE+KEY+") :],
        GO_VKEY,
    ]:
        with pytest.raises(KeyFileError) as info:
            Signer.from_private_key(bad)
        assert seed_b64[:12] not in str(info.value)


def test_generate_key_round_trip() -> None:
    skey, vkey = generate_key("sealtrail.test")
    assert skey.startswith("PRIVATE+KEY+sealtrail.test+")
    signer = Signer.from_private_key(skey)
    verifier = Verifier.from_verifier_key(vkey)
    assert signer.verifier == verifier
    note = sign_note("hello\n", signer)
    assert open_note(note, [verifier]) == ("hello\n", [verifier])
    for bad_name in ["", "a b", "a+b", "tab\tname"]:
        with pytest.raises(KeyFileError):
            generate_key(bad_name)


def test_unknown_and_multiple_signers() -> None:
    a = Signer.from_private_key(generate_key("a.example")[0])
    b = Signer.from_private_key(generate_key("b.example")[0])
    same_name = Signer.from_private_key(generate_key("a.example")[0])
    note = sign_note("text\n", a, b)
    assert note.count("\u2014 ") == 2
    # a verifier for b only: a's line is ignored, b verifies
    assert open_note(note, [b.verifier]) == ("text\n", [b.verifier])
    assert open_note(note, [a.verifier, b.verifier])[1] == [a.verifier, b.verifier]
    with pytest.raises(UnknownKey) as info:
        open_note(note, [same_name.verifier])
    assert info.value.kind == "unknown_key"
    with pytest.raises(UnknownKey):
        open_note(note, [])
    with pytest.raises(ValueError):
        sign_note("text\n", a, a)


def test_known_key_bad_signature_rejects_whole_note() -> None:
    a = Signer.from_private_key(generate_key("a.example")[0])
    b = Signer.from_private_key(generate_key("b.example")[0])
    note_a = sign_note("text\n", a)
    note_b_other = sign_note("other\n", b)
    # graft b's signature of another text onto a's note: a verifies, b does not
    grafted = note_a + note_b_other.split("\n\n", 1)[1]
    with pytest.raises(BadSignature):
        open_note(grafted, [a.verifier, b.verifier])
    assert open_note(grafted, [a.verifier])[1] == [a.verifier]
    # a's signature relabelled as if made by b's key id
    sig = base64.b64decode(note_a.rsplit(" ", 1)[1])
    forged_blob = b.key_hash.to_bytes(4, "big") + sig[4:]
    forged = f"text\n\n\u2014 b.example {base64.b64encode(forged_blob).decode()}\n"
    with pytest.raises(BadSignature):
        open_note(forged, [b.verifier])


# Ways to break GO_NOTE's syntax; each one is malformed with or without keys.
MANGLES = [
    lambda n: n.replace("\n\n", "\n"),  # no blank line
    lambda n: n.replace("\u2014", "-"),  # ASCII dash
    lambda n: n.replace("\u2014 ", "\u2014"),  # no space after dash
    lambda n: n[:-1],  # no final newline
    lambda n: n + "\n",  # trailing blank line
    lambda n: n.replace("If you", "If\x01you"),  # control character
    lambda n: n.replace("PeterNeumann ", "PeterNeumann x"),  # base64 broken
    lambda n: n.replace(" x08go", "x08go"),  # no space before base64
    lambda n: n.rsplit(" ", 1)[0] + " AAAA\n",  # too short signature
    lambda n: n.replace("PeterNeumann", "Peter Neumann"),  # space in name
    lambda n: n + "\u2014 PeterNeumann\n",  # line without signature
]


@pytest.mark.parametrize("mangle", MANGLES)
def test_malformed_notes(mangle) -> None:  # type: ignore[no-untyped-def]
    v = Verifier.from_verifier_key(GO_VKEY)
    with pytest.raises(MalformedCheckpoint):
        open_note(mangle(GO_NOTE), [v])


def test_sign_note_rejects_bad_text() -> None:
    signer = Signer.from_private_key(GO_SKEY)
    for text in ["no newline", "blank\n\nline\n", "ctl\x07\n"]:
        with pytest.raises(MalformedCheckpoint):
            sign_note(text, signer)
    with pytest.raises(ValueError):
        sign_note("x\n")


def test_too_many_signatures() -> None:
    v = Verifier.from_verifier_key(GO_VKEY)
    sig_line = GO_NOTE.split("\n\n", 1)[1]
    with pytest.raises(MalformedCheckpoint):
        open_note(GO_NOTE + sig_line * 100, [v])
    # duplicates of a known good signature are tolerated, as in Go
    assert open_note(GO_NOTE + sig_line * 5, [v])[1] == [v]


# ------------------------------------------------------------------ parsing without verifying

GO_SIGNATURE = NoteSignature(
    "PeterNeumann",
    0xC74F20A3,
    base64.b64decode(GO_NOTE.rsplit(" ", 1)[1])[4:],
)


def test_go_vector_parse() -> None:
    note = parse_note(GO_NOTE)
    assert note == Note(GO_TEXT, (GO_SIGNATURE,))
    assert len(GO_SIGNATURE.signature) == 64
    assert GO_SIGNATURE.key_label == Verifier.from_verifier_key(GO_VKEY).key_label
    assert note.signer_names == ["PeterNeumann"]
    assert note.render() == GO_NOTE


def test_parse_does_not_verify() -> None:
    # a forged text and a key nobody trusts both parse; only opening tells them apart
    forged = GO_NOTE.replace("cryptography", "cryptographY")
    assert parse_note(forged).signatures == (GO_SIGNATURE,)
    with pytest.raises(BadSignature):
        open_note(forged, [Verifier.from_verifier_key(GO_VKEY)])
    other = Signer.from_private_key(generate_key("other.example/log")[0])
    note = parse_note(sign_note("a\nb\n", other))
    assert note.text == "a\nb\n" and note.signer_names == ["other.example/log"]
    assert note.signatures[0].key_hash == other.key_hash
    with pytest.raises(UnknownKey):
        open_note(sign_note("a\nb\n", other), [Verifier.from_verifier_key(GO_VKEY)])


@pytest.mark.parametrize("mangle", MANGLES)
def test_parse_rejects_malformed_notes(mangle) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MalformedCheckpoint):
        parse_note(mangle(GO_NOTE))


def test_parse_limits() -> None:
    sig_line = GO_NOTE.split("\n\n", 1)[1]
    assert len(parse_note(GO_NOTE + sig_line * (MAX_SIGNATURES - 1)).signatures) == MAX_SIGNATURES
    with pytest.raises(MalformedCheckpoint, match="more than"):
        parse_note(GO_NOTE + sig_line * MAX_SIGNATURES)
    with pytest.raises(MalformedCheckpoint, match="larger than"):
        parse_note("x" * (1 << 20) + GO_NOTE)


PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Note text lines: any characters but control characters (newline separates the lines).
TEXT_LINES = st.lists(
    st.text(st.characters(min_codepoint=0x20, blacklist_categories=("Cs",)), max_size=30),
    min_size=1,
    max_size=6,
)
NAMES = st.text(
    st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1, max_size=20
).filter(is_valid_name)
SIGNATURES = st.builds(
    NoteSignature,
    NAMES,
    st.integers(0, 2**32 - 1),
    st.binary(min_size=1, max_size=80),
)


@PROPERTY
@given(lines=TEXT_LINES, signatures=st.lists(SIGNATURES, min_size=1, max_size=5))
def test_property_render_then_parse_is_identity(
    lines: list[str], signatures: list[NoteSignature]
) -> None:
    note = Note("\n".join(lines) + "\n", tuple(signatures))
    assert parse_note(note.render()) == note


@PROPERTY
@given(lines=TEXT_LINES, name=NAMES)
def test_property_open_builds_on_parse(lines: list[str], name: str) -> None:
    text = "\n".join(lines) + "\n"
    signer = Signer.from_private_key(generate_key(name)[0])
    try:
        signed = sign_note(text, signer)
    except MalformedCheckpoint:
        assert "\n\n" in text  # sign_note refuses blank lines; parse_note allows them
        return
    assert open_note(signed, [signer.verifier]) == (parse_note(signed).text, [signer.verifier])
    assert parse_note(signed).signatures[0].key_label == signer.verifier.key_label


@PROPERTY
@given(
    position=st.integers(0, len(GO_NOTE)),
    cut=st.integers(0, 8),
    insert=st.text(max_size=4),
)
def test_property_parse_accepts_exactly_what_it_can_render(
    position: int, cut: int, insert: str
) -> None:
    """Whatever the edit, parse_note raises MalformedCheckpoint or gives back a note that
    renders to the very same text; a note that opens always parses to the same text."""
    edited = GO_NOTE[:position] + insert + GO_NOTE[position + cut :]
    try:
        note = parse_note(edited)
    except MalformedCheckpoint as exc:
        assert str(exc) and "\n" not in str(exc)
        with pytest.raises(MalformedCheckpoint):
            open_note(edited, [Verifier.from_verifier_key(GO_VKEY)])
        return
    assert note.render() == edited
    try:
        text, _ = open_note(edited, [Verifier.from_verifier_key(GO_VKEY)])
    except (BadSignature, UnknownKey):
        return
    assert text == note.text
