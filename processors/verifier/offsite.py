"""Checkpoint notes kept outside Kafka: one file per chain, each note between delimiter lines.

File ``<dir>/<quoted chain id>.checkpoints`` (chain id percent-encoded, ``/`` -> ``%2F``)::

    -----BEGIN SEALTRAIL CHECKPOINT-----
    <signed note, its own blank line included>
    -----END SEALTRAIL CHECKPOINT-----

A signed note can never contain the END line (its lines are an origin without spaces, numbers,
base64, the ``sealtrail-head`` line, a blank line and em-dash signature lines), so reading is
unambiguous. Files are only appended to, and fsynced.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote, unquote

from sealtrail.infra.errors import ConfigError

__all__ = ["BEGIN", "END", "append_notes", "chain_file", "chains_in", "read_notes", "write_notes"]

BEGIN = "-----BEGIN SEALTRAIL CHECKPOINT-----"
END = "-----END SEALTRAIL CHECKPOINT-----"
SUFFIX = ".checkpoints"


def chain_file(directory: Path, chain: str) -> Path:
    return Path(directory) / f"{quote(chain, safe='')}{SUFFIX}"


def chains_in(directory: Path) -> list[str]:
    """The chain ids that have a file in ``directory``."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise ConfigError(
            f"cannot read the offsite checkpoint directory {directory} ({exc.strerror}); "
            "check --offsite"
        ) from None
    chains = []
    for name in names:
        if not name.endswith(SUFFIX):
            continue
        chain = unquote(name[: -len(SUFFIX)])
        if chain_file(directory, chain).name != name:
            # Read back under another name its notes would be skipped without a word.
            raise ConfigError(
                f"offsite file {Path(directory) / name} is not named by the percent-encoding "
                "of a chain id (docs/FORMAT.md section 4); rename or remove it"
            )
        chains.append(chain)
    return chains


def has_any(directory: Path) -> bool:
    return bool(chains_in(directory))


def read_notes(directory: Path, chain: str) -> list[str]:
    """Every note stored for ``chain``, deduplicated, oldest first."""
    return list(dict.fromkeys(_read_delimited(directory, chain)))


def _read_delimited(directory: Path, chain: str) -> list[str]:
    path = chain_file(directory, chain)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read offsite checkpoints {path} ({type(exc).__name__}); check the file"
        ) from None
    notes: list[str] = []
    current: list[str] | None = None
    for number, line in enumerate(text.split("\n"), 1):
        if current is None:
            if line == BEGIN:
                current = []
            elif line.strip():
                raise ConfigError(
                    f"{path}:{number} is outside a checkpoint block; the file was edited by hand"
                )
        elif line == END:
            notes.append("".join(f"{part}\n" for part in current))
            current = None
        else:
            current.append(line)
    if current is not None:
        raise ConfigError(f"{path} ends inside a checkpoint block; the last write was cut off")
    return notes


def append_notes(directory: Path, chain: str, notes: list[str]) -> int:
    """Append the notes not already stored for ``chain``; return how many were added."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {directory} ({exc.strerror}); check --to") from None
    have = set(_read_delimited(directory, chain))
    new = []
    for note in notes:
        if note not in have:
            have.add(note)
            new.append(note)
    write_notes(directory, chain, new)
    return len(new)


def write_notes(directory: Path, chain: str, notes: list[str]) -> None:
    """Append ``notes`` as they are (the chainer's path: it never writes a note twice)."""
    if not notes:
        return
    blob = "".join(f"{BEGIN}\n{n if n.endswith(chr(10)) else n + chr(10)}{END}\n" for n in notes)
    path = chain_file(directory, chain)
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise ConfigError(f"cannot write {path} ({exc.strerror}); check --to") from None
