"""One SCRAM-SHA-512 user per role and its librdkafka client properties file.

``<dir>/<role>.properties`` (mode 0600) holds ``security.protocol=SASL_SSL``, the mechanism,
the user, its password and the CA file: usable as ``SEALTRAIL_KAFKA_CONFIG`` as it is. An
existing file keeps its password, so making the users again (``stack up --secure`` on a running
stack, ``sealtrail acls users``) does not break running clients.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sealtrail.infra.acls import DEFAULT_USER_PREFIX, Role, user_name
from sealtrail.infra.config import read_properties
from sealtrail.infra.errors import ConfigError, KafkaUnavailable
from sealtrail.infra.kafka import describe
from sealtrail.infra.pki import write_secret

if TYPE_CHECKING:
    from confluent_kafka.admin import AdminClient

MECHANISM = "SCRAM-SHA-512"
SCRAM_ITERATIONS = 8192


@dataclass(frozen=True, slots=True)
class RoleClient:
    role: Role
    user: str
    password: str
    path: Path


def client_file(directory: Path, role: Role) -> Path:
    return directory / f"{role.value}.properties"


def client_properties(user: str, password: str, ca_file: Path | None) -> str:
    lines = [
        "# sealtrail Kafka client: one SCRAM user per role. Secret: keep this file 0600.",
        "security.protocol=SASL_SSL",
        f"sasl.mechanism={MECHANISM}",
        f"sasl.username={user}",
        f"sasl.password={password}",
    ]
    if ca_file is not None:
        lines.append(f"ssl.ca.location={ca_file if ca_file.is_absolute() else ca_file.resolve()}")
    return "\n".join(lines) + "\n"


def role_clients(
    directory: Path,
    ca_file: Path | None,
    roles: tuple[Role, ...] = tuple(Role),
    user_prefix: str = DEFAULT_USER_PREFIX,
) -> list[RoleClient]:
    """Write (or keep) each role's properties file; new users get a random password."""
    try:
        if not directory.is_dir():
            directory.mkdir(parents=True)
            directory.chmod(0o700)
    except OSError as exc:
        raise ConfigError(f"cannot create {directory} ({exc.strerror})") from None
    out = []
    for role in roles:
        path = client_file(directory, role)
        user = user_name(role, user_prefix)
        password = ""
        if path.exists():
            old = read_properties(path)
            if old.get("sasl.username") == user:
                password = old.get("sasl.password", "")
        password = password or secrets.token_urlsafe(24)
        text = client_properties(user, password, ca_file)
        # Unchanged files are left alone: they may sit on a read-only secret mount.
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            write_secret(path, text.encode("utf-8"))
        out.append(RoleClient(role, user, password, path))
    return out


def upsert_users(client: AdminClient, users: list[RoleClient], timeout: float = 30.0) -> None:
    """Create or update each user's SCRAM-SHA-512 credential through the Admin API."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS)
    futures = client.alter_user_scram_credentials(
        [UserScramCredentialUpsertion(u.user, info, u.password.encode("utf-8")) for u in users],
        request_timeout=timeout,
    )
    for user, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:
            raise KafkaUnavailable(
                f"Kafka refused to set the SCRAM credential of {user} ({describe(exc)}); "
                "run it as a principal allowed to alter the cluster (the admin role)"
            ) from None
