"""The verifier key ring option (``--key``, ``SEALTRAIL_VERIFIER_KEYS``) that the reading
commands share: ``verify``, ``prove``, ``verify-proof``, ``query --verify`` and ``history
--verify``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from processors.integrity.checkpoint import KeyRing
from processors.integrity.note import Verifier
from sealtrail.infra.errors import KeyFileError

ENV_VERIFIER_KEYS = "SEALTRAIL_VERIFIER_KEYS"

_VERIFIER_KEY = re.compile(r"[^+\s]+\+[0-9a-f]{8}\+[A-Za-z0-9+/]+=*")


def load_keyring(value: str | None) -> KeyRing:
    """A key ring from a file path (key ring or .pub) or a verifier key string."""
    if not value:
        raise KeyFileError(
            f"no verifier key given; pass --key FILE (a .pub file or key ring) or set "
            f"{ENV_VERIFIER_KEYS}"
        )
    path = Path(value)
    # A key name may contain '/' (example.com/audit), so only the key's shape tells it from a path.
    if path.exists() or not _VERIFIER_KEY.fullmatch(value.strip()):
        return KeyRing.load(path)
    ring = KeyRing()
    ring.add(Verifier.from_verifier_key(value))
    return ring


KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--key",
        envvar=ENV_VERIFIER_KEYS,
        help="Trusted verifier key(s): a key ring file, a .pub file or a verifier key string.",
        show_envvar=True,
    ),
]
