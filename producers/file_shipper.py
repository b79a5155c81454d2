"""Ship a kube-apiserver audit log file (JSON lines, the log backend) to the raw topic.

The position (inode, byte offset, hash of the first line) is written to a small file with an
atomic rename and fsync only after Kafka acknowledged every line before that offset, so a clean
restart resumes without loss or duplicates. After a crash at most the lines sent since the last
position write are sent again; downstream deduplicates by (auditID, stage).

Rotation: on rename (logrotate ``create``, the apiserver's own ``--audit-log-maxsize``) the old
file is finished through its open descriptor before the new file at the path is opened; on
copytruncate (the file shrinks below the position, or its first line changes) it starts over at 0.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from producers.k8s import (
    MAX_EVENT_BYTES,
    REJECT_KEEP_BYTES,
    Reject,
    RejectKind,
    encode_lines,
    over_limit_reason,
    reject_event,
)
from producers.kafka_writer import Batch, ConfirmedProducer, now_us
from schemas.codec import encode_audit_event
from sealtrail.infra.config import Settings
from sealtrail.infra.errors import ConfigError, KafkaNotAuthorized, KafkaUnavailable
from sealtrail.infra.service import StopFlag, backoff

log = logging.getLogger(__name__)

SOURCE = "file"
CHUNK_BYTES = 1024 * 1024
FIRST_LINE_BYTES = 4096
ACK_TIMEOUT_S = 60.0


@dataclass(slots=True)
class Position:
    """Where shipping stands: everything before ``offset`` of file ``inode`` is acknowledged."""

    inode: int = 0
    offset: int = 0
    first_line: str = ""  # sha256 hex of the first line (up to 4 KiB), "" if none yet

    def to_json(self) -> str:
        return json.dumps(
            {"inode": self.inode, "offset": self.offset, "first_line": self.first_line}
        )


@dataclass(slots=True)
class ShipStats:
    events: int = 0
    rejects: int = 0
    files: int = 0
    offset: int = 0
    started: float = field(default_factory=time.monotonic)

    def summary(self, path: Path) -> str:
        took = time.monotonic() - self.started
        return (
            f"shipped {self.events} event(s) and {self.rejects} reject(s) from {path} "
            f"in {took:.1f}s; position {self.offset}"
        )


def default_position_file(settings: Settings, path: Path) -> Path:
    resolved = str(path.resolve())
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", resolved).strip("_")[-100:]
    digest = hashlib.sha256(resolved.encode()).hexdigest()[:8]
    return settings.home / "shipper" / f"{name}-{digest}.pos"


def load_position(path: Path) -> Position | None:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return Position(int(raw["inode"]), int(raw["offset"]), str(raw.get("first_line", "")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"the position file {path} is unreadable ({exc.__class__.__name__}); "
            "fix or remove it (removing it ships the file again from the start)"
        ) from None


def save_position(path: Path, position: Position) -> None:
    """Atomic and durable: write a temp file, fsync it, rename over, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        out.write(position.to_json())
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def first_line_hash(handle: BinaryIO) -> str:
    """sha256 of the first line (complete lines only, at most 4 KiB); "" while there is none."""
    here = handle.tell()
    handle.seek(0)
    head = handle.read(FIRST_LINE_BYTES)
    handle.seek(here)
    end = head.find(b"\n")
    if end < 0:
        if len(head) < FIRST_LINE_BYTES:
            return ""
        end = len(head)
    return hashlib.sha256(head[:end]).hexdigest()


