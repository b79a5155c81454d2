"""The verification report: JSON for people and tools, Prometheus text for node-exporter."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from processors.verifier.core import ChainResult
from processors.verifier.state import write_atomic
from sealtrail.infra.errors import IntegrityError

__all__ = ["FINDING_KINDS", "Report", "unsigned_records", "write_metrics"]

# Every kind gets a series (0 when clean) so alerts can use `> 0` without absent().
FINDING_KINDS = (
    "seq_gap",
    "seq_repeat",
    "chain_broken",
    "hash_mismatch",
    "bad_signature",
    "unknown_key",
    "key_out_of_range",
    "checkpoint_mismatch",
    "fork",
    "truncated",
    "records_deleted",
    "history_rewritten",
    "malformed_checkpoint",
    "malformed_record",
    "clickhouse_mismatch",
    "not_anchored",
)


@dataclass(slots=True)
class Report:
    """The outcome of one ``sealtrail verify`` run."""

    deployment: str
    started: float = field(default_factory=time.time)
    finished: float = 0.0
    chains: list[ChainResult] = field(default_factory=list)
    clickhouse: list[ChainResult] = field(default_factory=list)
    clickhouse_checked: bool = False
    warnings: list[str] = field(default_factory=list)

    def findings(self) -> list[IntegrityError]:
        out: list[IntegrityError] = []
        for r in [*self.chains, *self.clickhouse]:
            out.extend(r.findings)
        return out

    @property
    def findings_total(self) -> int:
        return sum(r.findings_total for r in [*self.chains, *self.clickhouse])

    @property
    def ok(self) -> bool:
        return self.findings_total == 0

    @property
    def records_verified(self) -> int:
        return sum(r.records_verified for r in self.chains)

    def kinds(self) -> Counter[str]:
        return Counter(f.kind for f in self.findings())

    @property
    def empty_chains(self) -> int:
        """Chains without records (a raw partition that never got an event)."""
        return sum(1 for r in self.chains if r.size == 0 and r.ok)

    @property
    def unsigned_records(self) -> int:
        """Records no verified checkpoint covers yet, over every chain."""
        return sum(unsigned_records(r) for r in self.chains)

    def unsigned_tails(self) -> list[str]:
        """One line per clean, anchored chain that has records above its newest verified
        checkpoint: they are linked to it but no signature covers them yet, so whoever can
        write the chain topic could have appended them (docs/FORMAT.md section 8). Not a
        finding; a chain with no checkpoint at all gets the "linked, not anchored" warning."""
        return [
            f"chain {r.chain}: {unsigned_records(r)} record(s) above the newest "
            f"checkpoint (size {r.newest_checkpoint}) are linked but not yet signed"
            for r in self.chains
            if r.ok and r.newest_checkpoint is not None and r.size > r.newest_checkpoint
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "deployment": self.deployment,
            "ok": self.ok,
            "started": self.started,
            "finished": self.finished,
            "records_verified": self.records_verified,
            "unsigned_records": self.unsigned_records,
            "findings_total": self.findings_total,
            "findings": [f.evidence() for f in self.findings()],
            "warnings": [*self.warnings, *(w for r in self.chains for w in r.warnings)],
            "clickhouse_checked": self.clickhouse_checked,
            "chains": [
                {
                    "chain": r.chain,
                    "size": r.size,
                    "start_seq": r.start_seq,
                    "records_verified": r.records_verified,
                    "checkpoints_verified": r.checkpoints_verified,
                    "newest_checkpoint": r.newest_checkpoint,
                    "anchored": r.anchored,
                    "unsigned_records": unsigned_records(r),
                    "root": r.root.hex(),
                    "findings": r.findings_total,
                }
                for r in self.chains
            ],
            "clickhouse": [
                {
                    "chain": r.chain,
                    "rows_verified": r.records_verified,
                    "findings": r.findings_total,
                }
                for r in self.clickhouse
            ],
        }

    def write_json(self, path: Path) -> None:
        write_atomic(path, json.dumps(self.to_json(), indent=1, default=str) + "\n")


def unsigned_records(result: ChainResult) -> int:
    """A chain's records above its newest verified checkpoint (all of them without one)."""
    return max(0, result.size - (result.newest_checkpoint or 0))


def _fmt(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def write_metrics(path: Path, report: Report, last_success: float | None) -> None:
    """Prometheus text exposition, written atomically (node-exporter textfile collector).

    ``records_verified_total`` is a true counter: the previous file's value plus this run's."""
    kinds = report.kinds()
    before = _previous(path, "sealtrail_verify_records_verified_total") or 0.0
    lines = [
        "# HELP sealtrail_verify_last_success_timestamp_seconds "
        "When a verification last found nothing wrong.",
        "# TYPE sealtrail_verify_last_success_timestamp_seconds gauge",
        f"sealtrail_verify_last_success_timestamp_seconds {_fmt(last_success or 0.0)}",
        "# HELP sealtrail_verify_last_run_timestamp_seconds When the last verification ended.",
        "# TYPE sealtrail_verify_last_run_timestamp_seconds gauge",
        f"sealtrail_verify_last_run_timestamp_seconds {_fmt(report.finished)}",
        "# HELP sealtrail_verify_records_verified_total Records verified, summed over runs.",
        "# TYPE sealtrail_verify_records_verified_total counter",
        f"sealtrail_verify_records_verified_total {int(before) + report.records_verified}",
        "# HELP sealtrail_verify_last_run_records Records verified by the last run.",
        "# TYPE sealtrail_verify_last_run_records gauge",
        f"sealtrail_verify_last_run_records {report.records_verified}",
        "# HELP sealtrail_verify_findings Integrity findings of the last run, by kind.",
        "# TYPE sealtrail_verify_findings gauge",
    ]
    for kind in sorted(set(FINDING_KINDS) | set(kinds)):
        lines.append(f'sealtrail_verify_findings{{kind="{kind}"}} {kinds.get(kind, 0)}')
    lines += [
        "# HELP sealtrail_verify_unsigned_records Records linked to their chain but above its "
        "newest verified checkpoint, over every chain (no signature covers them yet).",
        "# TYPE sealtrail_verify_unsigned_records gauge",
        f"sealtrail_verify_unsigned_records {report.unsigned_records}",
        "# HELP sealtrail_verify_chains Chains checked by the last run.",
        "# TYPE sealtrail_verify_chains gauge",
        f"sealtrail_verify_chains {len(report.chains)}",
        "# HELP sealtrail_verify_duration_seconds How long the last run took.",
        "# TYPE sealtrail_verify_duration_seconds gauge",
        f"sealtrail_verify_duration_seconds {_fmt(max(0.0, report.finished - report.started))}",
    ]
    write_atomic(path, "\n".join(lines) + "\n")


def previous_success(path: Path) -> float | None:
    """The last-success timestamp of an earlier metrics file, kept across failed runs."""
    return _previous(path, "sealtrail_verify_last_success_timestamp_seconds")


def _previous(path: Path, name: str) -> float | None:
    try:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None
