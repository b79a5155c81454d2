"""Build tests/tools/auditclient (the Kubernetes audit client) once per source hash, cached.

The binary goes to ~/.cache/sealtrail/auditclient/<hash>/ (or $XDG_CACHE_HOME), keyed by the
Go sources and ``go version``, so only the first run on a machine pays for the build (about 1.5
minutes on 2 cores with an empty Go cache; the modules come from the Go module proxy once).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

TOOL_DIR = Path(__file__).resolve().parent / "auditclient"
TOOL_SOURCES = ("go.mod", "go.sum", "main.go")


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sealtrail" / "auditclient"


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        pytest.fail(
            "these tests need the Go toolchain (go >= 1.26, see tests/tools/auditclient/go.mod) "
            "on PATH to build the Kubernetes audit client; install it from https://go.dev/dl/",
            pytrace=False,
        )
    return go


def auditclient_binary() -> Path:
    """The built client, from the cache when its sources and the Go version are unchanged."""
    go = _go()
    version = subprocess.run(
        [go, "version"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    digest = hashlib.sha256(version.encode())
    for name in TOOL_SOURCES:
        digest.update(name.encode() + b"\0" + (TOOL_DIR / name).read_bytes())
    target = cache_root() / digest.hexdigest()[:16] / "auditclient"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"auditclient.{os.getpid()}.partial")
    result = subprocess.run(
        [go, "build", "-trimpath", "-mod=readonly", "-o", str(partial), "."],
        cwd=TOOL_DIR,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"building tests/tools/auditclient failed:\n{result.stderr[-4000:]}", pytrace=False
        )
    partial.replace(target)  # atomic: a parallel run sees the whole binary or none
    return target
