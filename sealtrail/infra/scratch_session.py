"""A session on the embedded store for the verifier's own SQL checks that need scratch files.

ClickHouse decodes Avro only from a file or a ``format()`` constant, and a ``readonly=1``
session may use neither. A :class:`ScratchSession` is a chdb session set ``readonly=2`` (table
functions allowed, no write to any table, and nothing else: ``INSERT``, ``ALTER``, ``CREATE``
and ``DROP`` of the store's tables are refused as before) plus a private 0700 directory. Its
files are written with ``SELECT ... INTO OUTFILE ... APPEND`` (the engine writes them, no row
passes through Python) and read back with ``file()``; they are removed by the caller, and the
directory on :meth:`ScratchSession.close`.

Only fixed SQL built by the verifier runs here, never a user's statement: user SQL goes through
:mod:`sealtrail.infra.reader`, whose sessions stay ``readonly=1`` and refuse ``INTO OUTFILE``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError as DriverError

from sealtrail.infra import clickhouse
from sealtrail.infra.errors import ClickHouseError

__all__ = ["Append", "ScratchSession"]


def _failure(exc: DriverError) -> ClickHouseError:
    return ClickHouseError(f"ClickHouse refused a verifier query: {clickhouse.first_line(exc)}")


@dataclass(frozen=True, slots=True)
class Append:
    """One ``SELECT`` whose single String column goes to the end of ``path``, bytes as they are."""

    path: Path
    sql: str
    parameters: Mapping[str, Any]


def _check_session(path: str) -> Client:
    """A new ``readonly = 2`` session on the embedded store at ``path`` (this process owns it)."""
    try:
        client = clickhouse_connect.get_client(dsn=f"chdb://{path}")
        client.command("SET readonly = 2")
    except DriverError as exc:
        raise ClickHouseError(
            f"cannot open a check session on the embedded ClickHouse at {path}: "
            f"{clickhouse.first_line(exc)}"
        ) from None
    return client


class ScratchSession:
    """See the module docstring. Build one with :meth:`open` (a new ``readonly=2`` session on
    an embedded store this process owns) or :meth:`over` (an existing session, e.g. the owner's
    writable one in tests and benches)."""

    def __init__(
        self,
        client: Client,
        directory: Path,
        *,
        owns_client: bool,
        owns_directory: bool,
        store: str | None = None,
    ) -> None:
        self.client = client
        self.directory = directory
        self._owns_client = owns_client
        self._owns_directory = owns_directory
        # The store's path, for more sessions that append at once (append_all); None: one.
        self._store = store
        self._writers: list[Client] = []

    @classmethod
    def open(cls, dsn: str) -> ScratchSession:
        path = clickhouse.chdb_path(dsn)
        if path is None or not clickhouse.owns(path):
            raise ClickHouseError(f"a scratch session needs the embedded store {dsn} opened first")
        client = _check_session(str(path))
        try:
            directory = Path(tempfile.mkdtemp(prefix="sealtrail-check-"))  # 0700
        except OSError as exc:
            with contextlib.suppress(Exception):
                client.close()
            raise ClickHouseError(
                f"cannot make a scratch directory in {tempfile.gettempdir()} ({exc.strerror}); "
                "set TMPDIR to a writable directory"
            ) from None
        return cls(client, directory, owns_client=True, owns_directory=True, store=str(path))

    @classmethod
    def over(cls, client: Client, directory: Path, store: str | None = None) -> ScratchSession:
        """A session over ``client``; with ``store`` (the embedded store's path, which this
        process owns) :meth:`append_all` opens sessions of its own to append at once."""
        return cls(client, directory, owns_client=False, owns_directory=False, store=store)

    def new_file(self, header: bytes, suffix: str = ".avro") -> Path:
        """A new file of this session's directory (0600) holding ``header``."""
        path = self.directory / f"{uuid.uuid4().hex}{suffix}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                if os.write(fd, header) != len(header):
                    raise OSError(0, "short write")
            finally:
                os.close(fd)
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise ClickHouseError(
                f"cannot write a scratch file in {self.directory} ({exc.strerror})"
            ) from None
        return path

    def append(self, path: Path, sql: str, parameters: Mapping[str, Any]) -> None:
        """Append the single String column of ``sql``'s rows to ``path``, bytes as they are."""
        self._append_on(self.client, Append(path, sql, parameters))

    def append_all(self, appends: Sequence[Append]) -> None:
        """Run ``appends`` at once, each on a session of its own: ClickHouse writes an ``INTO
        OUTFILE`` result from one thread, so one append at a time leaves a core idle. One after
        another on this session when it has no store to open more sessions on. Raises the
        first failure once every append has ended (the files are the caller's to remove)."""
        failures: list[ClickHouseError] = []
        if len(appends) < 2 or not self._writers_for(len(appends) - 1):
            for a in appends:
                try:
                    self._append_on(self.client, a)
                except ClickHouseError as exc:
                    failures.append(exc)
        else:
            with ThreadPoolExecutor(max_workers=len(appends) - 1) as pool:
                others = [
                    pool.submit(self._append_on, writer, a)
                    for writer, a in zip(self._writers, appends[1:], strict=False)
                ]
                try:
                    self._append_on(self.client, appends[0])
                except ClickHouseError as exc:
                    failures.append(exc)
                for future in others:
                    try:
                        future.result()
                    except ClickHouseError as exc:
                        failures.append(exc)
        if failures:
            raise failures[0]

    def _writers_for(self, count: int) -> bool:
        """Open writer sessions up to ``count``; False when there can be none."""
        if self._store is None:
            return False
        while len(self._writers) < count:
            try:
                self._writers.append(_check_session(self._store))
            except ClickHouseError:
                self._store = None  # appends go one after another from now on
                return False
        return True

    def _append_on(self, client: Client, a: Append) -> None:
        if a.path.parent != self.directory:
            raise ClickHouseError(f"{a.path} is not a file of the check session's directory")
        try:
            client.raw_query(
                f"{a.sql} INTO OUTFILE {clickhouse.quote(str(a.path))} APPEND",
                parameters=dict(a.parameters),
                fmt="RawBLOB",
            )
        except DriverError as exc:
            raise _failure(exc) from None

    def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> Any:
        """Run ``sql`` (clickhouse-connect's result: ``.result_rows``)."""
        try:
            return self.client.query(sql, parameters=dict(parameters or {}))
        except DriverError as exc:
            raise _failure(exc) from None

    def close(self) -> None:
        for writer in self._writers:
            with contextlib.suppress(Exception):
                writer.close()
        self._writers.clear()
        if self._owns_client:
            with contextlib.suppress(Exception):
                self.client.close()
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)
