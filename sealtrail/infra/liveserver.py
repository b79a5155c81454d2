"""Live reads: the process owning the embedded store serves read-only queries on a Unix socket.

The embedded engine admits one process per store, so while ``sealtrail sink`` (alone or under
``sealtrail run``) owns it, ``query``, ``history``, ``verify`` and ``prove`` reach it here
(:class:`sealtrail.infra.reader.SocketReader`). Each query:

* passes :func:`sealtrail.infra.readonly_sql.require_read_only` (one read statement, no OUTFILE);
* runs in a chdb session of its own set ``readonly=1`` after its limits (time, rows, bytes;
  :func:`sealtrail.infra.clickhouse.read_session`), so it cannot write nor lift the limits, and the
  sink's session is untouched;
* answers at most :data:`sealtrail.infra.livewire.MAX_RESPONSE_BYTES`.

Besides SQL, a request may name one of the owner's *checks* (``{"check": name, "arguments":
{...}}``): fixed work the application registered, run with a
:class:`~sealtrail.infra.scratch_session.ScratchSession` of the owner's (the verifier's decoded-
column check, which needs scratch files that a ``readonly=1`` session cannot have). A check
takes only values (it validates them), never SQL.

Authentication is the file system: the socket is mode 0600 in a 0700 directory under
``$SEALTRAIL_HOME``, so only the owner's user (and root) can connect. A socket left by a killed
owner is replaced by the next owner, which holds the store's lock and so is the only one serving.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import stat
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError as DriverError

from sealtrail.infra import clickhouse, livewire
from sealtrail.infra.errors import SealtrailError, WriteRefused
from sealtrail.infra.reader import driver_error
from sealtrail.infra.readonly_sql import require_read_only
from sealtrail.infra.scratch_session import ScratchSession

log = logging.getLogger(__name__)

__all__ = ["Check", "CheckResult", "LiveReadServer"]

CheckResult = tuple[list[str], list[str], list[tuple[Any, ...]]]
"""A check's answer: column names, ClickHouse type names, rows."""
Check = Callable[[ScratchSession, Mapping[str, Any]], CheckResult]

SESSIONS = 2  # concurrent queries; more clients wait for a session
MAX_CONNECTIONS = 16
IDLE_TIMEOUT_S = 600.0


