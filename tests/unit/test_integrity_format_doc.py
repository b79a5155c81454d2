"""docs/FORMAT.md is normative: check its vectors and examples against the code."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from processors.chainer import chain_id as chainer_chain_id
from processors.integrity.checkpoint import (
    Checkpoint,
    KeyRing,
    open_checkpoint,
    origin_for,
    sign_checkpoint,
)
from processors.integrity.errors import MalformedCheckpoint, MalformedRecord
from processors.integrity.keys import file_stem
from processors.integrity.merkle import leaf_hash, node_hash, root_of
from processors.integrity.note import Signer, open_note, sign_note
from processors.integrity.record import (
    ZERO_HASH,
    ChainedRecord,
    ChainHead,
    check_record,
    record_hash,
)
from processors.verifier import offsite
from processors.verifier.core import SourceCheckpoint
from processors.verifier.kafka_source import chain_id as verifier_chain_id
from processors.verifier.replay import verify_chain_fields
from schemas.codec import CHAINED_EVENT, decode_chained_fields, encode_chained
from sealtrail.infra.config import Settings
from sealtrail.infra.errors import ConfigError
from tests.unit.test_codec import _crc64_avro as crc64_avro

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
    assert len(vs) == 4
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


def test_chain_naming_in_doc(tmp_path: Path) -> None:
    spec = dict(
        (k.strip(), v.strip())
        for k, _, v in (line.partition("=") for line in block("chain-naming").splitlines())
    )
    settings = Settings(
        topic_prefix=spec["SEALTRAIL_TOPIC_PREFIX"], deployment=spec["SEALTRAIL_DEPLOYMENT"]
    )
    partition = int(spec["partition"])
    topics = settings.topics
    assert (topics.raw, topics.chain, topics.checkpoints) == (
        spec["raw topic"],
        spec["chain topic"],
        spec["checkpoint topic"],
    )
    # The chainer names the chain it writes, the verifier the chain it reads: the same id.
    assert chainer_chain_id(topics.raw, partition) == spec["chain id"]
    assert verifier_chain_id(settings, partition) == spec["chain id"]
    assert origin_for(settings.deployment, spec["chain id"]) == spec["checkpoint origin"]
    assert offsite.chain_file(tmp_path, spec["chain id"]).name == spec["offsite file"]
    # Key files use the same percent-encoding as offsite files.
    assert file_stem(spec["chain id"]) + ".checkpoints" == spec["offsite file"]


def _fields(v: dict[str, str]) -> tuple[str, int, bytes, bytes, int, int, bytes]:
    return (
        v["chain"],
        int(v["seq"]),
        bytes.fromhex(v["prev_hash"]),
        bytes.fromhex(v["hash"]),
        int(v["source_offset"]),
        int(v["ingested_at_us"]),
        payload_of(v["payload"]),
    )


def test_wire_vectors_in_doc() -> None:
    wire = dict(
        (k.strip(), bytes.fromhex(v.strip()))
        for k, _, v in (line.partition("=") for line in block("wire").splitlines())
    )
    vs = vectors()
    assert set(wire) == {"vector 2", "vector 4"}
    for name, raw in wire.items():
        fields = _fields(vs[int(name.split()[1]) - 1])
        assert raw[:2] == b"\xc3\x01" and raw[2:10] == CHAINED_EVENT.fingerprint
        assert raw[2:10].hex() in DOC
        assert decode_chained_fields(raw) == fields
        names = ("chain", "seq", "prev_hash", "hash", "source_offset", "ingested_at", "payload")
        assert encode_chained(dict(zip(names, fields, strict=True))) == raw
        # Any 64-bit ingested_at verifies: the full range is format-valid.
        record = ChainedRecord(*fields)
        check_record(record, ChainHead(record.chain, record.seq, record.prev_hash))


def test_ingested_at_needs_a_plain_long_reader() -> None:
    """Section 1: a timestamp-micros reader fails on vector 4 (fastavro: OverflowError), the
    same schema with ingested_at read as a plain long gives the value that was hashed."""
    import io
    import json

    import fastavro

    raw = dict(
        (k.strip(), bytes.fromhex(v.strip()))
        for k, _, v in (line.partition("=") for line in block("wire").splitlines())
    )["vector 4"]
    schema = json.loads(
        (Path(__file__).resolve().parents[2] / "schemas" / "chained_event.avsc").read_text()
    )
    with pytest.raises(OverflowError):
        fastavro.schemaless_reader(io.BytesIO(raw[10:]), fastavro.parse_schema(schema))
    for field in schema["fields"]:
        if field["name"] == "ingested_at":
            assert field["type"] == {"type": "long", "logicalType": "timestamp-micros"}
            field["type"] = "long"
    datum = fastavro.schemaless_reader(io.BytesIO(raw[10:]), fastavro.parse_schema(schema))
    assert isinstance(datum, dict)
    assert datum["ingested_at"] == int(vectors()[3]["ingested_at_us"]) == -(2**63)


def test_hashes_must_be_exactly_32_bytes() -> None:
    v1, v2 = vectors()[:2]
    head = ChainHead(v1["chain"], 1, bytes.fromhex(v1["hash"]))
    good = ChainedRecord(*_fields(v2))
    check_record(good, head)
    cut = ChainedRecord(*_fields(v2)[:2], good.prev_hash[:31], *_fields(v2)[3:])
    longer = ChainedRecord(*_fields(v2)[:3], good.hash + b"\x00", *_fields(v2)[4:])
    for bad in (cut, longer):
        with pytest.raises(MalformedRecord):
            check_record(bad, head)
    # The verifier's replay gives the same verdict.
    ring = KeyRing.parse(block("example-key").split()[1])
    for bad in (cut, longer):
        items = [(0, _fields(v1)), (1, tuple(getattr(bad, f) for f in bad.__slots__))]
        result = verify_chain_fields(v1["chain"], items, [], ring, origin="o/" + v1["chain"])
        assert [f.kind for f in result.findings] == ["malformed_record"]


def checkpoint_rejects() -> list[tuple[str, str]]:
    parts = re.split(r"^# (.*)\n", block("checkpoint-rejects"), flags=re.M)
    assert parts[0] == ""
    return list(zip(parts[1::2], parts[2::2], strict=True))


def test_checkpoint_rejects_in_doc() -> None:
    rejects = checkpoint_rejects()
    titles = [title for title, _ in rejects]
    assert "a fifth line after the extension line" in titles
    assert "a wrong extension tag" in titles
    skey, vkey = block("example-key").split()
    ring = KeyRing.parse(vkey)
    signer = Signer.from_private_key(skey)
    for title, note in rejects:
        text, signed_by = open_note(note, ring.verifiers())  # the signature is good ...
        assert signed_by == [signer.verifier], title
        assert sign_note(text, signer) == note, title
        with pytest.raises(MalformedCheckpoint):  # ... the body is not a checkpoint
            open_checkpoint(note, ring)
        # The verifier reports it as a finding of its own, it does not skip it.
        assert _note_findings(note, ring) == [("malformed_checkpoint", 7)]


def _note_findings(note: str, ring: KeyRing) -> list[tuple[str, int | None]]:
    """(kind, offset) of what the verifier finds in ``note`` read at offset 7 of an empty
    chain's checkpoint partition."""
    result = verify_chain_fields(
        "audit.events/0",
        [],
        [SourceCheckpoint(note, 7)],
        ring,
        origin="sealtrail.local/audit.events/0",
    )
    return [(f.kind, f.offset) for f in result.findings]


