"""``sealtrail prove`` reading a chain from Kafka: a chain read that lags the checkpoint it
proves against (the broker writes a transaction's commit markers partition by partition) is
read again, not refused as cut short."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from processors.integrity.checkpoint import KeyRing
from processors.integrity.errors import Truncated
from processors.proofs import verify_proof
from processors.verifier import kafka_source
from processors.verifier.kafka_source import chain_id
from processors.verifier.prove import kafka_checkpoints, kafka_leaves, make_proof
from sealtrail.infra.config import Settings
from tests.integration.verifier_kafka_support import lagging_two_rounds

pytestmark = pytest.mark.integration


def test_a_chain_behind_its_checkpoint_is_read_again_and_the_proof_checks(
    settings: Settings,
    keypair: tuple[Path, Path],
    keyring: KeyRing,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = lagging_two_rounds(settings, keypair[0], monkeypatch, 1)
    chain = chain_id(settings, 0)
    assert [cp.size for _note, cp in kafka_checkpoints(settings, chain, keyring)] == [10, 20]
    leaves = kafka_leaves(settings, chain, 20, (15,))
    assert leaves.size == 20
    assert len(calls) == 2  # read once behind, once more
    # The whole command's Kafka path (no store here) proves seq 15 in the checkpoint at 20.
    calls.clear()
    proof = make_proof(settings, keyring, chain, 15, (None, None), False, pytest.fail)
    assert len(calls) == 2
    statement = verify_proof(json.dumps(proof), keyring).statement
    assert statement.startswith(f"record seq 15 of chain {chain} ") and "at size 20" in statement


def test_a_chain_that_stays_short_of_its_checkpoint_is_refused(
    settings: Settings,
    keypair: tuple[Path, Path],
    keyring: KeyRing,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = lagging_two_rounds(settings, keypair[0], monkeypatch, 10**6)
    monkeypatch.setattr(kafka_source, "MARKER_PATIENCE_S", 1.0)
    with pytest.raises(Truncated) as refused:
        kafka_leaves(settings, chain_id(settings, 0), 20)
    assert (refused.value.expected, refused.value.found) == (20, 10)
    assert len(calls) >= 2  # it did look again before giving up
