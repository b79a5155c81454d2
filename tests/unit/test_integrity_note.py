"""C2SP signed notes: byte compatibility with Go's sumdb/note and fail-closed opening."""

from __future__ import annotations

import base64

import pytest

from processors.integrity.errors import BadSignature, KeyFileError, MalformedCheckpoint, UnknownKey
from processors.integrity.note import Signer, Verifier, generate_key, key_id, open_note, sign_note

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


@pytest.mark.parametrize(
    "mangle",
    [
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
    ],
)
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
