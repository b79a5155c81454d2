"""Key files: 0600 generation, no overwrite, refusal of group/world accessible private keys."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from urllib.parse import unquote

import pytest

from processors.integrity.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from processors.integrity.errors import KeyFileError
from processors.integrity.keys import file_stem, load_signer, load_verifiers, write_keypair
from processors.integrity.merkle import EMPTY_ROOT
from processors.integrity.record import ZERO_HASH


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def lax_umask():  # type: ignore[no-untyped-def]
    old = os.umask(0o000)
    yield
    os.umask(old)


def test_write_keypair_modes_and_round_trip(tmp_path: Path, lax_umask: None) -> None:
    priv, pub = write_keypair("sealtrail.local", tmp_path / "keys")
    assert priv.name == "sealtrail.local.key" and pub.name == "sealtrail.local.pub"
    assert mode(priv) == 0o600 and mode(pub) == 0o644
    assert priv.read_text().startswith("PRIVATE+KEY+sealtrail.local+")
    signer = load_signer(priv)
    ring = load_verifiers(pub)
    cp = Checkpoint("sealtrail.local/audit.events/0", 0, EMPTY_ROOT, ZERO_HASH, 1)
    assert open_checkpoint(sign_checkpoint(cp, signer), ring) == cp


def test_strict_umask_still_gives_readable_pub(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        priv, pub = write_keypair("k", tmp_path)
    finally:
        os.umask(old)
    assert mode(priv) == 0o600 and mode(pub) == 0o644


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    priv, _ = write_keypair("k", tmp_path)
    before = priv.read_text()
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        write_keypair("k", tmp_path)
    assert priv.read_text() == before
    (tmp_path / "j.pub").write_text("x")
    with pytest.raises(KeyFileError):
        write_keypair("j", tmp_path)
    assert not (tmp_path / "j.key").exists()


@pytest.mark.parametrize("perm", [0o644, 0o640, 0o604, 0o620, 0o602, 0o660])
def test_load_signer_refuses_shared_key(tmp_path: Path, perm: int) -> None:
    priv, _ = write_keypair("k", tmp_path)
    secret = priv.read_text().strip().split("+", 4)[4]
    priv.chmod(perm)
    with pytest.raises(KeyFileError) as info:
        load_signer(priv)
    msg = str(info.value)
    assert f"chmod 600 {priv}" in msg
    assert secret not in msg and secret[:10] not in msg
    priv.chmod(0o600)
    load_signer(priv)
    priv.chmod(0o400)
    load_signer(priv)


def test_load_signer_errors_never_show_key_material(tmp_path: Path) -> None:
    priv, pub = write_keypair("k", tmp_path)
    secret = priv.read_text().strip()
    corrupted = tmp_path / "bad.key"
    fd = os.open(corrupted, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, secret[:-3].encode() + b"\n")
    os.close(fd)
    with pytest.raises(KeyFileError) as info:
        load_signer(corrupted)
    assert secret.split("+", 4)[4][:10] not in str(info.value)
    with pytest.raises(KeyFileError):
        load_signer(tmp_path / "missing.key")
    with pytest.raises(KeyFileError):
        load_signer(tmp_path)
    pub.chmod(0o600)
    with pytest.raises(KeyFileError):
        load_signer(pub)  # a verifier key is not a private key


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("sealtrail.local", "sealtrail.local"),
        ("example.com/audit", "example.com%2Faudit"),
        ("a_b-c~d", "a_b-c~d"),
        ("..", ".."),
        ("ex/../../etc", "ex%2F..%2F..%2Fetc"),
        ("back\\slash:colon%", "back%5Cslash%3Acolon%25"),
        ("prod/événements", "prod%2F%C3%A9v%C3%A9nements"),
    ],
)
def test_file_stem_is_percent_encoding(name: str, stem: str) -> None:
    assert file_stem(name) == stem
    assert unquote(stem) == name  # one-to-one: the name comes back


def test_origin_style_key_names_write_safe_files(tmp_path: Path) -> None:
    priv, pub = write_keypair("example.com/audit", tmp_path)
    assert (priv.name, pub.name) == ("example.com%2Faudit.key", "example.com%2Faudit.pub")
    assert sorted(p.name for p in tmp_path.iterdir()) == [pub.name, priv.name][::-1]
    signer = load_signer(priv)
    assert signer.name == "example.com/audit"
    cp = Checkpoint("example.com/audit/audit.events/0", 0, EMPTY_ROOT, ZERO_HASH, 1)
    note = sign_checkpoint(cp, signer)
    assert "\n\u2014 example.com/audit " in note
    assert open_checkpoint(note, load_verifiers(pub)) == cp
    # A path-like name never leaves the directory.
    priv2, _ = write_keypair("../../escape", tmp_path)
    assert priv2.parent == tmp_path and priv2.name == "..%2F..%2Fescape.key"


@pytest.mark.parametrize("name", ["", "a b", "a+b", "tab\there", "nl\nx", "nb\u00a0sp", "c\x1fx"])
def test_names_the_note_format_refuses_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(KeyFileError) as err:
        write_keypair(name, tmp_path)
    message = str(err.value)
    assert "not a valid signed-note key name" in message and "example.com/audit" in message
    assert list(tmp_path.iterdir()) == []


def test_too_long_key_name_is_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="longer than 255 bytes"):
        write_keypair("é" * 100, tmp_path)  # 200 UTF-8 bytes, 600 encoded
    assert list(tmp_path.iterdir()) == []