class FileShipper:
    """Reads a log file from its saved position and ships it; ``run()`` until EOF or stopped."""

    def __init__(
        self,
        settings: Settings,
        path: Path,
        cluster: str,
        *,
        follow: bool = False,
        position_file: Path | None = None,
        poll_interval: float = 0.25,
        max_event_bytes: int = MAX_EVENT_BYTES,
        stop: StopFlag | None = None,
        producer: ConfirmedProducer | None = None,
    ) -> None:
        if not cluster:
            raise ConfigError("the file shipper needs --cluster NAME to name the cluster")
        self.settings = settings
        self.path = path
        self.cluster = cluster
        self.key = cluster.encode("utf-8")
        self.follow = follow
        self.position_file = position_file or default_position_file(settings, path)
        self.poll_interval = poll_interval
        self.max_event_bytes = max_event_bytes
        self.stop = stop if stop is not None else StopFlag()  # an unset flag is falsy
        self._own_producer = producer is None
        self.producer = producer if producer is not None else ConfirmedProducer(settings)
        self.stats = ShipStats()

    # -- file handling ---------------------------------------------------------------------
    def _open(self, path: Path) -> BinaryIO | None:
        try:
            return open(path, "rb")  # noqa: SIM115 - kept open across rotations on purpose
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"cannot read {path} ({exc.strerror}); check the path") from None

    def _find_rotated(self, saved: Position) -> BinaryIO | None:
        """The file that had the saved inode, if it was renamed next to the path while we slept."""
        try:
            siblings = list(self.path.parent.iterdir())
        except OSError:
            return None
        for sibling in siblings:
            try:
                if sibling.is_file() and sibling.stat().st_ino == saved.inode:
                    handle = self._open(sibling)
                    if handle is not None and first_line_hash(handle) == saved.first_line:
                        log.info("finishing %s (rotated from %s while stopped)", sibling, self.path)
                        return handle
                    if handle is not None:
                        handle.close()
            except OSError:
                continue
        return None

    def _resume(self, handle: BinaryIO, saved: Position | None) -> int:
        """Where to start in ``handle`` given the saved position."""
        if saved is None:
            return 0
        st = os.fstat(handle.fileno())
        if st.st_ino != saved.inode:
            return 0
        if st.st_size < saved.offset:
            log.info("%s is shorter than the saved position: truncated, starting at 0", self.path)
            return 0
        if saved.first_line and first_line_hash(handle) != saved.first_line:
            log.info("%s has a different first line: replaced, starting at 0", self.path)
            return 0
        return saved.offset

    # -- shipping --------------------------------------------------------------------------
    def _ship_lines(self, lines: list[bytes]) -> Batch:
        """Parse a chunk's lines (producers.k8s, as the webhook's items) and queue them as one
        batch, counted once; rejects stay in line order among the events."""
        batch = Batch()
        received = now_us()
        values: list[bytes] = []
        events = rejects = 0
        for outcome in encode_lines(
            lines, self.cluster, received, max_event_bytes=self.max_event_bytes
        ):
            if type(outcome) is Reject:
                values.append(
                    encode_audit_event(reject_event(outcome, self.cluster, SOURCE, received))
                )
                rejects += 1
            else:
                values.append(outcome)  # type: ignore[arg-type]
                events += 1
        try:
            self.producer.produce_many(batch, self.settings.topics.raw, self.key, values)
        finally:
            batch.seal()
        self.stats.events += events
        self.stats.rejects += rejects
        return batch

    def _long_line(
        self, handle: BinaryIO, offset: int, final: bool
    ) -> tuple[int, bytes, Reject | None] | None:
        """The line at ``offset`` that no chunk holds whole: (its length with the newline, its
        bytes, None) when it is within --max-event-bytes; (length, b"", a reject holding its
        first MiB, size and SHA-256) when it is longer, read through without holding it; None
        when it has not been written to its end yet (and ``final`` is not set)."""
        handle.seek(offset)
        kept = bytearray()
        hasher = hashlib.sha256()
        size = 0
        while True:
            data = handle.read(CHUNK_BYTES)
            cut = data.find(b"\n")
            part = data if cut < 0 else data[:cut]
            size += len(part)
            hasher.update(part)
            if len(kept) <= self.max_event_bytes:
                kept += part[: self.max_event_bytes + 1 - len(kept)]
            if cut >= 0 or (not data and final):
                length = size + (1 if cut >= 0 else 0)
                if size <= self.max_event_bytes:
                    return length, bytes(kept) + b"\n", None
                reason = over_limit_reason(size, self.max_event_bytes)
                keep = bytes(kept[:REJECT_KEEP_BYTES])
                return (
                    length,
                    b"",
                    Reject(reason, keep, size, hasher.digest(), RejectKind.TOO_LARGE),
                )
            if not data:
                return None

    def _confirm(self, batch: Batch) -> None:
        if not self.producer.wait(batch, ACK_TIMEOUT_S):
            self.producer.raise_if_refused(batch)
            raise KafkaUnavailable(
                f"Kafka at {self.settings.kafka} did not acknowledge within {ACK_TIMEOUT_S:.0f}s; "
                "check that it is up"
            )
        self.producer.raise_if_refused(batch)
        if batch.error is not None:
            raise KafkaUnavailable(f"Kafka did not store a chunk of {self.path} ({batch.error})")

    def _ship_from(self, handle: BinaryIO, offset: int, final: bool) -> int:
        """Ship complete lines from ``offset`` to EOF (the partial tail too if ``final``).

        Returns the new acknowledged offset; the position file is written after every chunk.
        """
        first = ""
        while not self.stop.is_set():
            handle.seek(offset)
            data = handle.read(CHUNK_BYTES)
            if not data:
                return offset
            end = data.rfind(b"\n") + 1
            long_line: Reject | None = None
            if end == 0:
                if len(data) >= CHUNK_BYTES:
                    # A line longer than a chunk (kube writes events whole): read on to its end.
                    found = self._long_line(handle, offset, final)
                    if found is None:
                        return offset
                    end, data, long_line = found
                elif final:
                    end = len(data)
                else:
                    return offset
            events_before, rejects_before = self.stats.events, self.stats.rejects
            if long_line is not None:
                batch = Batch()
                self.producer.produce_reject(batch, long_line, SOURCE, self.cluster)
                self.stats.rejects += 1
                batch.seal()
            else:
                batch = self._ship_lines(data[:end].split(b"\n"))
            try:
                self._confirm(batch)
            except KafkaUnavailable:
                # Not acknowledged: count again on the retry, from the same offset.
                self.stats.events, self.stats.rejects = events_before, rejects_before
                raise
            offset += end
            if not first:
                first = first_line_hash(handle)
            save_position(
                self.position_file, Position(os.fstat(handle.fileno()).st_ino, offset, first)
            )
            self.stats.offset = offset
        return offset

    def _ship_retrying(self, handle: BinaryIO, offset: int, final: bool) -> int:
        delays = backoff(0.5, 15.0)
        while True:
            try:
                return self._ship_from(handle, offset, final)
            except KafkaUnavailable as exc:
                # A refused login or write does not heal by retrying: stop and say so.
                if not self.follow or isinstance(exc, KafkaNotAuthorized):
                    raise
                delay = next(delays)
                log.warning("%s; retrying in %.1fs", exc, delay)
                if self.stop.wait(delay):
                    return offset
                saved = load_position(self.position_file)
                if saved is not None and saved.inode == os.fstat(handle.fileno()).st_ino:
                    offset = saved.offset

    def run(self) -> ShipStats:
        """Ship to EOF (or, with ``follow``, until stopped); flush; return the counts."""
        try:
            return self._run()
        finally:
            if self._own_producer:
                self.producer.close(30.0)

    def _run(self) -> ShipStats:
        saved = load_position(self.position_file)
        handle = self._open(self.path)
        if handle is None and not self.follow:
            raise ConfigError(f"{self.path} does not exist; check the path")
        if saved is not None:
            rotated = None
            if handle is None or os.fstat(handle.fileno()).st_ino != saved.inode:
                rotated = self._find_rotated(saved)
            if rotated is not None:
                self._ship_retrying(rotated, saved.offset, final=True)
                rotated.close()
                self.stats.files += 1
                saved = None
        offset = 0 if handle is None else self._resume(handle, saved)
        shipped_head = ""
        while not self.stop.is_set():
            if handle is None:
                if self.stop.wait(self.poll_interval):
                    break
                handle = self._open(self.path)
                offset = 0
                continue
            offset = self._ship_retrying(handle, offset, final=not self.follow)
            self.stats.offset = offset
            if not shipped_head and offset:
                shipped_head = first_line_hash(handle)
            if not self.follow:
                break
            # At EOF: has the path been rotated (new inode) or truncated (shorter than us)?
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                st = None
            mine = os.fstat(handle.fileno())
            if st is None or st.st_ino != mine.st_ino:
                # Renamed away: finish what the writer appended before switching, then switch.
                offset = self._ship_retrying(handle, offset, final=True)
                handle.close()
                self.stats.files += 1
                handle = self._open(self.path) if st is not None else None
                offset = 0
                shipped_head = ""
                if handle is not None:
                    log.info("%s was rotated; shipping the new file", self.path)
                continue
            head = first_line_hash(handle) if offset else ""
            if mine.st_size < offset or (head and shipped_head and head != shipped_head):
                log.info("%s was truncated (copytruncate); starting at 0", self.path)
                offset = 0
                shipped_head = ""
                continue
            self.stop.wait(self.poll_interval)
        if handle is not None:
            handle.close()
            self.stats.files += 1
        return self.stats
