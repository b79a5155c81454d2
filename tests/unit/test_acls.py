"""The ACL table (sealtrail/acls.py): the doc matches it, its names match the components'."""

from __future__ import annotations

import socket
from pathlib import Path

from typer.testing import CliRunner

from sealtrail.cli import app
from sealtrail.infra import acls
from sealtrail.infra.acls import Op, Resource, Role
from sealtrail.infra.config import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "SECURITY.md"


def test_security_doc_shows_exactly_the_table() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert acls.doc_section() in text, (
        "docs/SECURITY.md's ACL section differs from sealtrail/acls.py; "
        "run `python -m sealtrail.infra.acls` to regenerate it"
    )
    assert acls.replace_doc_section(text) == text


def test_names_match_what_the_components_use() -> None:
    from processors.chainer.names import group_id, transactional_id
    from sealtrail.infra.kafka_read import reader_group

    settings = Settings(kafka="127.0.0.1:1", topic_prefix="p.")
    names = {(a.resource, a.name, a.prefixed) for a in acls.acls("p.")}
    assert (Resource.GROUP, group_id(settings), False) in names
    assert (Resource.GROUP, settings.groups.sink, False) in names
    txn = transactional_id(settings, "host-1")
    assert any(r == Resource.TRANSACTIONAL_ID and p and txn.startswith(n) for r, n, p in names)
    group = reader_group(settings)
    assert any(r == Resource.GROUP and p and group.startswith(n) for r, n, p in names)


def test_only_the_chainer_writes_the_chain_and_nobody_writes_without_need() -> None:
    table = acls.acls("")
    writers = {(a.principal, a.name) for a in table if a.operation is Op.WRITE}
    assert writers == {
        ("User:sealtrail-producer", "audit.events"),
        ("User:sealtrail-chainer", "audit.chain"),
        ("User:sealtrail-chainer", "audit.checkpoints"),
        ("User:sealtrail-chainer", "sealtrail-chainer-"),
    }
    # The admin role is a super user instead of a row; nothing grants Delete/Alter at all.
    assert all(g.role is not Role.ADMIN for g in acls.GRANTS)


def test_dry_run_prints_kafka_acls_lines_with_the_topic_prefix() -> None:
    result = CliRunner().invoke(app, ["--topic-prefix", "prod.", "acls", "apply", "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == len(acls.GRANTS)
    assert (
        "kafka-acls.sh --add --allow-principal User:sealtrail-producer --operation Write "
        "--topic prod.audit.events"
    ) in lines
    assert any("--transactional-id prod.sealtrail-chainer- --resource-pattern-type prefixed" in x
               for x in lines)  # fmt: skip


def test_apply_against_an_unreachable_cluster_says_so(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = CliRunner().invoke(
        app, ["--home", str(tmp_path), "--kafka", f"127.0.0.1:{port}", "acls", "apply"]
    )
    assert result.exit_code == 2
    assert "did not answer" in result.output and "refused" not in result.output
