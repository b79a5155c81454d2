"""Bad input and attacks against a real in-process webhook on the session broker.

* hypothesis-generated bodies (malformed JSON, wrong types in every field, huge strings,
  invalid UTF-8, mixed valid/invalid items, wrong content types, ...): every request gets a
  clear 4xx or a 200 with rejects counted, and afterwards the raw topic holds exactly the
  valid events and the rejects topic one entry per rejected item or body;
* a raw-socket fuzzer: garbage request lines, header floods, Content-Length lies, chunked
  abuse, slowloris clients, oversize bodies, many connections;
* authentication: tokens, malformed Authorization headers, body-claimed clusters, TLS client
  certificates from the wrong CA or none.

The server must stay healthy throughout and a valid batch afterwards still lands.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from producers.load import event_list
from producers.webhook import WebhookOptions, WebhookServer
from sealtrail.infra.config import Settings
from sealtrail.infra.errors import KafkaUnavailable
from tests.integration import test_producers as producer_tests
from tests.integration.test_producers import (
    TOKEN_A,
    TOKEN_B,
    get,
    good_lines,
    post,
    started_webhook,
    token_file,
)

T = TypeVar("T")
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
NOT_NULL = JSON_VALUES.filter(lambda v: v is not None)

# Fields the webhook types; a non-null value of another type must reject the item.
STRING_FIELDS = [
    ("auditID",),
    ("stage",),
    ("verb",),
    ("level",),
    ("requestURI",),
    ("userAgent",),
    ("user", "username"),
    ("user", "uid"),
    ("impersonatedUser", "username"),
    ("objectRef", "resource"),
    ("objectRef", "namespace"),
    ("objectRef", "name"),
    ("objectRef", "subresource"),
    ("objectRef", "apiGroup"),
    ("objectRef", "apiVersion"),
    ("objectRef", "uid"),
    ("requestReceivedTimestamp",),
    ("stageTimestamp",),
    ("apiVersion",),
]
OBJECT_FIELDS = [("user",), ("objectRef",), ("responseStatus",), ("impersonatedUser",)]
STRING_LIST_FIELDS = [("user", "groups"), ("sourceIPs",)]


@pytest.fixture(scope="module")
def good_items() -> list[bytes]:
    return good_lines()


@pytest.fixture
def hook(settings: Settings, tmp_path: Path) -> Iterator[WebhookServer]:
    server = started_webhook(
        settings,
        tmp_path,
        read_timeout=1.5,
        # A small per-event limit so the attacks below can pass it cheaply (default 32 MiB).
        max_event_bytes=100 * 1024,
    )
    try:
        yield server
    finally:
        assert server.stop() == 0


def _retried(read: Callable[[Settings], T], settings: Settings) -> T:
    """Run a topic reader, retried: a fresh topic's partitions may still lack a leader."""
    deadline = time.monotonic() + 20
    while True:
        try:
            return read(settings)
        except KafkaUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def end_offsets(settings: Settings) -> list[int]:
    return _retried(producer_tests.end_offsets, settings)


def raw_events(settings: Settings) -> list[dict[str, Any]]:
    return _retried(producer_tests.raw_events, settings)


def rejects(settings: Settings) -> list[dict[str, Any]]:
    return _retried(producer_tests.rejects, settings)


def metric(server: WebhookServer, name: str, context: ssl.SSLContext | None = None) -> float:
    url = server.url().replace("127.0.0.1", "localhost") + "metrics"
    with urllib.request.urlopen(url, timeout=10, context=context) as resp:
        body = resp.read()
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def assert_healthy(server: WebhookServer) -> None:
    assert get(server.url() + "healthz") == (200, b"ok\n")


def assert_valid_batch_lands(server: WebhookServer, settings: Settings, lines: list[bytes]) -> None:
    before = len(raw_events(settings))
    status, _, answer = post(server.url(), event_list(lines), TOKEN_A)
    assert (status, json.loads(answer)) == (200, {"accepted": len(lines), "rejected": 0})
    assert len(raw_events(settings)) == before + len(lines)