def test_notes_are_checked_as_stored_bytes() -> None:
    """Invalid UTF-8 is rejected, even in a signature line of an unknown key (Go's rule);
    DEL and C1 controls are allowed, C0 controls other than newline are not."""
    skey, vkey = block("example-key").split()
    ring = KeyRing.parse(vkey)
    note = block("checkpoint-example")
    assert open_checkpoint(note, ring).size == 2
    blob = base64.b64encode(bytes([0, 0, 0, 1]) + bytes(64)).decode()
    foreign = f"\u2014 other.example {blob}\n"  # a signature by a key not in the ring
    assert open_checkpoint(note + foreign, ring).size == 2
    raw = (note + foreign).encode().replace(b"other", b"oth\xffr")
    # What the verifier's Kafka reader does with bytes that are not UTF-8.
    with pytest.raises(MalformedCheckpoint, match="not valid UTF-8"):
        open_checkpoint(raw.decode("utf-8", "surrogateescape"), ring)
    for ch in ("\x7f", "\x80", "\x9f"):
        assert open_checkpoint(note + foreign.replace("other", f"oth{ch}r"), ring).size == 2
    for ch in ("\x00", "\t", "\r", "\x1f"):
        with pytest.raises(MalformedCheckpoint, match="control character"):
            open_checkpoint(note + foreign.replace("other", f"oth{ch}r"), ring)


