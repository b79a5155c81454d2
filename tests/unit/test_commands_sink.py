"""sealtrail.commands.sink: history's kind -> resource mapping."""

from __future__ import annotations

import pytest

from sealtrail.commands.sink import resource_of
from sealtrail.infra.errors import ConfigError


def test_kinds_map_to_resources() -> None:
    assert resource_of("deployment") == "deployments"
    assert resource_of("Deploy") == "deployments"
    assert resource_of("deployments.apps") == "deployments"
    assert resource_of("ingress") == "ingresses"
    assert resource_of("networkpolicy") == "networkpolicies"
    assert resource_of("widget") == "widgets"
    with pytest.raises(ConfigError, match="not a Kubernetes kind"):
        resource_of("a b")