def one_line_error(answer: bytes) -> str:
    error = json.loads(answer)["error"]
    assert isinstance(error, str) and error and "\n" not in error and len(error) < 300
    return error


# ---------------------------------------------------------------------------------------------
# (a) hypothesis bodies


def _set(event: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = event
    for key in path[:-1]:
        if type(node.get(key)) is not dict:
            node[key] = {}
        node = node[key]
    node[path[-1]] = value


def _wrong_for(path: tuple[str, ...], kind: str) -> st.SearchStrategy[Any]:
    if kind == "str":
        return NOT_NULL.filter(lambda v: not isinstance(v, str))
    if kind == "obj":
        return NOT_NULL.filter(lambda v: not isinstance(v, dict))
    if kind == "list":
        return NOT_NULL.filter(
            lambda v: not isinstance(v, list) or any(not isinstance(x, str) for x in v)
        )
    # responseStatus.code: anything but an in-range int
    return NOT_NULL.filter(lambda v: type(v) is not int)


@st.composite
def bad_item(draw: st.DrawFn, lines: list[bytes]) -> bytes:
    """An item the webhook must reject: one typed field holds the wrong type, or it is huge."""
    event = json.loads(draw(st.sampled_from(lines)))
    choice = draw(st.integers(0, 5))
    if choice == 0:
        path = draw(st.sampled_from(STRING_FIELDS))
        _set(event, path, draw(_wrong_for(path, "str")))
    elif choice == 1:
        path = draw(st.sampled_from(OBJECT_FIELDS))
        _set(event, path, draw(_wrong_for(path, "obj")))
    elif choice == 2:
        path = draw(st.sampled_from(STRING_LIST_FIELDS))
        _set(event, path, draw(_wrong_for(path, "list")))
    elif choice == 3:
        _set(event, ("responseStatus", "code"), draw(_wrong_for(("code",), "int")))
    elif choice == 4:
        # over the hook's 100 KiB per-event limit: a huge string somewhere in the event
        event["annotations"] = {"x": "A" * draw(st.integers(101 * 1024, 300 * 1024))}
    else:
        for key in draw(st.sampled_from([("auditID",), ("verb",), ("stage",)])):
            event.pop(key, None)
    if choice != 4 and draw(st.booleans()):
        # the item claims a cluster; it must make no difference
        event["cluster"] = "cluster-evil"
    return json.dumps(event, ensure_ascii=draw(st.booleans())).encode("utf-8")


@st.composite
def whole_body_garbage(draw: st.DrawFn) -> bytes:
    """A body that is not an EventList/Event at all: each must be a 400 with one reason."""
    kind = draw(st.integers(0, 7))
    if kind == 0:
        return draw(st.binary(min_size=1, max_size=300)).lstrip() or b"x"
    if kind == 1:
        return json.dumps(draw(NOT_NULL.filter(lambda v: not isinstance(v, dict)))).encode()
    if kind == 2:
        return b"\xff\xfe" + draw(st.binary(max_size=100))  # not UTF-8
    if kind == 3:
        good = event_list([b'{"kind":"Event"}'])
        cut = draw(st.integers(1, len(good) - 1))
        return good[:cut]
    if kind == 4:
        return (
            b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":'
            + json.dumps(draw(NOT_NULL.filter(lambda v: not isinstance(v, list)))).encode()
            + b"}"
        )
    if kind == 5:
        return (
            b'{"kind":"EventList","apiVersion":'
            + json.dumps(
                draw(st.text(max_size=20).filter(lambda s: not s.startswith("audit.k8s.io/")))
            ).encode()
            + b',"items":[]}'
        )
    if kind == 6:
        return b"   \n\t "
    return b'{"kind":"EventList","items":[{"a":1}] } trailing'


@st.composite
def request_case(draw: st.DrawFn, lines: list[bytes]) -> tuple[str, bytes, list[bytes], int]:
    """(mode, body, good items in it, bad item count)."""
    mode = draw(st.sampled_from(["mixed", "mixed", "mixed", "garbage"]))
    if mode == "garbage":
        return mode, draw(whole_body_garbage()), [], 0
    good = draw(st.lists(st.sampled_from(lines), max_size=6))
    bad = draw(st.lists(bad_item(lines), max_size=4))
    items = [(g, True) for g in good] + [(b, False) for b in bad]
    order = draw(st.permutations(items))
    body = event_list([item for item, _ok in order])
    if draw(st.booleans()):
        body = body.replace(b'"items":[', b'"cluster":"cluster-evil","items":[', 1)
    return mode, body, [item for item, ok in order if ok], len(bad)


def test_hypothesis_bodies_are_answered_and_nothing_is_lost(
    settings: Settings, hook: WebhookServer, good_items: list[bytes]
) -> None:
    expected_good: list[bytes] = []
    expected_rejects = [0]
    statuses: dict[int, int] = {}

    @hsettings(
        max_examples=60,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(case=request_case(good_items))
    def send(case: tuple[str, bytes, list[bytes], int]) -> None:
        mode, body, good, bad = case
        status, _, answer = post(hook.url(), body, TOKEN_A)
        statuses[status] = statuses.get(status, 0) + 1
        if mode == "mixed":
            assert status == 200, answer
            assert json.loads(answer) == {"accepted": len(good), "rejected": bad}
            expected_good.extend(good)
            expected_rejects[0] += bad
        else:
            assert status == 400, (body, answer)
            one_line_error(answer)
            expected_rejects[0] += 1

    send()
    assert_healthy(hook)
    events = raw_events(settings)
    assert {e["cluster"] for e in events} <= {"cluster-a"}  # body never chooses the cluster
    assert sorted(e["original"] for e in events) == sorted(expected_good)
    found = rejects(settings)
    assert len(found) == expected_rejects[0]
    assert all(r["reason"] and r["cluster"] == "cluster-a" for r in found)
    assert statuses.get(200, 0) > 0 and statuses.get(400, 0) > 0, statuses


def test_deep_nesting_huge_strings_and_content_types(
    settings: Settings, hook: WebhookServer, good_items: list[bytes]
) -> None:
    url = hook.url()
    before = end_offsets(settings)
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "", "application/jsonx"):
        status, _, answer = post(url, event_list(good_items[:2]), TOKEN_A, ctype=ctype)
        assert status == 415, ctype
        assert "application/json" in one_line_error(answer)
    assert end_offsets(settings) == before

    deep = b"[" * 10_000 + b"]" * 10_000
    for body in (
        deep,  # top level not an object
        b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":' + deep + b"}",
        event_list([good_items[0], b'{"kind":"Event","requestObject":' + deep + b"}"]),
        b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
        b"",
        b"null",
        b'"a string"',
        b"[]",
        event_list([good_items[0][:-5] + b"\xc3\x28" + good_items[0][-5:]]),  # bad UTF-8
    ):
        status, _, answer = post(url, body, TOKEN_A)
        assert status == 400, body[:80]
        one_line_error(answer)

    # A huge string item is rejected on its own; its neighbours are stored.
    huge = json.loads(good_items[1])
    huge["requestURI"] = "/" + "x" * (2 * 1024 * 1024)
    body = event_list([good_items[0], json.dumps(huge).encode(), good_items[2]])
    status, _, answer = post(url, body, TOKEN_A)
    assert (status, json.loads(answer)) == (200, {"accepted": 2, "rejected": 1})
    assert_healthy(hook)
    found = rejects(settings)
    assert any("byte limit" in r["reason"] for r in found)
    assert any("nested too deeply" in r["reason"] for r in found)
    assert [e["original"] for e in raw_events(settings)] == [good_items[0], good_items[2]]
    assert_valid_batch_lands(hook, settings, good_items[:5])


