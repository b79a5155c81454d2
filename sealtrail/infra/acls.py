"""The Kafka ACLs of every sealtrail role: ONE table, from which both the Admin API calls
(``sealtrail acls apply``, ``sealtrail stack up --secure``) and the ACL section of
docs/SECURITY.md are made (a unit test fails if the document drifts from this table).

Each role is one Kafka principal, ``User:<user prefix><role>`` (by default
``User:sealtrail-producer``, ...). ``admin`` is a super user and has no entries here: it
alone creates topics, deletes records or topics and alters configs. Everything not granted
below is refused, because the broker runs with ``allow.everyone.if.no.acl.found=false``.
Kafka's implications keep the table short: ``Read``/``Write`` imply ``Describe``.

The integration tests in tests/integration/test_acls.py prove the table both ways: each role
runs its part of the pipeline with these grants only, and is refused what it must not do.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from sealtrail.infra.config import Groups, Topics
from sealtrail.infra.errors import KafkaUnavailable

if TYPE_CHECKING:
    from confluent_kafka.admin import AclBinding, AdminClient

DEFAULT_USER_PREFIX = "sealtrail-"
# The throwaway group ids of assign()-style reads (sealtrail.infra.kafka_read), after the
# topic prefix.
READER_GROUP_PREFIX = "sealtrail-reader-"


class Role(StrEnum):
    ADMIN = "admin"
    PRODUCER = "producer"
    CHAINER = "chainer"
    SINK = "sink"
    VERIFIER = "verifier"


# The roles that get ACLs (admin is a super user instead).
COMPONENT_ROLES = (Role.PRODUCER, Role.CHAINER, Role.SINK, Role.VERIFIER)


class Resource(StrEnum):
    TOPIC = "topic"
    GROUP = "group"
    TRANSACTIONAL_ID = "transactional-id"


class Op(StrEnum):
    READ = "Read"
    WRITE = "Write"
    DESCRIBE = "Describe"


@dataclass(frozen=True, slots=True)
class Grant:
    """One row of the table. ``name`` is a template: ``{raw}``, ``{chain}``, ``{checkpoints}``,
    ``{rejects}`` (topics), ``{chainer_group}``, ``{sink_group}`` (``Settings.groups``) and
    ``{prefix}`` (the topic prefix) are filled in per deployment."""

    role: Role
    resource: Resource
    name: str
    prefixed: bool
    operation: Op
    why: str

    def resolve(self, topic_prefix: str) -> str:
        names = Topics.with_prefix(topic_prefix)
        groups = Groups.with_prefix(topic_prefix)
        return self.name.format(
            prefix=topic_prefix,
            chainer_group=groups.chainer,
            sink_group=groups.sink,
            raw=names.raw,
            chain=names.chain,
            checkpoints=names.checkpoints,
            rejects=names.rejects,
        )


_T, _G, _X = Resource.TOPIC, Resource.GROUP, Resource.TRANSACTIONAL_ID

GRANTS: tuple[Grant, ...] = (
    # Producers: the webhook, the file shipper, the SDK and the load generator. Idempotent
    # producers need no cluster IdempotentWrite since Kafka 3.0: Write on a topic suffices.
    Grant(Role.PRODUCER, _T, "{raw}", False, Op.WRITE, "append audit events and chained rejects"),
    # Chainer: a transactional consume-transform-produce loop.
    Grant(Role.CHAINER, _T, "{raw}", False, Op.READ, "consume audit events"),
    Grant(Role.CHAINER, _G, "{chainer_group}", False, Op.READ,
          "its consumer group; also send_offsets_to_transaction"),
    Grant(Role.CHAINER, _T, "{chain}", False, Op.WRITE, "append chained records"),
    Grant(Role.CHAINER, _T, "{checkpoints}", False, Op.WRITE, "append signed checkpoints"),
    Grant(Role.CHAINER, _T, "{chain}", False, Op.READ, "recover each chain's head at start"),
    Grant(Role.CHAINER, _T, "{checkpoints}", False, Op.READ,
          "recover the last checkpoint at start"),
    Grant(Role.CHAINER, _X, "{chainer_group}-", True, Op.WRITE,
          "transactional ids <prefix>sealtrail-chainer-<instance>"),
    Grant(Role.CHAINER, _G, "{prefix}" + READER_GROUP_PREFIX, True, Op.READ,
          "throwaway group ids of its recovery reads (never committed)"),
    # Sink: reads the chain and checkpoints, commits in its own group.
    Grant(Role.SINK, _T, "{chain}", False, Op.READ, "load chained records"),
    Grant(Role.SINK, _T, "{checkpoints}", False, Op.READ, "load checkpoints"),
    Grant(Role.SINK, _G, "{sink_group}", False, Op.READ, "its consumer group"),
    # Verifier: reads only; it writes nothing anywhere.
    Grant(Role.VERIFIER, _T, "{chain}", False, Op.READ, "replay the chains"),
    Grant(Role.VERIFIER, _T, "{checkpoints}", False, Op.READ, "check the checkpoints"),
    Grant(Role.VERIFIER, _G, "{prefix}" + READER_GROUP_PREFIX, True, Op.READ,
          "throwaway group ids of its reads (never committed)"),
    Grant(Role.VERIFIER, _G, "{sink_group}", False, Op.DESCRIBE,
          "read (not move) the sink's committed offsets"),
)  # fmt: skip


def principal(role: Role, user_prefix: str = DEFAULT_USER_PREFIX) -> str:
    return f"User:{user_prefix}{role.value}"


def user_name(role: Role, user_prefix: str = DEFAULT_USER_PREFIX) -> str:
    return f"{user_prefix}{role.value}"


@dataclass(frozen=True, slots=True)
class Acl:
    """One resolved ACL: ALLOW ``operation`` on ``resource`` ``name`` to ``principal``."""

    principal: str
    resource: Resource
    name: str
    prefixed: bool
    operation: Op

    def command(self) -> str:
        """The same ACL as a ``kafka-acls.sh`` command line (for review and other tooling)."""
        option = {_T: "--topic", _G: "--group", _X: "--transactional-id"}[self.resource]
        pattern = " --resource-pattern-type prefixed" if self.prefixed else ""
        return (
            f"kafka-acls.sh --add --allow-principal {self.principal} "
            f"--operation {self.operation.value} {option} {self.name}{pattern}"
        )

    def binding(self) -> AclBinding:
        from confluent_kafka.admin import (
            AclBinding,
            AclOperation,
            AclPermissionType,
            ResourcePatternType,
            ResourceType,
        )

        kinds = {_T: ResourceType.TOPIC, _G: ResourceType.GROUP, _X: ResourceType.TRANSACTIONAL_ID}
        ops = {Op.READ: AclOperation.READ, Op.WRITE: AclOperation.WRITE,
               Op.DESCRIBE: AclOperation.DESCRIBE}  # fmt: skip
        return AclBinding(
            kinds[self.resource],
            self.name,
            ResourcePatternType.PREFIXED if self.prefixed else ResourcePatternType.LITERAL,
            self.principal,
            "*",
            ops[self.operation],
            AclPermissionType.ALLOW,
        )


def acls(topic_prefix: str = "", user_prefix: str = DEFAULT_USER_PREFIX) -> list[Acl]:
    """Every ACL of one deployment, in table order."""
    return [
        Acl(principal(g.role, user_prefix), g.resource, g.resolve(topic_prefix), g.prefixed,
            g.operation)
        for g in GRANTS
    ]  # fmt: skip


def apply(client: AdminClient, wanted: list[Acl], timeout: float = 30.0) -> int:
    """Create ``wanted`` through the Admin API (creating an existing ACL is a no-op)."""
    from confluent_kafka import KafkaException

    by_binding = {acl.binding(): acl for acl in wanted}
    futures = client.create_acls(list(by_binding), request_timeout=timeout)
    for binding, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:
            acl = by_binding[binding]
            raise KafkaUnavailable(
                f"Kafka refused to create the ACL {acl.principal} {acl.operation.value} "
                f"{acl.resource.value} {acl.name} ({exc.args[0].str()}); run it as a "
                "principal allowed to alter ACLs (the admin role)"
            ) from None
    return len(futures)


# -- docs/SECURITY.md ------------------------------------------------------------------------
DOC_BEGIN = (
    "<!-- acls: made from sealtrail/infra/acls.py by `python -m sealtrail.infra.acls`; "
    "do not edit -->"
)
DOC_END = "<!-- /acls -->"


def doc_section() -> str:
    """The ACL table as it appears in docs/SECURITY.md (default prefixes)."""
    lines = [
        DOC_BEGIN,
        "",
        "| principal | operation | resource | name | pattern | why |",
        "|---|---|---|---|---|---|",
    ]
    for grant, acl in zip(GRANTS, acls(), strict=True):
        lines.append(
            f"| `{acl.principal}` | {acl.operation.value} | {acl.resource.value} | "
            f"`{acl.name}` | {'prefixed' if acl.prefixed else 'literal'} | {grant.why} |"
        )
    lines += [
        "",
        "`User:sealtrail-admin` is a super user (`super.users`) and has no ACLs: only it creates",
        "topics, deletes records or topics, and alters configs or ACLs. Every other request is",
        "refused (`allow.everyone.if.no.acl.found=false`). With `SEALTRAIL_TOPIC_PREFIX`, every",
        "topic, group and transactional-id name above starts with the prefix.",
        "",
        DOC_END,
    ]
    return "\n".join(lines)


def replace_doc_section(text: str) -> str:
    """``text`` (SECURITY.md) with its generated section replaced by the current table."""
    start = text.index(DOC_BEGIN)
    end = text.index(DOC_END, start) + len(DOC_END)
    return text[:start] + doc_section() + text[end:]


if __name__ == "__main__":
    from pathlib import Path

    doc = Path(__file__).resolve().parents[2] / "docs" / "SECURITY.md"
    doc.write_text(replace_doc_section(doc.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"updated {doc}")
