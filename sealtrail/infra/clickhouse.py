"""ClickHouse connections through clickhouse-connect: embedded chdb (``chdb:///path``) or a server.

The embedded engine allows one process per data path and one path per process, so the first
client of a path is cached and reused for the life of the process, and a path held by another
process is reported in one sentence that names that process.
"""

from __future__ import annotations

import fcntl
import os
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError as DriverError

from sealtrail.infra.config import Settings
from sealtrail.infra.errors import ClickHouseError, ConfigError

# chdb loads numpy, whose OpenBLAS starts a thread per core that spins for about 0.1 s of CPU
# in every process that opens the embedded store (the CLI's queries, each verify from cron, each
# sink start); nothing here does linear algebra. Read when chdb is first imported (at connect);
# a value the user set is kept.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

_clients: dict[str, Client] = {}
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def redact(dsn: str) -> str:
    """The DSN without its password, for messages and logs."""
    parts = urlsplit(dsn)
    if parts.query:
        # clickhouse-connect also reads ``?password=`` (and access tokens) from the query string.
        query = _SECRET_PARAM.sub(r"\1***", parts.query)
        parts = parts._replace(query=query)
        dsn = parts.geturl()
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return dsn


_SECRET_PARAM = re.compile(r"((?:^|&)[^=&]*(?:password|secret|token)[^=&]*=)[^&]*", re.IGNORECASE)


def chdb_path(dsn: str) -> Path | None:
    if not dsn.startswith("chdb:"):
        return None
    path = dsn[len("chdb:") :]
    path = path[2:] if path.startswith("//") else path
    return Path(path.split("?", 1)[0])


LOCK_NAME = ".sealtrail-owner.lock"
_owner_lock_fds: dict[Path, int] = {}


def holder_of(path: Path) -> str | None:
    """If another process owns the embedded store at ``path``, describe it; else ``None``."""
    lock = path / LOCK_NAME
    if not lock.exists():
        return None
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = lock.read_text(errors="replace").strip()
            return owner or "another process"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def dsn_of(client: Client) -> str | None:
    """The DSN :func:`connect` opened ``client`` for, if it did."""
    return next((dsn for dsn, known in _clients.items() if known is client), None)


def owns(path: Path) -> bool:
    """Whether this process owns the embedded store at ``path``."""
    return path in _owner_lock_fds


def _take_ownership(path: Path) -> None:
    """Hold an exclusive lock naming this process for as long as it lives."""
    if path in _owner_lock_fds:
        return
    try:
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ClickHouseError(
            f"cannot create the owner lock of the embedded ClickHouse at {path} "
            f"({exc.strerror}); make the directory writable (or free its disk) and start again"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ClickHouseError(
            f"the embedded ClickHouse at {path} is in use by {holder_of(path) or 'another process'}"
            "; stop it first, or point SEALTRAIL_CLICKHOUSE at a ClickHouse server"
        ) from None
    command = " ".join(os.path.basename(arg) for arg in sys.argv[:3])
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} ({command})".encode())
    except OSError:
        pass  # e.g. a full disk: the lock is what excludes others; the name only describes us
    _owner_lock_fds[path] = fd


def validate_identifier(name: str, what: str = "database name") -> str:
    if not _IDENT.match(name):
        raise ConfigError(f"{what} {name!r} must be letters, digits and underscores")
    return name


def connect(settings: Settings, create_database: bool = True) -> Client:
    """A client for the configured DSN, with the sealtrail database created if asked."""
    dsn = settings.clickhouse_dsn
    database = validate_identifier(settings.clickhouse_database)
    client = _connect_dsn(dsn)
    if create_database:
        command(client, f"CREATE DATABASE IF NOT EXISTS {database}")
    return client


