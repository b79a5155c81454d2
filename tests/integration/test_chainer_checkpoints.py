"""Checkpoints against the real broker: none without a key, and due by time."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from processors.chainer import (
    Chainer,
    ChainerOptions,
)
from processors.integrity.checkpoint import KeyRing
from sealtrail.infra.config import Settings
from sealtrail.infra.service import StopFlag
from tests.integration.chainer_support import (
    PARTITIONS,
    check_chain,
    check_checkpoints,
    checkpoints,
    mixed_payloads,
    produce_raw,
    run_chainer,
    wait_until,
)


def test_without_key_chains_but_writes_no_checkpoints(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    produce_raw(settings, mixed_payloads(0, 60))
    with caplog.at_level(logging.INFO, logger="sealtrail.chainer"):
        chainer = run_chainer(settings)
    assert chainer.stats.records == 60
    assert "no signing key: chains will be linked but not anchored" in caplog.text
    for p in range(PARTITIONS):
        assert len(check_chain(settings, p)) == 20
        assert checkpoints(settings, p) == []


def test_time_based_checkpoints(
    settings: Settings, keypair: tuple[Path, Path], keyring: KeyRing
) -> None:
    produce_raw(settings, [(0, b"a"), (0, b"b")])
    stop = StopFlag()
    chainer = Chainer(
        settings,
        ChainerOptions(
            instance_id="t-time",
            signing_key=keypair[0],
            checkpoint_seconds=0.3,
            session_timeout_ms=6000,
        ),
        stop,
    )
    thread = threading.Thread(target=chainer.run)
    thread.start()
    try:
        wait_until(lambda: len(checkpoints(settings, 0)) >= 1, 30, "a first checkpoint")
        produce_raw(settings, [(0, b"c")])
        wait_until(lambda: len(checkpoints(settings, 0)) >= 2, 30, "a second checkpoint")
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    records = check_chain(settings, 0)
    cps = check_checkpoints(settings, 0, records, keyring)
    assert [cp.size for cp in cps] == [2, 3]