# ---------------------------------------------------------------------------------------------
# (b) raw sockets


def exchange(port: int, data: bytes, timeout: float = 5.0, shut: bool = False) -> bytes:
    """Send ``data`` on a fresh connection; return the first response (or b"" on close/timeout).

    Reading stops once one whole response (headers + Content-Length body) is in, so a server
    that keeps the connection open after answering does not cost the timeout.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if shut:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may close early (e.g. 413): what it said is still readable
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            head, sep, body = out.partition(b"\r\n\r\n")
            if sep:
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if len(body) >= length:
                    return out
            try:
                chunk = sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        return out


def status_of(answer: bytes) -> int | None:
    if not answer.startswith(b"HTTP/1."):
        return None
    return int(answer.split(b" ", 2)[1])


def http_post(body: bytes, extra: bytes = b"", token: str = TOKEN_A) -> bytes:
    return (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {token}\r\n".encode()
        + extra
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


def test_raw_socket_garbage_and_http_abuse(
    settings: Settings,
    hook: WebhookServer,
    good_items: list[bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    port = hook.port
    rng = random.Random(1234)
    garbage = [
        b"GARBAGE\r\n\r\n",
        b"\x00\xff" * 500 + b"\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nBad Header Without Colon\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1e3\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n12345",
        # smuggling shape: both Content-Length and chunked
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        # chunk size not hex / absurdly large / chunk longer than announced
        http_post(b"", b"Transfer-Encoding: chunked\r\n").replace(b"Content-Length: 0\r\n", b"")
        + b"zz\r\nabc\r\n0\r\n\r\n",
        http_post(b"", b"Transfer-Encoding: chunked\r\n").replace(b"Content-Length: 0\r\n", b"")
        + b"FFFFFFFFFFFFFFFFFF\r\nabc\r\n",
        http_post(b"", b"Transfer-Encoding: chunked\r\n").replace(b"Content-Length: 0\r\n", b"")
        + b"3\r\nabcdefgh\r\n0\r\n\r\n",
        # header flood: very many headers, and one very long one
        b"POST / HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(20_000))
        + b"\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"v" * 200_000 + b"\r\n\r\n",
        http_post(b"{}", b"Authorization: Bearer " + b"t" * 100_000 + b"\r\n"),
        # invalid UTF-8 / control characters in the token
        b"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\x80\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        *(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))) for _ in range(30)),
    ]
    before = end_offsets(settings)
    for data in garbage:
        answer = exchange(port, data)
        status = status_of(answer)
        # A clear 4xx, or the connection closed without an answer: never a 5xx, never a hang.
        assert status is None or 400 <= status < 500, (data[:60], answer[:200])
    assert end_offsets(settings) == before
    assert_healthy(hook)

    # Content-Length shorter than the body: the server reads exactly CL bytes.
    body = event_list(good_items[:2])
    answer = exchange(
        port,
        http_post(body).replace(
            f"Content-Length: {len(body)}".encode(), f"Content-Length: {len(body) - 10}".encode()
        ),
    )
    # Either the truncated JSON or the leftover bytes (parsed as a next request) are refused.
    assert status_of(answer) == 400
    # Content-Length longer than the body, then the client closes its side.
    answer = exchange(
        port,
        http_post(body).replace(
            f"Content-Length: {len(body)}".encode(), f"Content-Length: {len(body) + 100}".encode()
        ),
        shut=True,
    )
    assert status_of(answer) in (None, 400, 408)
    # Content-Length longer than the body and the client just waits: cut off by the read timeout.
    started = time.monotonic()
    answer = exchange(
        port,
        http_post(body).replace(
            f"Content-Length: {len(body)}".encode(), f"Content-Length: {len(body) + 100}".encode()
        ),
        timeout=10,
    )
    assert time.monotonic() - started < 6
    assert status_of(answer) in (None, 408)
    assert_healthy(hook)
    assert_valid_batch_lands(hook, settings, good_items[:4])
    # aiohttp logs the refused requests; the tokens in their headers must not be in the log.
    assert TOKEN_A not in caplog.text and TOKEN_A[:12] not in caplog.text
    assert "UnicodeEncodeError" not in caplog.text  # non-UTF-8 tokens were once a 500


def test_body_over_a_configured_limit_is_refused_without_reading_it(
    settings: Settings,
    tmp_path: Path,
    good_items: list[bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """By default no body is too large (they are streamed); an operator's --max-body-bytes is
    enforced with 413, and each refusal is logged (with its size and events seen) and counted."""
    hook = started_webhook(settings, tmp_path, max_body_bytes=10 * 1024 * 1024)
    try:
        with caplog.at_level(logging.WARNING, logger="producers.webhook"):
            _refuse_oversize_bodies(settings, hook, good_items)
        assert metric(hook, 'sealtrail_webhook_refused_requests_total{code="413"}') == 2
    finally:
        hook.stop()
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("answered 413")]
    assert len(logged) == 2, caplog.text
    announced, chunked = logged
    assert f"Content-Length {11 * 1024 * 1024}" in announced and "event(s) seen" in announced
    assert "Content-Length None" in chunked and "body byte(s) read" in chunked


def _refuse_oversize_bodies(
    settings: Settings, hook: WebhookServer, good_items: list[bytes]
) -> None:
    port = hook.port
    size = 11 * 1024 * 1024
    head = (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {TOKEN_A}\r\nContent-Length: {size}\r\n\r\n".encode()
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head + b"[" * 4096)  # only a sliver of the announced body
        answer = sock.recv(65536)
    assert status_of(answer) == 413 and b"byte limit" in answer
    # Chunked, no length: refused once the limit is passed.
    chunk = b"x" * (1 << 20)
    head = head.replace(f"Content-Length: {size}".encode(), b"Transfer-Encoding: chunked")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        answer = b""
        try:
            for _ in range(12):
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        except OSError:
            pass  # refused while we were still sending
        answer = sock.recv(65536)
    assert status_of(answer) == 413
    assert_healthy(hook)
    assert_valid_batch_lands(hook, settings, good_items[:3])


def test_slowloris_does_not_pin_the_server(
    settings: Settings, hook: WebhookServer, good_items: list[bytes]
) -> None:
    port = hook.port
    request = http_post(event_list(good_items[:2]))
    results: dict[int, tuple[float, bytes, int]] = {}

    def slow(index: int) -> None:
        started = time.monotonic()
        sent = 0
        answer = b""
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            try:
                for byte in request[:200]:  # headers, one byte per 100 ms
                    sock.sendall(bytes([byte]))
                    sent += 1
                    time.sleep(0.1)
            except OSError:
                pass
            try:
                answer = sock.recv(65536)
            except OSError:
                pass
        results[index] = (time.monotonic() - started, answer, sent)

    threads = [threading.Thread(target=slow, args=(i,)) for i in range(5)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        # While the slow clients hold their connections, others are served at once.
        for _ in range(3):
            started = time.monotonic()
            assert_valid_batch_lands(hook, settings, good_items[:2])
            assert time.monotonic() - started < 5
            assert_healthy(hook)
    finally:
        for thread in threads:
            thread.join(30)
    for elapsed, answer, sent in results.values():
        # Cut off after the read timeout (1.5 s), long before the 20 s the headers would take.
        assert sent < 100 and elapsed < 8, (elapsed, sent)
        assert status_of(answer) in (None, 408)


def test_many_concurrent_connections(
    settings: Settings, hook: WebhookServer, good_items: list[bytes]
) -> None:
    idle = [socket.create_connection(("127.0.0.1", hook.port), timeout=5) for _ in range(200)]
    try:
        body = event_list(good_items[:3])

        def one(_i: int) -> int:
            return post(hook.url(), body, TOKEN_B)[0]

        with ThreadPoolExecutor(32) as pool:
            codes = list(pool.map(one, range(64)))
        assert codes == [200] * 64
        assert_healthy(hook)
    finally:
        for sock in idle:
            sock.close()
    events = raw_events(settings)
    assert len(events) == 64 * 3 and {e["cluster"] for e in events} == {"cluster-b"}


# ---------------------------------------------------------------------------------------------
# (3) authentication


def test_auth_failures_are_refused_counted_and_store_nothing(
    settings: Settings, hook: WebhookServer, good_items: list[bytes]
) -> None:
    url = hook.url()
    body = event_list(good_items[:3])
    before = end_offsets(settings)
    headers = [
        None,
        "",
        "Bearer",
        "Bearer ",
        f"Basic {TOKEN_A}",
        f"Token {TOKEN_A}",
        f"Bearer {TOKEN_A}x",
        f"Bearer {TOKEN_A[:-1]}",
        f"Bearer {TOKEN_A} {TOKEN_B}",
        f"Bearer{TOKEN_A}",
        "Bearer " + "x" * 4000,
        f"Bearer {TOKEN_A}\t",  # trailing whitespace is trimmed by HTTP; must still be exact
    ]
    refused = 0
    for header in headers:
        request = urllib.request.Request(url, data=body, method="POST")
        request.add_header("Content-Type", "application/json")
        if header is not None:
            request.add_header("Authorization", header)
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                code = resp.status
        except urllib.error.HTTPError as err:
            code = err.code
            assert "missing or wrong credentials" in one_line_error(err.read())
            assert err.headers["WWW-Authenticate"].startswith("Bearer")
        if header == f"Bearer {TOKEN_A}\t":
            assert code == 200  # header value whitespace is not part of the token
            before = end_offsets(settings)
            continue
        assert code == 401, header
        refused += 1
    assert end_offsets(settings) == before
    assert metric(hook, "sealtrail_webhook_auth_failures_total") == refused

    # Token A with a body that claims cluster B everywhere: events carry cluster-a.
    items = []
    for line in good_items[:3]:
        event = json.loads(line)
        event["cluster"] = "cluster-b"
        event.setdefault("annotations", {})["cluster"] = "cluster-b"
        items.append(json.dumps(event).encode())
    claim = event_list(items).replace(b'"items":[', b'"cluster":"cluster-b","items":[', 1)
    status, _, answer = post(url, claim, TOKEN_A, ctype="application/json; charset=utf-8")
    assert status == 200, answer
    assert {e["cluster"] for e in raw_events(settings)} == {"cluster-a"}


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    server: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


class Pki:
    """Two throw-away CAs (one trusted, one not), a server cert and client certs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        key = ec.generate_private_key(ec.SECP256R1())
        self.ca_key = key
        self.ca = _cert("sealtrail test CA", key, "sealtrail test CA", key, ca=True)
        self.other_key = ec.generate_private_key(ec.SECP256R1())
        self.other = _cert("evil CA", self.other_key, "evil CA", self.other_key, ca=True)
        self.ca_file = self._write("ca.pem", self.ca)
        skey = ec.generate_private_key(ec.SECP256R1())
        self.server_cert = self._write(
            "server.pem",
            _cert("localhost", skey, "sealtrail test CA", key, ca=False, server=True),
        )
        self.server_key = self._write_key("server.key", skey)

    def _write(self, name: str, cert: x509.Certificate) -> Path:
        path = self.root / name
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def _write_key(self, name: str, key: ec.EllipticCurvePrivateKey) -> Path:
        path = self.root / name
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
        return path

    def client(self, cn: str, trusted: bool) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        issuer, issuer_key = (
            ("sealtrail test CA", self.ca_key)
            if trusted
            else (
                "evil CA",
                self.other_key,
            )
        )
        cert = _cert(cn, key, issuer, issuer_key, ca=False)
        return self._write(f"{cn}-{trusted}.pem", cert), self._write_key(f"{cn}-{trusted}.key", key)

    def context(self, client: tuple[Path, Path] | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if client is not None:
            ctx.load_cert_chain(str(client[0]), str(client[1]))
        return ctx


def tls_post(url: str, body: bytes, ctx: ssl.SSLContext, token: str | None = None) -> int:
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=15, context=ctx) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def _handshake_refused(url: str, body: bytes, ctx: ssl.SSLContext) -> bool:
    try:
        code = tls_post(url, body, ctx)
    except (urllib.error.URLError, ssl.SSLError, ConnectionError) as exc:
        return "SSL" in repr(exc) or isinstance(exc, ConnectionError) or "reset" in repr(exc)
    return code in (401, 403)


