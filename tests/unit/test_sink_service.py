"""processors.sink.service and options: pieces of the sink that need no broker (checkpoint
notes are parsed by processors.integrity.checkpoint: tests/unit/test_integrity_checkpoint.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from processors.sink import SinkOptions
from sealtrail.infra.errors import ConfigError


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="--batch-rows"):
        SinkOptions(batch_rows=0)


def test_linger_is_how_long_rows_wait_with_no_insert_running(tmp_path: Path) -> None:
    from processors.sink import Sink
    from sealtrail.infra.config import Settings

    def wait_s(dsn: str, **options: int) -> float:
        settings = Settings(kafka="127.0.0.1:1", clickhouse=dsn)
        return Sink(settings, SinkOptions(**options))._wait_s()  # nothing is opened yet

    embedded = f"chdb://{tmp_path / 'store'}"
    assert wait_s(embedded) == 0.25  # the default
    assert wait_s(embedded, linger_ms=400) == 0.4
    assert wait_s(embedded, linger_ms=0) == 0.0
    assert wait_s(embedded, linger_ms=5000, batch_ms=1000) == 1.0  # never past --batch-ms
    # A ClickHouse server has no insert worker: a round waits --batch-ms.
    assert wait_s("http://127.0.0.1:1", linger_ms=400) == 1.0
    with pytest.raises(ConfigError, match="--linger-ms must be 0 or more, not -1"):
        SinkOptions(linger_ms=-1)


def test_the_sink_command_refuses_a_negative_linger_in_one_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from sealtrail.cli import app

    for args, env in ((["--linger-ms", "-5"], None), ([], "-5")):
        if env is not None:
            monkeypatch.setenv("SEALTRAIL_SINK_LINGER_MS", env)
        result = CliRunner().invoke(app, ["--home", str(tmp_path), "sink", *args])
        assert result.exit_code == 2, result.output
        assert "--linger-ms must be 0 or more, not -5" in result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "clickhouse").exists()  # refused before opening anything


class RecordingConsumer:
    """Stands in for the Kafka consumer of one poll: records the timeout, returns nothing."""

    def __init__(self) -> None:
        self.timeouts: list[float] = []

    def consume(self, num_messages: int, timeout: float) -> list[object]:
        self.timeouts.append(timeout)
        return []


def test_a_poll_waits_no_longer_than_the_linger_or_the_oldest_buffered_row(
    tmp_path: Path,
) -> None:
    import time

    from processors.sink import Sink
    from processors.sink.service import _Buffer
    from sealtrail.infra.config import Settings

    def sink(dsn: str) -> Sink:
        settings = Settings(kafka="127.0.0.1:1", clickhouse=dsn)
        return Sink(settings, SinkOptions(linger_ms=120, batch_ms=1000))

    # consume() waits out its whole timeout unless a full batch arrives: with nothing
    # buffered, new rows are seen after at most the linger (not a fixed 200 ms).
    embedded = sink(f"chdb://{tmp_path / 'store'}")
    consumer = RecordingConsumer()
    embedded._poll(consumer)  # type: ignore[arg-type]
    assert consumer.timeouts == [0.12]
    # Buffered rows: no longer than until the oldest is due.
    embedded._buffers[("chain", 0)] = _Buffer(messages=[object()], since=time.monotonic() - 0.1)  # type: ignore[list-item]
    embedded._poll(consumer)  # type: ignore[arg-type]
    assert 0.005 <= consumer.timeouts[-1] <= 0.02
    # A server has no insert worker: rows wait --batch-ms, looked at every 200 ms.
    server = sink("http://127.0.0.1:1")
    server._poll(consumer)  # type: ignore[arg-type]
    assert consumer.timeouts[-1] == 0.2
