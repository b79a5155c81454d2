"""Read-only access to the audit store for the reading tools (query, history, verify, prove).

:func:`open_reader` gives a :class:`ReadClient`, clickhouse-connect-like (``query`` returns
``column_names``, ``column_types`` and ``result_rows``; bytes columns stay bytes):

* ClickHouse server DSN: a clickhouse-connect client; every query carries ``readonly=1``.
* Embedded store owned by a running sink: the sink's live-read socket
  (:mod:`sealtrail.infra.liveserver`), found from the settings; the sink runs it read-only.
* Embedded store nobody owns: opened directly, as before, through a read-only session.

Every statement passes :func:`sealtrail.infra.readonly_sql.require_read_only` first, on the client
and again in the server, so a write is refused in one sentence whichever way it arrives.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError as DriverError
from clickhouse_connect.driver.exceptions import StreamFailureError

from sealtrail.infra import clickhouse, livewire
from sealtrail.infra.config import Settings
from sealtrail.infra.errors import ClickHouseError, WriteRefused
from sealtrail.infra.readonly_sql import require_read_only
from sealtrail.infra.scratch_session import ScratchSession

log = logging.getLogger(__name__)

__all__ = [
    "OWNER_WAIT_S",
    "DirectReader",
    "ReadClient",
    "ReadResult",
    "SocketReader",
    "as_reader",
    "driver_error",
    "open_reader",
]

OWNER_WAIT_S = 15.0  # how long a client waits for a starting owner to open its socket
READONLY_CODE = 164
_TIMEOUT_CODE = 159
_TOO_BIG_CODE = 396


@dataclass(frozen=True, slots=True)
class ReadResult:
    """A query's answer, shaped like clickhouse-connect's ``QueryResult`` (types by name)."""

    column_names: tuple[str, ...]
    column_types: tuple[str, ...]
    result_rows: list[tuple[Any, ...]]

    @property
    def row_count(self) -> int:
        return len(self.result_rows)

    @property
    def first_row(self) -> tuple[Any, ...]:
        return self.result_rows[0]

    @property
    def first_item(self) -> dict[str, Any]:
        return dict(zip(self.column_names, self.result_rows[0], strict=True))

    def named_results(self) -> list[dict[str, Any]]:
        return [dict(zip(self.column_names, row, strict=True)) for row in self.result_rows]


class ReadClient(Protocol):
    """What reading code needs from the store; see the module docstring."""

    database: str
    via: str  # "server", "socket" or "direct": for messages

    def query(
        self,
        sql: str,
        parameters: Mapping[str, Any] | Sequence[Any] | None = None,
        *,
        column_formats: Mapping[str, str] | None = None,
        query_formats: Mapping[str, str] | None = None,
    ) -> ReadResult: ...

    def scratch(self) -> ScratchSession | SocketReader | None:
        """Where the verifier's checks that need scratch files run: a session of the embedded
        store this process opened (closed with the reader), the owner's process (a socket
        reader, through :meth:`SocketReader.check`), else ``None`` (a server)."""
        ...

    def close(self) -> None: ...


def driver_error(exc: DriverError) -> ClickHouseError | WriteRefused:
    """One sentence for a ClickHouse error met by a read query."""
    if isinstance(exc, StreamFailureError):
        # ClickHouse stopped the query while its result streamed (a read limit, usually).
        return ClickHouseError(
            "the query was stopped while its result was read (the read limits are "
            f"{clickhouse.READ_TIMEOUT_S} s, {clickhouse.READ_MAX_ROWS} rows, "
            f"{clickhouse.READ_MAX_BYTES >> 20} MiB); narrow it with WHERE or LIMIT"
        )
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    first = (lines[0] if lines else type(exc).__name__)[:400]
    code = getattr(exc, "code", None)
    if code is None and "Code: " in first:
        with contextlib.suppress(ValueError):
            code = int(first.split("Code: ", 1)[1].split(".", 1)[0])
    if code == READONLY_CODE:
        return WriteRefused(
            "the statement would change the store and the connection is read-only; reading "
            "tools only read (the sink's migrations change the schema)"
        )
    if code == _TIMEOUT_CODE:
        return ClickHouseError(
            f"the query ran longer than the read limit ({clickhouse.READ_TIMEOUT_S} s); "
            "narrow it with WHERE or LIMIT"
        )
    if code == _TOO_BIG_CODE:
        return ClickHouseError(
            f"the result is over the read limit ({clickhouse.READ_MAX_ROWS} rows, "
            f"{clickhouse.READ_MAX_BYTES >> 20} MiB); narrow it with WHERE or LIMIT"
        )
    return ClickHouseError(f"the query failed: {first}; check the SQL")


class DirectReader:
    """A clickhouse-connect client used read-only: either a session already set ``readonly``
    (:func:`sealtrail.infra.clickhouse.read_session`) or any client, then every query carries
    ``readonly=1`` (a server DSN, or a client a test hands in)."""

    def __init__(
        self,
        client: Client,
        database: str,
        *,
        session_read_only: bool,
        via: str,
        store_dsn: str | None = None,
    ) -> None:
        self.client = client
        self.store_dsn = store_dsn  # the embedded store this process opened (via "direct")
        self.database = clickhouse.validate_identifier(database)
        self.via = via
        self._session_read_only = session_read_only
        self._scratch: ScratchSession | None = None
        self._scratch_failed = False

    @staticmethod
    def query_settings(session_read_only: bool) -> dict[str, Any]:
        """The settings each query carries (unit-tested: a server DSN always gets readonly)."""
        return {} if session_read_only else {"readonly": 1}

    def query(
        self,
        sql: str,
        parameters: Mapping[str, Any] | Sequence[Any] | None = None,
        *,
        column_formats: Mapping[str, str] | None = None,
        query_formats: Mapping[str, str] | None = None,
    ) -> ReadResult:
        require_read_only(sql)
        previous = self.client.database
        self.client.database = self.database
        try:
            result = self.client.query(
                sql,
                parameters=dict(parameters) if isinstance(parameters, Mapping) else parameters,
                settings=self.query_settings(self._session_read_only) or None,
                column_formats=dict(column_formats) if column_formats else None,
                query_formats=dict(query_formats) if query_formats else None,
            )
            rows = [tuple(row) for row in result.result_rows]  # may fail while it streams
        except DriverError as exc:
            raise driver_error(exc) from None
        finally:
            self.client.database = previous
        return ReadResult(
            tuple(result.column_names), tuple(t.name for t in result.column_types), rows
        )

    def scratch(self) -> ScratchSession | None:
        if self.store_dsn is None or self._scratch_failed:
            return None
        if self._scratch is None:
            try:
                self._scratch = ScratchSession.open(self.store_dsn)
            except ClickHouseError as exc:
                # The check still runs: the decoded columns are then compared in Python.
                log.warning("comparing decoded columns in Python: %s", exc)
                self._scratch_failed = True
                return None
        return self._scratch

    def close(self) -> None:
        if self._scratch is not None:
            self._scratch.close()
            self._scratch = None
        if self._session_read_only:
            with contextlib.suppress(Exception):
                self.client.close()


class SocketReader:
    """A client of the owner's live-read socket; one connection, queries one after another."""

    def __init__(self, sock: socket.socket, path: Path, database: str) -> None:
        self._sock = sock
        self.path = path
        self.database = clickhouse.validate_identifier(database)
        self.via = "socket"

    @classmethod
    def connect(cls, path: Path, database: str, timeout: float = 300.0) -> SocketReader:
        """Connect to the socket at ``path``; :class:`OSError` if nobody listens there."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(str(path))
        except OSError:
            sock.close()
            raise
        return cls(sock, path, database)

    def query(
        self,
        sql: str,
        parameters: Mapping[str, Any] | Sequence[Any] | None = None,
        *,
        column_formats: Mapping[str, str] | None = None,
        query_formats: Mapping[str, str] | None = None,
    ) -> ReadResult:
        require_read_only(sql)
        return self._ask(
            {
                "sql": sql,
                "database": self.database,
                "parameters": parameters,
                "column_formats": dict(column_formats or {}),
                "query_formats": dict(query_formats or {}),
            }
        )

    def check(self, name: str, arguments: Mapping[str, Any]) -> ReadResult:
        """Run the owner's check ``name`` (see :mod:`sealtrail.infra.liveserver`)."""
        return self._ask({"check": name, "arguments": dict(arguments)})

    def _ask(self, request: Mapping[str, Any]) -> ReadResult:
        try:
            livewire.write_frame(self._sock, livewire.encode(dict(request)))
            payload = livewire.read_frame(self._sock, livewire.MAX_RESPONSE_BYTES)
        except (OSError, ConnectionError) as exc:
            raise ClickHouseError(
                f"the live-read socket {self.path} failed ({exc}); the sink may have stopped, "
                "run the command again"
            ) from None
        if payload is None:
            raise ClickHouseError(
                f"the sink closed the live-read socket {self.path} without answering; it may "
                "have stopped, run the command again"
            )
        doc = livewire.decode(payload)
        if not doc.get("ok"):
            message = str(doc.get("error") or "the live-read server refused the query")
            if doc.get("kind") == "refused":
                raise WriteRefused(message)
            raise ClickHouseError(message)
        return ReadResult(
            tuple(doc["columns"]),
            tuple(doc["types"]),
            [tuple(row) for row in doc["rows"]],
        )

    def scratch(self) -> SocketReader:
        """The owner holds the store: checks that need scratch files run there (:meth:`check`)."""
        return self

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()