@pytest.mark.parametrize("with_tokens", [False, True])
def test_tls_client_certificates(
    settings: Settings, tmp_path: Path, good_items: list[bytes], with_tokens: bool
) -> None:
    pki = Pki(tmp_path)
    tokens = token_file(tmp_path, f"{TOKEN_A} cluster-a\n") if with_tokens else None
    server = WebhookServer(
        settings,
        WebhookOptions(
            listen="127.0.0.1:0",
            tokens=tokens,
            tls_cert=pki.server_cert,
            tls_key=pki.server_key,
            client_ca=pki.ca_file,
        ),
    )
    server.start()
    try:
        url = server.url().replace("127.0.0.1", "localhost")
        body = event_list(good_items[:2])
        before = end_offsets(settings)
        # A client cert signed by another CA: the handshake fails (or 401).
        assert _handshake_refused(url, body, pki.context(pki.client("cluster-x", trusted=False)))
        # No client cert: handshake failure when certs are required, 401 when tokens may be used.
        if with_tokens:
            assert tls_post(url, body, pki.context(None)) == 401
            assert tls_post(url, body, pki.context(None), token="wrong") == 401
            failures = metric(server, "sealtrail_webhook_auth_failures_total", pki.context(None))
            assert failures == 2
        else:
            assert _handshake_refused(url, body, pki.context(None))
        # Plain HTTP to a TLS port is not served either.
        answer = exchange(server.port, http_post(body))
        assert status_of(answer) in (None, 400)
        assert end_offsets(settings) == before

        # A trusted client cert: the cluster is its CN.
        good = pki.context(pki.client("cluster-x", trusted=True))
        # The failed handshakes are counted: the untrusted certificate (and the missing one
        # when certificates are required) and the plain HTTP request.
        name = "sealtrail_webhook_tls_handshake_failures_total"
        assert metric(server, name + '{kind="certificate"}', good) == (1 if with_tokens else 2)
        assert metric(server, name + '{kind="plain_http"}', good) == 1
        assert tls_post(url, body, good) == 200
        if with_tokens:
            assert tls_post(url, body, pki.context(None), token=TOKEN_A) == 200
        clusters = sorted({e["cluster"] for e in raw_events(settings)})
        assert clusters == (["cluster-a", "cluster-x"] if with_tokens else ["cluster-x"])
        with urllib.request.urlopen(url + "healthz", timeout=10, context=good) as resp:
            assert resp.status == 200 and resp.read() == b"ok\n"
    finally:
        assert server.stop() == 0


