"""The verifier's state file: per chain, the last verified head (JSON, written atomically).

Anyone who can edit this file can make the verifier trust a rewritten history, so keep it where
the log's writers cannot write (the verifier's own volume).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from processors.verifier.core import ChainState
from sealtrail.infra.errors import ConfigError, IntegrityError

__all__ = ["STATE_VERSION", "ClickHouseState", "load_clickhouse_state", "load_state", "save_state"]

STATE_VERSION = 1


@dataclass(slots=True)
class ClickHouseState:
    """What the last clean ClickHouse check proved: the ``events`` table (by uuid) held these
    active data parts (name -> rows and ``hash_of_all_files``), and per chain the rows seq
    0..size-1 whose hashes give the compact range ``compact`` (the verified chain's)."""

    table_uuid: str
    parts: dict[str, tuple[int, str]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    compacts: dict[str, bytes] = field(default_factory=dict)


def _bad(path: Path, why: str) -> ConfigError:
    return ConfigError(
        f"verifier state file {path} is unusable ({why}); restore it or run with --full "
        "and a new --state file"
    )


def load_state(path: Path, deployment: str) -> dict[str, ChainState]:
    """The remembered heads by chain id; an absent file means a first run (empty)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise _bad(path, type(exc).__name__) from None
    try:
        doc = json.loads(text)
        if doc.get("version") != STATE_VERSION:
            raise _bad(path, f"version {doc.get('version')!r}, expected {STATE_VERSION}")
        if doc.get("deployment") != deployment:
            raise _bad(path, f"it belongs to deployment {doc.get('deployment')!r}")
        out: dict[str, ChainState] = {}
        for chain, c in doc["chains"].items():
            out[chain] = ChainState(
                chain=chain,
                size=int(c["size"]),
                head_hash=bytes.fromhex(c["head_hash"]),
                offset=int(c["offset"]),
                compact=bytes.fromhex(c["compact"]),
                checkpoint_size=int(c.get("checkpoint_size", 0)),
                checkpoint_root=bytes.fromhex(c.get("checkpoint_root", "")),
            )
            out[chain].compact_range()  # validates the compact range length
    except ConfigError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, IntegrityError) as exc:
        raise _bad(path, f"{type(exc).__name__}") from None
    return out


def load_clickhouse_state(path: Path) -> ClickHouseState | None:
    """The remembered ClickHouse parts (None: none yet; the next check is a full one).
    Call after :func:`load_state`, which validated the file."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise _bad(path, type(exc).__name__) from None
    ch = doc.get("clickhouse")
    if not ch:
        return None
    try:
        return ClickHouseState(
            table_uuid=str(ch["table_uuid"]),
            parts={str(k): (int(v[0]), str(v[1])) for k, v in ch["parts"].items()},
            sizes={str(k): int(v) for k, v in ch["sizes"].items()},
            compacts={str(k): bytes.fromhex(v) for k, v in ch["compacts"].items()},
        )
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise _bad(path, f"clickhouse section: {type(exc).__name__}") from None


def save_state(
    path: Path,
    deployment: str,
    chains: dict[str, ChainState],
    clickhouse: ClickHouseState | None = None,
) -> None:
    """Write the state atomically (temp file, fsync, rename)."""
    path = Path(path)
    doc: dict[str, Any] = {
        "version": STATE_VERSION,
        "deployment": deployment,
        "chains": {
            chain: {
                "size": s.size,
                "head_hash": s.head_hash.hex(),
                "offset": s.offset,
                "compact": s.compact.hex(),
                "checkpoint_size": s.checkpoint_size,
                "checkpoint_root": s.checkpoint_root.hex(),
            }
            for chain, s in sorted(chains.items())
        },
    }
    if clickhouse is not None:
        doc["clickhouse"] = {
            "table_uuid": clickhouse.table_uuid,
            "parts": {k: list(v) for k, v in sorted(clickhouse.parts.items())},
            "sizes": dict(sorted(clickhouse.sizes.items())),
            "compacts": {k: v.hex() for k, v in sorted(clickhouse.compacts.items())},
        }
    write_atomic(path, json.dumps(doc, indent=1) + "\n")


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so readers see the old or the new file, never half."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise ConfigError(f"cannot write {path} ({exc.strerror}); check the path") from None
