"""sealtrail.config: settings helpers that need no network."""

from __future__ import annotations

import pytest

from sealtrail.config import parse_listen
from sealtrail.errors import ConfigError


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:9880") == ("127.0.0.1", 9880)
    assert parse_listen(":9880") == ("0.0.0.0", 9880)
    assert parse_listen("[::1]:443") == ("::1", 443)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_listen("localhost")
    with pytest.raises(ConfigError, match="--health-listen"):
        parse_listen("127.0.0.1:99999", "--health-listen")
