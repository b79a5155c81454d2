"""docs/FORMAT.md is normative: check its vectors and examples against the code."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from processors.integrity.checkpoint import Checkpoint, KeyRing, open_checkpoint, sign_checkpoint
from processors.integrity.merkle import leaf_hash, node_hash, root_of
from processors.integrity.note import Signer
from processors.integrity.record import ZERO_HASH, record_hash

DOC = (Path(__file__).resolve().parents[2] / "docs" / "FORMAT.md").read_text(encoding="utf-8")


def block(tag: str) -> str:
    m = re.search(rf"```{tag}\n(.*?)```", DOC, re.S)
    assert m, f"FORMAT.md lost its {tag} block"
    return m.group(1)


def vectors() -> list[dict[str, str]]:
    out = []
    for chunk in block("vectors").strip().split("\n\n"):
        lines = chunk.splitlines()
        assert lines[0].startswith("vector ")
        fields = {}
        for line in lines[1:]:
            key, _, value = line.partition("=")
            fields[key.strip()] = value.strip()
        out.append(fields)
    return out


def payload_of(text: str) -> bytes:
    if text.startswith("000102...ff"):
        return bytes(range(256))
    return bytes.fromhex(text)


def test_record_vectors_in_doc() -> None:
    vs = vectors()
    assert len(vs) == 3
    for v in vs:
        got = record_hash(
            v["chain"],
            int(v["seq"]),
            bytes.fromhex(v["prev_hash"]),
            int(v["source_offset"]),
            int(v["ingested_at_us"]),
            payload_of(v["payload"]),
        )
        assert got.hex() == v["hash"], v
    assert bytes.fromhex(vs[0]["prev_hash"]) == ZERO_HASH
    assert vs[1]["prev_hash"] == vs[0]["hash"]


def test_worked_layout_in_doc() -> None:
    rows = re.findall(r"^\| `[^`]*\(.*?\)` \| (.*) \|$", DOC, re.M)
    hexes = "".join(re.sub(r"[`\s]", "", r) for r in rows)
    raw = bytes.fromhex(hexes)
    assert len(raw) == 126
    import hashlib

    assert hashlib.sha256(raw).hexdigest() == vectors()[1]["hash"]


def test_merkle_root_and_checkpoint_example_in_doc() -> None:
    vs = vectors()
    h1, h2 = bytes.fromhex(vs[0]["hash"]), bytes.fromhex(vs[1]["hash"])
    root = root_of([h1, h2])
    assert root == node_hash(leaf_hash(h1), leaf_hash(h2))
    assert root.hex() in DOC
    skey, vkey = block("example-key").split()
    signer = Signer.from_private_key(skey)
    assert signer.verifier.verifier_key() == vkey
    note = block("checkpoint-example")
    cp = open_checkpoint(note, KeyRing.parse(vkey), origin="sealtrail.local/audit.events/0")
    assert cp == Checkpoint("sealtrail.local/audit.events/0", 2, root, h2, 1_700_000_000_123_456)
    assert sign_checkpoint(cp, signer) == note  # Ed25519 is deterministic
    assert base64.b64decode(note.splitlines()[2]) == root
