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
