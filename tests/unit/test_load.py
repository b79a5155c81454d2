"""producers.load: the generated audit events and the EventList bodies they are sent in."""

from __future__ import annotations

import json

from producers.k8s import parse_line
from producers.load import event_list, generate


def test_load_events_are_reproducible_and_valid() -> None:
    first = list(generate(500, 4, seed=42))
    assert first == list(generate(500, 4, seed=42))
    assert first != list(generate(500, 4, seed=43))
    verbs, users, codes, subresources, agents = set(), set(), set(), set(), set()
    for cluster, line in first:
        event = parse_line(line, cluster, 0)
        verbs.add(event["verb"])
        users.add(event["user_name"])
        codes.add(event["response_code"])
        subresources.add(event["object_subresource"])
        agents.add(event["user_agent"].split("/")[0])
        assert cluster in {"cluster-1", "cluster-2", "cluster-3", "cluster-4"}
    assert {"get", "list", "watch", "create", "update", "patch", "delete"} <= verbs
    assert {"system:kube-controller-manager", "alice@example.com"} <= users
    assert any(u.startswith("system:serviceaccount:") for u in users)
    assert {200, 201, 403, 404, 409} <= codes
    assert {"exec", "attach"} <= subresources
    assert {"kubectl", "k9s", "kube-controller-manager"} <= agents
    assert len({json.loads(line)["auditID"] for _c, line in first}) == 500


def test_event_list_wraps_raw_lines() -> None:
    body = event_list([b'{"a":1}', b'{"b":2}'])
    assert json.loads(body)["items"] == [{"a": 1}, {"b": 2}]
