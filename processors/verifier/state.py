"""The verifier's state file: per chain, the last verified head (JSON, written atomically).

Anyone who can edit this file can make the verifier trust a rewritten history, so keep it where
the log's writers cannot write (the verifier's own volume).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from processors.verifier.core import ChainState
from sealtrail.errors import ConfigError, IntegrityError

__all__ = ["STATE_VERSION", "load_state", "save_state"]

STATE_VERSION = 1


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


def save_state(path: Path, deployment: str, chains: dict[str, ChainState]) -> None:
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
