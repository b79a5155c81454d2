"""The Falco project's Kubernetes audit events shipped with sealtrail (see their NOTICE.md)."""

from __future__ import annotations

from pathlib import Path

K8S_AUDIT_SAMPLES = Path(__file__).resolve().parents[1] / "data" / "k8s-audit"


def sample_lines() -> list[bytes]:
    """Every non-empty line (one audit event each; fal_01_003.json is malformed on purpose)."""
    return [
        line
        for path in sorted(K8S_AUDIT_SAMPLES.glob("*.json"))
        for line in path.read_bytes().splitlines()
        if line.strip()
    ]