def test_subprocess_debug_logs_hold_no_tokens(settings: Settings, tmp_path: Path) -> None:
    """The webhook as a process with SEALTRAIL_LOG_LEVEL=debug: tokens appear nowhere."""
    import os
    import subprocess
    import sys

    tokens = token_file(tmp_path, f"{TOKEN_A} cluster-a\n{TOKEN_B} cluster-b\n")
    from tests.conftest import free_port_base

    port = free_port_base(1)
    env = {
        **os.environ,
        "SEALTRAIL_LOG_LEVEL": "debug",
        "SEALTRAIL_KAFKA": settings.kafka,
        "SEALTRAIL_TOPIC_PREFIX": settings.topic_prefix,
        "SEALTRAIL_HOME": str(tmp_path / "home"),
        "SEALTRAIL_WEBHOOK_TOKENS": str(tokens),
        "SEALTRAIL_WEBHOOK_ALLOW_PLAIN_HTTP_TOKENS": "1",
        "SEALTRAIL_WEBHOOK_LISTEN": f"127.0.0.1:{port}",
    }
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "sealtrail"), "produce", "webhook"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if get(url + "healthz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        lines = good_lines()[:3]
        assert post(url, event_list(lines), TOKEN_A)[0] == 200
        assert post(url, event_list(lines), TOKEN_B + "x")[0] == 401
        assert post(url, b"{bad", TOKEN_B)[0] == 400
        exchange(port, http_post(b"{}", token=TOKEN_A[:-2] + "zz"))
        _, metrics_text = get(url + "metrics")
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=40)
    assert proc.returncode == 0, err.decode()[-2000:]
    text = (out + err + metrics_text).decode("utf-8", "replace")
    assert "missing or wrong credentials" in text  # the refusal is logged...
    for secret in (TOKEN_A, TOKEN_B, TOKEN_A[:-2], TOKEN_B[:12]):
        assert secret not in text  # ...without the token