def test_offsite_names_must_be_canonical(tmp_path: Path) -> None:
    note = block("checkpoint-example")
    offsite.write_notes(tmp_path, "audit.events/0", [note])
    assert offsite.chains_in(tmp_path) == ["audit.events/0"]
    (tmp_path / "audit.events%2f1.checkpoints").write_text("")
    with pytest.raises(ConfigError, match="not named by the percent-encoding"):
        offsite.chains_in(tmp_path)


def _section(number: int) -> str:
    m = re.search(rf"^## {number}\. .*?(?=^## |\Z)", DOC, re.M | re.S)
    assert m, f"FORMAT.md lost its section {number}"
    return m.group(0)


def test_schema_canonical_form_and_fingerprint_in_doc() -> None:
    """Section 1: the schema shown is the shipped one, the table lists its fields in order, and
    the fingerprint is the Rabin fingerprint of the canonical form, little-endian on the wire."""
    import json

    shown = json.loads(block("avro-schema"))
    shipped = json.loads(
        (Path(__file__).resolve().parents[2] / "schemas" / "chained_event.avsc").read_text()
    )
    assert shown == shipped and shown["namespace"] == "dev.sealtrail"
    table = re.findall(r"^\| `(\w+)` \| [^|]*\| [^|]*\|$", _section(1), re.M)
    assert table == [f["name"] for f in shipped["fields"]]
    canonical = block("avro-canonical").strip()
    assert canonical == CHAINED_EVENT.canonical_form
    fingerprint = crc64_avro(canonical.encode("utf-8"))  # the spec's, not fastavro's
    assert f"`0x{int.from_bytes(fingerprint, 'little'):016x}`" in DOC
    assert fingerprint == CHAINED_EVENT.fingerprint
    assert " ".join(f"{b:02x}" for b in CHAINED_EVENT.fingerprint) in " ".join(DOC.split())


def test_wire_decoding_vectors_in_doc() -> None:
    """Section 1: padded varints decode to the same record; trailing bytes, another
    fingerprint, no marker, a cut datum, bad UTF-8, a negative length are malformed_record,
    on the verifier's fast path and its general one."""
    from processors.verifier.core import value_item
    from processors.verifier.replay import verify_chain_values

    v1, v2 = vectors()[:2]
    names = ("chain", "seq", "prev_hash", "hash", "source_offset", "ingested_at", "payload")
    first = encode_chained(dict(zip(names, _fields(v1), strict=True)))
    ring = KeyRing.parse(block("example-key").split()[1])
    entries = [line.rpartition(" = ") for line in block("wire-decoding").splitlines()]
    verdicts = [label.split(":")[0] for label, _, _ in entries]
    assert verdicts.count("accept") >= 1 and verdicts.count("malformed_record") >= 6
    for label, _, hexed in entries:
        raw = bytes.fromhex(hexed)
        result = verify_chain_values(
            v1["chain"], [([0, 1], [first, raw])], [], ring, origin="o/" + v1["chain"]
        )
        fields = value_item(1, raw)[1]
        if label.startswith("accept"):
            assert fields == _fields(v2), label
            assert result.ok and result.size == 2, (label, result.findings)
        else:
            assert label.startswith("malformed_record:"), label
            assert isinstance(fields, MalformedRecord), label
            assert [f.kind for f in result.findings] == ["malformed_record"], label


