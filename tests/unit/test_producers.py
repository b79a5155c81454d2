"""Producer pieces that need no network: token files, reject entries, positions, load events."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from producers.file_shipper import (
    Position,
    default_position_file,
    first_line_hash,
    load_position,
    save_position,
)
from producers.k8s import (
    REJECT_KEEP_BYTES,
    Reject,
    RejectError,
    RejectKind,
    parse_body,
    parse_line,
    reject_event,
)
from producers.load import event_list, generate
from producers.webhook import load_tokens
from schemas.codec import decode_audit_event, encode_audit_event
from sealtrail.infra.config import Settings
from sealtrail.infra.errors import ConfigError


def test_token_file_maps_tokens_to_clusters(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# comment\n\nsecret-a cluster-a\nsecret-b   cluster-b\nsolo\n")
    path.chmod(0o600)
    assert load_tokens(path, "default") == [
        (b"secret-a", "cluster-a"),
        (b"secret-b", "cluster-b"),
        (b"solo", "default"),
    ]
    with pytest.raises(ConfigError, match="needs --cluster") as info:
        load_tokens(path, None)
    assert "solo" not in str(info.value)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_token_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "tokens"
    path.write_text("secret-a cluster-a\n")
    path.chmod(mode)
    with pytest.raises(ConfigError, match="chmod 600") as info:
        load_tokens(path, None)
    assert "secret-a" not in str(info.value)


def test_empty_or_missing_token_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# nothing\n")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="holds no tokens"):
        load_tokens(path, None)
    with pytest.raises(ConfigError, match="cannot read"):
        load_tokens(tmp_path / "absent", None)


def test_reject_event_chains_what_was_refused_and_proves_it_by_hash() -> None:
    small = reject_event(Reject("bad", b"abc"), "c1", "file", 5)
    assert small["source"] == "reject" and small["cluster"] == "c1" and small["actor"] == "file"
    assert small["original"] == b"abc" and small["received_at"] == 5
    digest = hashlib.sha256(b"abc").hexdigest()
    assert small["audit_id"] == f"reject:{digest}"
    assert small["attributes"] == {
        "kind": "other",
        "reason": "bad",
        "bytes": "3",
        "sha256": digest,
        "truncated": "false",
    }
    body = b"x" * (REJECT_KEEP_BYTES + 10)
    kept = Reject("too big", body[:REJECT_KEEP_BYTES], len(body), hashlib.sha256(body).digest())
    big = reject_event(kept, "c1", "webhook", 5)
    assert big["original"] == body[:REJECT_KEEP_BYTES]
    assert big["attributes"]["bytes"] == str(len(body))
    assert big["attributes"]["sha256"] == hashlib.sha256(body).hexdigest()
    assert big["attributes"]["truncated"] == "true"
    # a reject is an ordinary AuditEvent datum: it is encoded, chained and loaded like one
    assert decode_audit_event(encode_audit_event(big, validate=True)) == big


def test_rejects_carry_their_kind_from_where_they_were_refused() -> None:
    def kinds(items: list[bytes], limit: int = 200) -> list[RejectKind]:
        body = b'{"kind":"EventList","items":[' + b",".join(items) + b"]}"
        return [r.kind for r in parse_body(body, "c1", 0, max_event_bytes=limit).rejects]

    good = b'{"auditID":"a","stage":"Panic","verb":"get"}'
    assert kinds([good[:-1] + b',"x":"' + b"y" * 300 + b'"}']) == [RejectKind.TOO_LARGE]
    assert kinds([b'{"stage":"Panic","verb":"get"}']) == [RejectKind.MISSING_FIELD]
    assert kinds([b'{"kind":0,"auditID":"a","stage":"Panic","verb":"get"}']) == [
        RejectKind.WRONG_TYPE
    ]
    assert kinds([b"17"]) == [RejectKind.WRONG_TYPE]
    with pytest.raises(RejectError) as info:
        parse_line(b"{not json", "c1", 0)
    assert info.value.kind == RejectKind.MALFORMED
    assert set(RejectKind) == {
        "too_large", "malformed", "missing_field", "wrong_type", "bad_body", "other"
    }  # fmt: skip


def test_position_file_round_trip_and_errors(tmp_path: Path) -> None:
    pos = tmp_path / "d" / "p.pos"
    assert load_position(pos) is None
    save_position(pos, Position(12, 345, "ab"))
    assert load_position(pos) == Position(12, 345, "ab")
    assert not (tmp_path / "d" / "p.pos.tmp").exists()
    pos.write_text("{not json")
    with pytest.raises(ConfigError, match="remove it"):
        load_position(pos)


def test_default_position_file_is_under_home(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    path = default_position_file(settings, Path("/var/log/kube/audit.log"))
    assert path.parent == tmp_path / "home" / "shipper"
    assert path.name.startswith("var_log_kube_audit.log-") and path.suffix == ".pos"


def test_first_line_hash(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"partial")
    with path.open("rb") as handle:
        assert first_line_hash(handle) == ""
    path.write_bytes(b"one\ntwo\n")
    with path.open("rb") as handle:
        handle.seek(5)
        assert first_line_hash(handle) != "" and handle.tell() == 5


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


def test_tokens_without_tls_are_refused_at_start(tmp_path: Path) -> None:
    from producers.webhook import WebhookOptions, WebhookServer

    tokens = tmp_path / "tokens"
    tokens.write_text("secret-a cluster-a\n")
    tokens.chmod(0o600)
    with pytest.raises(ConfigError) as info:
        WebhookServer(Settings(home=tmp_path), WebhookOptions(tokens=tokens))
    message = str(info.value)
    assert "TLS" in message and "client-go" in message and "--allow-plain-http-tokens" in message
    assert "secret-a" not in message
    # allowed explicitly (a TLS-terminating proxy in front)
    WebhookServer(
        Settings(home=tmp_path), WebhookOptions(tokens=tokens, allow_plain_http_tokens=True)
    )


def test_run_refuses_tokens_without_tls_in_one_sentence(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sealtrail.cli import app

    tokens = tmp_path / "tokens"
    tokens.write_text("secret-a cluster-a\n")
    tokens.chmod(0o600)
    result = CliRunner().invoke(app, ["--home", str(tmp_path), "run", "--tokens", str(tokens)])
    assert result.exit_code == 2
    assert "bearer tokens need TLS" in result.output and "Traceback" not in result.output
    message = " ".join(result.output.split())
    assert "client-go" in message and "--allow-plain-http-tokens" in message


def test_produce_webhook_refuses_tokens_without_tls_before_kafka_is_touched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    import sealtrail.commands.produce as produce
    from sealtrail.cli import app

    def no_kafka(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("Kafka was asked before the options were checked")

    monkeypatch.setattr(produce, "check_login", no_kafka)
    tokens = tmp_path / "tokens"
    tokens.write_text("secret-a cluster-a\n")
    tokens.chmod(0o600)
    for args, env in (
        (["--tokens", str(tokens)], {}),
        ([], {"SEALTRAIL_WEBHOOK_TOKENS": str(tokens)}),
    ):
        result = CliRunner().invoke(
            app, ["--home", str(tmp_path), "produce", "webhook", *args], env=env
        )
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output and "secret-a" not in result.output
        # One sentence: TLS, client-go's behaviour, and the explicit override.
        message = " ".join(result.output.split())
        assert "bearer tokens need TLS" in message and "client-go" in message
        assert "--allow-plain-http-tokens" in message


def test_missing_tls_files_are_refused_before_kafka_is_touched(tmp_path: Path) -> None:
    from producers.webhook import WebhookOptions, WebhookServer

    tokens = tmp_path / "tokens"
    tokens.write_text("secret-a cluster-a\n")
    tokens.chmod(0o600)
    options = WebhookOptions(
        tokens=tokens, tls_cert=tmp_path / "no.crt", tls_key=tmp_path / "no.key"
    )
    with pytest.raises(ConfigError, match="cannot load the webhook TLS files"):
        WebhookServer(Settings(home=tmp_path, kafka="127.0.0.1:1"), options)
