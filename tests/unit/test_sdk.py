"""producers.sdk: the parts that need no broker (emitting is tested in tests/integration)."""

from __future__ import annotations

import uuid

from producers.sdk import _new_event_id


def test_new_event_ids_are_version_4_uuids_as_uuid4_writes_them() -> None:
    ids = {_new_event_id() for _ in range(2000)}
    assert len(ids) == 2000
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text