def test_key_strings_split_at_their_first_plus_signs() -> None:
    """Section 6: base64 may hold '+': a verifier key splits at its first two, a private key at
    its first four; the decoded key is 0x01 and 32 bytes; the id is the computed one."""
    from processors.integrity.note import key_id

    skey, vkey = block("example-key").split()
    name, hex8, b64 = vkey.split("+", 2)
    assert "+" in b64  # the example shows why
    raw = base64.b64decode(b64)
    assert len(raw) == 33 and raw[0] == 1 and int(hex8, 16) == key_id(name, raw[1:])
    private, key, name2, hex2, seed = skey.split("+", 4)
    assert (private, key, name2, hex2) == ("PRIVATE", "KEY", name, hex8)
    assert len(base64.b64decode(seed)) == 33


def test_signature_line_is_key_id_and_ed25519_signature() -> None:
    """Section 5: the decoded signature is 68 bytes, the key id then 64 signature bytes; the
    name on the line is the key's name (not taken from the origin)."""
    skey, vkey = block("example-key").split()
    note = block("checkpoint-example")
    dash, name, b64 = note.splitlines()[-1].split(" ")
    blob = base64.b64decode(b64)
    assert dash == "\u2014" and name == vkey.split("+")[0]
    assert len(blob) == 68 and blob[:4] == bytes.fromhex(vkey.split("+")[1])
    signer = Signer.from_private_key(skey)
    assert blob[4:] == signer.sign(note[: note.rindex("\n\n") + 1].encode("utf-8"))


def test_keyring_example_in_doc() -> None:
    """Section 7: the rotation example parses as shown (comments, tab, ranges) and holds the
    example key retired after 4999 and another key from 5000 on."""
    ring = KeyRing.parse(block("keyring-example"))
    example = KeyRing.parse(block("example-key").split()[1]).verifiers()[0]
    got = [(e.verifier.name, e.from_size, e.to_size) for e in ring]
    assert got == [(example.name, 0, 4999), ("example.com/audit", 5000, None)]
    assert ring.entries[0].verifier == example
    assert open_checkpoint(block("checkpoint-example"), ring).size == 2


def _unescape(text: str) -> bytes:
    r"""The notes of the note-rejects block: ``\r`` is byte 0d, ``\xNN`` byte NN."""
    out = bytearray()
    for part in re.split(r"(\\r|\\x[0-9a-f]{2})", text):
        if part == "\\r":
            out += b"\r"
        elif part.startswith("\\x"):
            out.append(int(part[2:], 16))
        else:
            out += part.encode("utf-8")
    return bytes(out)


