"""The embedded store's owner lock (sealtrail.infra.clickhouse): a full disk never gives a
traceback."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sealtrail.infra import clickhouse
from sealtrail.infra.errors import ClickHouseError


@pytest.fixture
def release(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    fd = clickhouse._owner_lock_fds.pop(tmp_path, None)
    if fd is not None:
        os.close(fd)


def _enospc(*_: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_owner_name_that_cannot_be_written_still_takes_the_lock(
    release: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clickhouse.os, "write", _enospc)
    clickhouse._take_ownership(release)
    assert clickhouse.owns(release)
    # Another opener sees the store as taken (by an unnamed process).
    assert clickhouse.holder_of(release) == "another process"


def test_lock_that_cannot_be_created_is_one_sentence(
    release: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clickhouse.os, "open", _enospc)
    with pytest.raises(ClickHouseError) as caught:
        clickhouse._take_ownership(release)
    message = str(caught.value)
    assert "No space left on device" in message and "\n" not in message
    assert not clickhouse.owns(release)


_OPENBLAS_THREADS = """
import ctypes, sys
from sealtrail.infra import clickhouse
from sealtrail.infra.config import Settings
clickhouse.connect(Settings(clickhouse="chdb://" + sys.argv[1], clickhouse_database="t"))
lib = next(line.split()[-1] for line in open("/proc/self/maps") if "openblas" in line)
print(ctypes.CDLL(lib).scipy_openblas_get_num_threads64_())
"""


@pytest.mark.parametrize(("given", "threads"), [(None, 1), ("2", 2)])
def test_opening_the_embedded_store_starts_no_openblas_threads_unless_asked(
    tmp_path: Path, given: str | None, threads: int
) -> None:
    """chdb loads numpy; its OpenBLAS would start a spinning thread per core in every process
    that opens a store. One thread (none extra) unless the user set OPENBLAS_NUM_THREADS."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if given is not None:
        env["OPENBLAS_NUM_THREADS"] = given
    out = subprocess.run(
        [sys.executable, "-c", _OPENBLAS_THREADS, str(tmp_path / "store")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert int(out.stdout.split()[-1]) == threads
