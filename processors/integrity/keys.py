"""Key files: generation with safe permissions, and loading signers and key rings.

``<stem>.key`` holds the private key string (mode 0600, never overwritten) and ``<stem>.pub``
the verifier key (mode 0644), ``stem`` being the key name percent-encoded by
:func:`file_stem` (``example.com/audit`` -> ``example.com%2Faudit``). :func:`load_signer`
refuses a private key file that group or others can read or write. No error message ever
includes key material.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from processors.integrity.checkpoint import KeyRing
from processors.integrity.errors import KeyFileError
from processors.integrity.note import Signer, generate_key, is_valid_name

__all__ = ["file_stem", "load_signer", "load_verifiers", "write_keypair"]

_MAX_KEY_FILE = 4096
# RFC 3986 unreserved characters: the bytes a file stem keeps as they are.
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_MAX_FILE_NAME = 255  # bytes, the common file system limit


def file_stem(name: str) -> str:
    """The file name stem of key ``name``: its UTF-8 bytes, each byte outside ``A-Z a-z 0-9 - .
    _ ~`` written ``%XX`` (uppercase hex). One-to-one, never a path separator, and never ``.``
    or ``..`` once ``.key`` / ``.pub`` is appended. The same encoding names offsite files."""
    if not is_valid_name(name):
        raise KeyFileError(
            f"key name {name!r} is not a valid signed-note key name; use a non-empty name "
            "without whitespace, control characters or '+', e.g. example.com/audit"
        )
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in name.encode("utf-8"))


def _write_new(path: Path, data: str, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists; refusing to overwrite a key") from None
    except OSError as exc:
        raise KeyFileError(f"cannot create {path} ({exc.strerror}); check the directory") from None
    try:
        os.fchmod(fd, mode)  # the umask may have removed bits we want (e.g. 0644 on .pub)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fd = -1
            fh.write(data)
    finally:
        if fd >= 0:
            os.close(fd)


def write_keypair(name: str, out_dir: Path) -> tuple[Path, Path]:
    """Generate a key pair for ``name``; write ``<stem>.key`` (0600) and ``<stem>.pub`` (0644),
    ``stem`` = :func:`file_stem` of ``name``."""
    stem = file_stem(name)
    if name.startswith("#"):
        # Valid in a signed note, but a key ring line (docs/FORMAT.md section 7) that starts
        # with '#' is a comment: the .pub file would hold no key for any verifier.
        raise KeyFileError(
            f"key name {name!r} starts with '#', which starts a comment in a key ring or .pub "
            "file; choose a name that does not start with '#'"
        )
    if len(stem) + len(".key") > _MAX_FILE_NAME:
        raise KeyFileError(
            f"key name {name!r} gives a file name longer than {_MAX_FILE_NAME} bytes; "
            "choose a shorter name"
        )
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyFileError(f"cannot create {out_dir} ({exc.strerror}); check the path") from None
    priv_path = out_dir / f"{stem}.key"
    pub_path = out_dir / f"{stem}.pub"
    for p in (priv_path, pub_path):
        if p.exists() or p.is_symlink():
            raise KeyFileError(f"{p} already exists; refusing to overwrite a key")
    skey, vkey = generate_key(name)
    _write_new(priv_path, skey + "\n", 0o600)
    _write_new(pub_path, vkey + "\n", 0o644)
    return priv_path, pub_path


def load_signer(path: str | Path) -> Signer:
    """Load a private key file; refuse it unless only its owner can read and write it."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY)
    except OSError as exc:
        raise KeyFileError(
            f"cannot open private key {p} ({exc.strerror}); check the path"
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"private key {p} is not a regular file; check the path")
        if st.st_mode & 0o077:
            raise KeyFileError(
                f"private key {p} is accessible by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {p}`"
            )
        chunks = []
        total = 0
        while total <= _MAX_KEY_FILE:
            chunk = os.read(fd, _MAX_KEY_FILE + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        raw = b"".join(chunks)
    except OSError as exc:
        raise KeyFileError(f"cannot read private key {p} ({exc.strerror}); check it") from None
    finally:
        os.close(fd)
    if len(raw) > _MAX_KEY_FILE:
        raise KeyFileError(f"private key {p} is too large to be a key; check the path")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyFileError(f"private key {p} is not text; check the path") from None
    try:
        return Signer.from_private_key(text)
    except KeyFileError as exc:
        raise KeyFileError(f"{p}: {exc}") from None


def load_verifiers(path: str | Path) -> KeyRing:
    """Load a key ring file or a single ``.pub`` verifier key file."""
    return KeyRing.load(path)