def test_note_rejects_in_doc() -> None:
    """Sections 5 and 7: each note is rejected with the finding its heading names, by the
    verifier as it reads notes from Kafka (bytes that are not UTF-8 kept as they are)."""
    from processors.integrity import errors

    kinds = {
        cls.kind: cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.IntegrityError) and cls.kind
    }
    vkey = block("example-key").split()[1]
    example = block("checkpoint-example")
    entries = re.split(r"^# (.*)\n", block("note-rejects"), flags=re.M)
    assert entries[0] == ""
    seen = set()
    for title, body in zip(entries[1::2], entries[2::2], strict=True):
        kind = title.split(":")[0]
        ring_text = vkey
        if body.startswith("key ring: "):
            ring_line, body = body.split("\n", 1)
            ring_text = ring_line.removeprefix("key ring: ")
        ring = KeyRing.parse(ring_text)
        raw = _unescape(body)
        # The example with one change (for key_out_of_range the change is the key ring).
        assert raw.startswith(example.split("\n\n")[0].encode())
        assert (raw == example.encode()) == (ring_text != vkey), title
        note = raw.decode("utf-8", "surrogateescape")  # as the Kafka reader keeps it
        with pytest.raises(kinds[kind]):
            open_checkpoint(note, ring)
        assert _note_findings(note, ring) == [(kind, 7)], title
        seen.add(kind)
    assert seen == {"malformed_checkpoint", "bad_signature", "key_out_of_range"}


def test_offsite_block_is_the_bytes_between_the_lines(tmp_path: Path) -> None:
    """Section 4: a note is exactly the bytes after the BEGIN line up to the END line; blank
    lines may stand between blocks, nothing else may."""
    note = block("checkpoint-example")
    path = offsite.chain_file(tmp_path, "audit.events/0")
    path.write_text(
        f"\n{offsite.BEGIN}\n{note}{offsite.END}\n  \n{offsite.BEGIN}\n{note}{offsite.END}\n"
    )
    assert offsite.read_notes(tmp_path, "audit.events/0") == [note]  # read once
    path.write_text(f"{offsite.BEGIN}\n{note}{offsite.END}\nstray\n")
    with pytest.raises(ConfigError, match="outside a checkpoint block"):
        offsite.read_notes(tmp_path, "audit.events/0")


def test_section_8_names_every_finding_kind() -> None:
    """Section 8's normative list uses the verifier's own finding names, all of them (the
    ClickHouse check is not part of the format)."""
    from processors.verifier.report import FINDING_KINDS

    text = _section(8)
    missing = [k for k in FINDING_KINDS if k != "clickhouse_mismatch" and f"`{k}`" not in text]
    assert not missing, missing
    for word in ("read_committed", "READ_COMMITTED", "READ_UNCOMMITTED", "last stable offset"):
        assert word in DOC


def test_section_8_which_finding_a_fork_gives() -> None:
    """Section 8: a fork is reported for the later note of a size; only the kept note (the
    first read, unless an offsite note replaces a topic one) is then checked against the
    chain."""
    from tests.unit.verifier_support import ORIGIN, SIGNER, build, checkpoint, run, src

    recs = build(3)
    good = checkpoint(recs, 2)
    bad = sign_checkpoint(Checkpoint(ORIGIN, 2, bytes([1]) * 32, recs[1].hash, 1), SIGNER)

    def found(*notes: tuple[str, str]) -> list[str]:
        items = [SourceCheckpoint(n, i, source) for i, (n, source) in enumerate(notes)]
        return [f.kind for f in run(src(recs), items).findings]

    assert found((bad, "topic"), (good, "offsite")) == ["fork"]
    assert found((good, "topic"), (bad, "offsite")) == ["fork", "history_rewritten"]
    assert found((bad, "topic"), (good, "topic")) == ["fork", "checkpoint_mismatch"]
    assert found((good, "topic"), (bad, "topic")) == ["fork"]
    assert "the first one read, except that an offsite note replaces a topic note" in " ".join(
        _section(8).split()
    )


def test_docs_quote_signature_lines_as_written() -> None:
    """A signature line is '— <key name> <base64>' (section 5): no doc may show the key id in
    hex after the name (that is a key label, 'name+hhhhhhhh', used in messages only)."""
    docs = Path(__file__).resolve().parents[2] / "docs"
    for path in sorted(docs.glob("*.md")):
        for line in path.read_text(encoding="utf-8").splitlines():
            assert not re.search(r"\u2014 \S+\+[0-9a-f]{8} ", line), (path.name, line)