def _connect_dsn(dsn: str) -> Client:
    if dsn in _clients:
        return _clients[dsn]
    path = chdb_path(dsn)
    if path is not None:
        holder = holder_of(path)
        if holder is not None:
            raise ClickHouseError(
                f"the embedded ClickHouse at {path} is in use by {holder}; stop it first, "
                "or point SEALTRAIL_CLICKHOUSE at a ClickHouse server"
            )
        if _clients and any(key.startswith("chdb:") for key in _clients):
            other = next(key for key in _clients if key.startswith("chdb:"))
            raise ClickHouseError(
                f"this process already uses the embedded ClickHouse at {chdb_path(other)}; "
                "one process can open only one embedded store"
            )
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ClickHouseError(
                f"cannot create the embedded ClickHouse directory {path} ({exc.strerror}); "
                "set SEALTRAIL_CLICKHOUSE or SEALTRAIL_HOME to a writable place"
            ) from None
        _take_ownership(path)
        try:
            client = clickhouse_connect.get_client(dsn=f"chdb://{path}")
            client.query("SELECT 1")
        except DriverError as exc:
            holder = holder_of(path)
            if holder is not None:
                raise ClickHouseError(
                    f"the embedded ClickHouse at {path} is in use by {holder}; stop it first, "
                    "or point SEALTRAIL_CLICKHOUSE at a ClickHouse server"
                ) from None
            raise ClickHouseError(
                f"cannot open the embedded ClickHouse at {path}: {first_line(exc)}"
            ) from None
    elif dsn.startswith(("http://", "https://", "clickhouse://", "clickhouses://")):
        try:
            client = clickhouse_connect.get_client(dsn=dsn, compress="lz4", connect_timeout=10)
        except DriverError as exc:
            raise ClickHouseError(
                f"cannot reach ClickHouse at {redact(dsn)}: {first_line(exc)}; "
                "check SEALTRAIL_CLICKHOUSE"
            ) from None
        except (TypeError, ValueError) as exc:
            # e.g. a password both in the userinfo and in ?password=: the client cannot take it.
            raise ConfigError(
                f"the ClickHouse DSN {redact(dsn)!r} has options the client cannot use "
                f"({exc.__class__.__name__}); give the password once, as user:password@host"
            ) from None
    else:
        raise ConfigError(
            f"the ClickHouse DSN {redact(dsn)!r} is not understood; use chdb:///path for the "
            "embedded engine or http(s)://user:password@host:8123 for a server"
        )
    _clients[dsn] = client
    return client


def first_line(exc: BaseException) -> str:
    """The first line of a driver error (at most 300 characters), for one-sentence messages."""
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def quote(text: str) -> str:
    """``text`` as a ClickHouse string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def command(client: Client, sql: str, **kwargs: Any) -> Any:
    """Run a statement, turning driver errors into :class:`ClickHouseError`."""
    try:
        return client.command(sql, **kwargs)
    except DriverError as exc:
        raise ClickHouseError(f"ClickHouse refused a statement: {first_line(exc)}") from None


# Limits of a read-only session (live reads and reading tools on the embedded store).
READ_TIMEOUT_S = 60
READ_MAX_ROWS = 2_000_000
READ_MAX_BYTES = 1 << 30


def read_session(dsn: str) -> Client:
    """A new read-only session on the embedded store ``dsn``, which this process must own (it is
    opened through :func:`connect` first). Its limits are set before ``readonly=1``, which then
    forbids changing any setting, so no query can lift them; the owner's own session, which the
    sink writes through, is untouched (chdb keeps ``SET`` per handle). Never send a read with
    per-query settings through the owner's session instead: chdb keeps the ``SETTINGS`` of a
    failed non-SELECT statement in the session, so a refused write would leave it readonly."""
    path = chdb_path(dsn)
    if path is None or _owner_lock_fds.get(path) is None:
        raise ClickHouseError(f"a read session needs the embedded store {dsn} opened first")
    try:
        client = clickhouse_connect.get_client(dsn=f"chdb://{path}")
        for statement in (
            f"SET max_execution_time = {READ_TIMEOUT_S}",
            f"SET max_result_rows = {READ_MAX_ROWS}",
            f"SET max_result_bytes = {READ_MAX_BYTES}",
            "SET result_overflow_mode = 'throw'",
            "SET readonly = 1",
        ):
            client.command(statement)
    except DriverError as exc:
        raise ClickHouseError(
            f"cannot open a read session on the embedded ClickHouse at {path}: {first_line(exc)}"
        ) from None
    return client
