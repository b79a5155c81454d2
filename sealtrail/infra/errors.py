"""The one root error type of sealtrail and its families.

Every error a user can cause or meet derives from :class:`SealtrailError`. The CLI catches
that type once, prints its message (one sentence: what is wrong, what to do) and exits with
``exit_code``. Integrity findings derive from :class:`IntegrityError` and exit with 1;
everything else means "could not do it" and exits with 2.

This module imports nothing but the standard library so that the pure integrity core can use it.
"""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_INTEGRITY = 1
EXIT_ERROR = 2


class SealtrailError(Exception):
    """Root of every sealtrail error. ``str(err)`` is safe to show: it never holds secrets."""

    exit_code: int = EXIT_ERROR


class ConfigError(SealtrailError):
    """A setting, option or input file is wrong."""


class StackError(SealtrailError):
    """The local Kafka stack could not be fetched, started, stopped or reached."""


class KafkaUnavailable(SealtrailError):
    """The Kafka cluster did not answer or refused an operation."""


class KafkaNotAuthorized(KafkaUnavailable):
    """The broker's authorizer refused this client's principal an operation (an ACL is missing)."""


class KafkaAuthenticationFailed(KafkaUnavailable):
    """The broker refused this client's credentials or security protocol."""


class TopicError(SealtrailError):
    """A topic is missing or has settings that would break append-only guarantees."""


class ClickHouseError(SealtrailError):
    """ClickHouse could not be reached or refused a statement."""


class WriteRefused(SealtrailError):
    """A reading tool (query, history, verify, prove) was asked to change the store."""


class DecodeError(SealtrailError):
    """Bytes are not a record this version of sealtrail can decode."""


class UnknownFingerprint(DecodeError):
    """An Avro single-object record names a schema fingerprint nobody registered."""


class KeyFileError(SealtrailError):
    """A key file is missing, malformed or readable by others."""


class IntegrityError(SealtrailError):
    """Evidence that the log was altered, dropped, reordered, inserted into or cut off.

    Carries its evidence as attributes so reports can show exactly what was found where.
    """

    exit_code = EXIT_INTEGRITY
    kind: str = "integrity"

    def __init__(
        self,
        message: str,
        *,
        chain: str | None = None,
        seq: int | None = None,
        offset: int | None = None,
        expected: Any = None,
        found: Any = None,
    ) -> None:
        super().__init__(message)
        self.chain = chain
        self.seq = seq
        self.offset = offset
        self.expected = expected
        self.found = found

    def evidence(self) -> dict[str, Any]:
        """The finding as plain JSON-able data (bytes shown as hex)."""

        def show(value: Any) -> Any:
            if isinstance(value, bytes | bytearray):
                return bytes(value).hex()
            return value

        return {
            "kind": self.kind,
            "message": str(self),
            "chain": self.chain,
            "seq": self.seq,
            "offset": self.offset,
            "expected": show(self.expected),
            "found": show(self.found),
        }
