"""What a sink run can be told, and what it counts."""

from __future__ import annotations

from dataclasses import dataclass

from sealtrail.infra.errors import ConfigError
from sealtrail.infra.metrics_server import InheritedSocket


@dataclass(frozen=True, slots=True)
class SinkOptions:
    batch_rows: int = 10000
    batch_ms: int = 1000
    # Embedded store: how long rows wait for company once no insert runs (at most batch_ms).
    linger_ms: int = 250
    once: bool = False
    group: str = ""  # default: Settings.groups.sink (<topic prefix>sealtrail-sink)
    # Embedded ClickHouse only: the engine decodes the payloads (processors/sink_avro.py).
    avro_fast_path: bool = True
    # Embedded ClickHouse only: serve read-only queries on a socket (sealtrail/liveserver.py).
    serve_reads: bool = True
    # (host, port) serving GET /metrics (--metrics-listen), or the socket 'sealtrail run'
    # handed over; None: no metrics endpoint.
    metrics_listen: tuple[str, int] | InheritedSocket | None = None

    def __post_init__(self) -> None:
        if self.batch_rows < 1:
            raise ConfigError(f"--batch-rows must be at least 1, not {self.batch_rows}")
        if self.batch_ms < 1:
            raise ConfigError(f"--batch-ms must be at least 1, not {self.batch_ms}")
        if self.linger_ms < 0:
            raise ConfigError(f"--linger-ms must be 0 or more, not {self.linger_ms}")


@dataclass(slots=True)
class SinkStats:
    consumed: int = 0  # records read from the chain and checkpoint topics
    inserted: int = 0  # events rows written
    skipped: int = 0  # records already stored
    rejects: int = 0  # rows written to rejects
    checkpoints: int = 0  # checkpoint rows written
    batches: int = 0
    retries: int = 0
    consumer_rebuilds: int = 0
    insert_seconds: float = 0.0
    decode_seconds: float = 0.0
    fast_batches: int = 0  # chain batches ClickHouse decoded (sink_avro)
    fast_fallbacks: int = 0  # of those, batches the fast insert failed on: redone in Python
    python_batches: int = 0  # chain batches decoded in Python (not eligible, or a fallback)
    subtree_seconds: float = 0.0  # writing the stored Merkle subtrees (sink/subtrees.py)

    def as_dict(self) -> dict[str, float | int]:
        return {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]