def _embedded(dsn: str, database: str) -> DirectReader:
    """A reader over a read-only session of the embedded store ``dsn`` this process opened."""
    return DirectReader(
        clickhouse.read_session(dsn), database, session_read_only=True, via="direct", store_dsn=dsn
    )


def as_reader(client: Client | ReadClient, database: str) -> ReadClient:
    """A read client for ``client``: itself if it is one, else a per-query ``readonly`` one."""
    if isinstance(client, DirectReader | SocketReader):
        return client
    assert isinstance(client, Client)
    dsn = clickhouse.dsn_of(client)
    if dsn is not None and clickhouse.chdb_path(dsn) is not None:
        # Not through the owner's own session (see clickhouse.read_session).
        return _embedded(dsn, database)
    return DirectReader(client, database, session_read_only=False, via="server")


def open_reader(settings: Settings, *, wait_s: float = OWNER_WAIT_S) -> ReadClient:
    """The read client for the configured store (see the module docstring)."""
    database = settings.clickhouse_database
    dsn = settings.clickhouse_dsn
    store = clickhouse.chdb_path(dsn)
    if store is None:
        client = clickhouse.connect(settings, create_database=False)
        return DirectReader(client, database, session_read_only=False, via="server")
    if clickhouse.owns(store):  # this process (a test, the sink's own code) opened it
        clickhouse.connect(settings, create_database=False)
        return _embedded(dsn, database)
    if not (store / "metadata").exists() and clickhouse.holder_of(store) is None:
        raise ClickHouseError(
            f"there is no embedded ClickHouse store at {store} yet; run 'sealtrail sink' or "
            "'sealtrail run' first, or set SEALTRAIL_CLICKHOUSE"
        )
    path = livewire.socket_path(settings, store)
    deadline = time.monotonic() + wait_s
    while True:
        holder = clickhouse.holder_of(store)
        if holder is None:
            try:
                clickhouse.connect(settings, create_database=False)
            except ClickHouseError:
                if clickhouse.holder_of(store) is not None:
                    continue  # a sink took the store meanwhile: use its socket
                raise
            return _embedded(dsn, database)
        try:
            return SocketReader.connect(path, database)
        except OSError as exc:
            # No socket yet (a starting sink) or a stale one (the owner was killed and the lock
            # is free again, or a new owner has not replaced it yet): the lock decides.
            if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED):
                raise ClickHouseError(
                    f"cannot connect to the live-read socket {path} of {holder} "
                    f"({exc.strerror}); it must belong to the user running this command"
                ) from None
            if time.monotonic() > deadline:
                raise ClickHouseError(
                    f"the embedded ClickHouse at {store} is in use by {holder}, which does not "
                    f"answer read queries on {path}; stop it, or wait until it is up"
                ) from None
            time.sleep(0.1)