class LiveReadServer:
    """``LiveReadServer(dsn, path).start()`` ... ``.stop()``; the process must own ``dsn``."""

    def __init__(
        self,
        dsn: str,
        path: Path,
        sessions: int = SESSIONS,
        checks: Mapping[str, Check] | None = None,
    ) -> None:
        self.dsn = dsn
        self.path = path
        self._checks = dict(checks or {})
        self._scratch: ScratchSession | None = None
        self._scratch_lock = threading.Lock()  # one check at a time: they use both cores
        self._sessions: queue.Queue[Client] = queue.Queue()
        self._session_budget = sessions
        self._budget_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._inode: int | None = None
        self._closing = threading.Event()
        self.queries = 0

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> LiveReadServer:
        directory = self.path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = directory.stat()
        if info.st_uid != os.getuid():
            raise SealtrailError(
                f"{directory} belongs to another user; the live-read socket must live in a "
                "directory only this user can enter (check SEALTRAIL_HOME)"
            )
        if stat.S_IMODE(info.st_mode) != 0o700:
            os.chmod(directory, 0o700)
        # We own the store's lock, so a socket file here is a dead owner's: replace it.
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
            log.info("removed the live-read socket %s a previous owner left", self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        try:
            listener.bind(str(temp))
            os.chmod(temp, 0o600)  # before it has its name: never connectable with a wider mode
            listener.listen(64)
            os.replace(temp, self.path)
        except OSError:
            listener.close()
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        self._inode = self.path.stat().st_ino
        self._listener = listener
        self._thread = threading.Thread(target=self._accept_loop, name="live-read", daemon=True)
        self._thread.start()
        log.info("serving read-only queries on %s", self.path)
        return self

    def stop(self) -> None:
        self._closing.set()
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with contextlib.suppress(OSError):
            if self._inode is not None and self.path.stat().st_ino == self._inode:
                self.path.unlink()
        if self._thread is not None:
            self._thread.join(timeout=5)
        while not self._sessions.empty():
            with contextlib.suppress(Exception):
                self._sessions.get_nowait().close()
        with self._scratch_lock:
            if self._scratch is not None:
                self._scratch.close()
                self._scratch = None

    # -- serving --------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._closing.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed by stop()
            if not self._slots.acquire(blocking=False):
                self._reply_and_close(
                    conn,
                    _error("busy", "the sink serves too many readers now; try again in a moment"),
                )
                continue
            threading.Thread(
                target=self._serve, args=(conn,), name="live-read-conn", daemon=True
            ).start()

    def _reply_and_close(self, conn: socket.socket, doc: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            livewire.write_frame(conn, livewire.encode(doc))
        conn.close()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(IDLE_TIMEOUT_S)
            while not self._closing.is_set():
                payload = livewire.read_frame(conn, livewire.MAX_REQUEST_BYTES)
                if payload is None:
                    return
                reply = livewire.encode(self._answer(payload))
                if len(reply) > livewire.MAX_RESPONSE_BYTES:
                    reply = livewire.encode(
                        _error(
                            "limit",
                            f"the result is over the live-read limit "
                            f"({livewire.MAX_RESPONSE_BYTES >> 20} MiB); narrow it with WHERE "
                            "or LIMIT",
                        )
                    )
                livewire.write_frame(conn, reply)
        except (OSError, ConnectionError) as exc:
            log.debug("live-read connection ended: %s", exc)
        finally:
            conn.close()
            self._slots.release()

    def _answer(self, payload: bytes) -> dict[str, Any]:
        try:
            request = livewire.decode(payload)
            if "check" in request:
                return self._run_check(request)
            sql = request.get("sql")
            if not isinstance(sql, str):
                return _error("bad", "the request has no SQL")
            require_read_only(sql)
            database = clickhouse.validate_identifier(str(request.get("database") or "default"))
            session = self._session()
            healthy = False
            try:
                session.database = database
                result = session.query(
                    sql,
                    parameters=request.get("parameters"),
                    column_formats=request.get("column_formats") or None,
                    query_formats=request.get("query_formats") or None,
                )
                rows = result.result_rows  # read here: a stopped query fails while it streams
                healthy = True
            finally:
                self._release(session, healthy)
        except WriteRefused as exc:
            return _error("refused", str(exc))
        except DriverError as exc:
            err = driver_error(exc)
            return _error("refused" if isinstance(err, WriteRefused) else "clickhouse", str(err))
        except SealtrailError as exc:
            return _error("clickhouse", str(exc))
        except (TypeError, ValueError) as exc:  # parameters clickhouse-connect cannot bind
            return _error("bad", f"the query parameters are not usable ({exc})")
        except Exception as exc:  # noqa: BLE001 - a reader's query must never stop the sink
            log.warning("live-read query failed: %s", type(exc).__name__)
            return _error("clickhouse", f"the query failed ({type(exc).__name__}); check the SQL")
        return self._rows(list(result.column_names), [t.name for t in result.column_types], rows)

    def _rows(self, columns: list[str], types: list[str], rows: Any) -> dict[str, Any]:
        """A successful answer (a query's or a check's), counted."""
        self.queries += 1
        return {
            "ok": True,
            "columns": columns,
            "types": types,
            "rows": livewire.encode_rows(rows, types),
        }

    def _run_check(self, request: Mapping[str, Any]) -> dict[str, Any]:
        name = request.get("check")
        check = self._checks.get(name) if isinstance(name, str) else None
        if check is None:
            return _error("bad", f"the sink has no check named {name!r}; update the sink")
        arguments = request.get("arguments")
        if not isinstance(arguments, Mapping):
            return _error("bad", "the check request has no arguments")
        with self._scratch_lock:
            if self._closing.is_set():
                return _error("clickhouse", "the sink is stopping; run the command again")
            if self._scratch is None:
                self._scratch = ScratchSession.open(self.dsn)
            columns, types, rows = check(self._scratch, arguments)
        return self._rows(columns, types, rows)

    def _release(self, session: Client, healthy: bool) -> None:
        """Back to the pool; a session whose query failed may hold a broken stream: a new one
        replaces it."""
        if healthy:
            self._sessions.put(session)
            return
        with contextlib.suppress(Exception):
            session.close()
        with self._budget_lock:
            self._session_budget += 1

    def _session(self) -> Client:
        """A free read session: a pooled one, a new one while under the budget, else wait."""
        while True:
            with contextlib.suppress(queue.Empty):
                return self._sessions.get_nowait()
            with self._budget_lock:
                if self._session_budget > 0:
                    self._session_budget -= 1
                    try:
                        return clickhouse.read_session(self.dsn)
                    except SealtrailError:
                        self._session_budget += 1
                        raise
            with contextlib.suppress(queue.Empty):
                return self._sessions.get(timeout=0.2)


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"ok": False, "kind": kind, "error": message}
