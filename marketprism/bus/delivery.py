"""A lean reader of a JetStream push consumer's deliveries, on its own NATS connection.

nats-py spends ~30 µs of event-loop time per delivered message before a callback runs (protocol parse, a general
header parser, a ``Msg`` object, a queue and a task switch): more than everything the storage writer does with
it. This reader speaks the few parts of the NATS client protocol a push consumer needs on a plain TCP
connection: ``INFO``/``CONNECT`` (headers on, verbose off, user/password or token from the URL or given),
``SUB`` to the consumer's deliver subject, ``PING``/``PONG`` both ways, ``-ERR``; and it parses ``HMSG``/``MSG``
frames in bulk from each read (``bytes.find``, no regex, no header dictionary). Each read's data messages go to
the handler as one list of ``Delivery`` tuples ``(reply, subject, payload, msg_id)``, in order; ``msg_id`` is
the ``Nats-Msg-Id`` header (found by position, not parsed with the rest), ``None`` without one.

JetStream's status messages (``NATS/1.0 100 ...``) never reach the handler: a flow-control request is answered
(an empty publish to its reply subject) once the data before it was handed over; an idle heartbeat is counted
and its ``Nats-Last-Consumer``/``Nats-Last-Stream`` kept, and a ``Nats-Consumer-Stalled`` subject in it is
answered like a flow-control request. A closed socket or a ``-ERR`` ends the reader: ``closed`` completes (with
the reason in ``error``) and ``on_close`` is called, once; what was fully read before is delivered first, a
partial frame at the end is dropped (it was never handed over, so nothing after it is either).

The consumer is created elsewhere (nats-py's JetStream API); acks can go on any connection (``ack`` sends one
on this one).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import ParseResult, urlparse

import orjson

Delivery = tuple[bytes, str, bytes, str | None]  # (reply subject, subject, payload, Nats-Msg-Id or None)

_MSG_ID = b"Nats-Msg-Id:"
_STALLED = b"Nats-Consumer-Stalled:"
_LAST_CONSUMER = b"Nats-Last-Consumer:"
_LAST_STREAM = b"Nats-Last-Stream:"


class DeliveryError(ConnectionError):
    """The delivery connection could not be opened, was refused (``-ERR``) or was lost."""


@dataclass
class DeliveryStats:
    messages: int = 0
    flow_controls: int = 0  # flow-control requests answered
    heartbeats: int = 0
    stalled_replies: int = 0  # Nats-Consumer-Stalled subjects answered
    last_consumer_seq: int = 0  # from the last idle heartbeat: what the server says it delivered
    last_stream_seq: int = 0


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    user: str | None = None
    password: str | None = None
    token: str | None = None

    @classmethod
    def from_url(cls, url: str | ParseResult) -> Endpoint:
        u = urlparse(url) if isinstance(url, str) else url
        if u.scheme not in ("nats", ""):
            raise DeliveryError(f"the lean delivery reader speaks plain nats://, not {u.scheme}://")
        user, password = u.username, u.password
        if user is not None and password is None:  # nats://token@host
            return cls(u.hostname or "127.0.0.1", u.port or 4222, token=user)
        return cls(u.hostname or "127.0.0.1", u.port or 4222, user, password)


def endpoint_of(nc: Any) -> Endpoint | None:
    """Where and how nats-py client ``nc`` is connected, for a second, lean connection beside it; ``None`` when
    this reader cannot do the same (not connected, TLS, nkeys/JWT credentials, a callable token)."""
    url = getattr(nc, "connected_url", None)
    if url is None or not getattr(nc, "is_connected", False):
        return None
    opts: dict[str, Any] = getattr(nc, "options", {})
    info: dict[str, Any] = getattr(nc, "_server_info", {}) or {}
    if opts.get("tls") or info.get("tls_required") or url.scheme not in ("nats", ""):
        return None
    if any(getattr(nc, a, None) is not None for a in ("_user_credentials", "_nkeys_seed", "_nkeys_seed_str")):
        return None
    if getattr(nc, "_signature_cb", None) is not None:
        return None
    user, password, token = opts.get("user"), opts.get("password"), opts.get("token")
    if callable(user) or callable(password) or callable(token):
        return None
    try:
        ep = Endpoint.from_url(url)
    except DeliveryError:
        return None
    if user is not None and password is not None:
        return Endpoint(ep.host, ep.port, user, password)
    if token is not None:
        return Endpoint(ep.host, ep.port, token=token)
    return ep


class DeliveryReader(asyncio.Protocol):
    """One NATS connection subscribed to one deliver subject; see the module's doc.

    ``on_batch`` is called synchronously from the event loop with each read's data messages (a non-empty list);
    it must not keep a reference to the list past the call only if it mutates it (a fresh list is made per read).
    """

    def __init__(
        self,
        on_batch: Callable[[list[Delivery]], None],
        *,
        on_close: Callable[[DeliveryReader], None] | None = None,
    ):
        self.on_batch = on_batch
        self.on_close = on_close
        self.stats = DeliveryStats()
        self.error: str | None = None
        self.subject = ""
        self._sid = b"1"
        self._transport: asyncio.Transport | None = None
        self._buf = b""
        self._info: asyncio.Future[dict[str, Any]] | None = None
        self._pongs: list[asyncio.Future[None]] = []
        self._closing = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # --- opening ------------------------------------------------------------------------------------------
    @classmethod
    async def open(
        cls,
        endpoint: Endpoint | str,
        subject: str,
        on_batch: Callable[[list[Delivery]], None],
        *,
        on_close: Callable[[DeliveryReader], None] | None = None,
        name: str = "marketprism-delivery",
        timeout_s: float = 5.0,
        rcvbuf: int | None = None,
    ) -> DeliveryReader:
        """Connect, authenticate, subscribe to ``subject`` and wait until the server has taken all of it (a
        ``PING``/``PONG`` round trip), so that the consumer can be created right after."""
        ep = endpoint if isinstance(endpoint, Endpoint) else Endpoint.from_url(endpoint)
        loop = asyncio.get_running_loop()
        reader = cls(on_batch, on_close=on_close)
        reader._info = loop.create_future()
        try:
            await asyncio.wait_for(loop.create_connection(lambda: reader, ep.host, ep.port), timeout_s)
        except (OSError, TimeoutError) as exc:
            raise DeliveryError(f"cannot connect to nats://{ep.host}:{ep.port}: {exc}") from exc
        try:
            info = await asyncio.wait_for(asyncio.shield(reader._info), timeout_s)
            if info.get("tls_required"):
                raise DeliveryError("the server requires TLS, which the lean delivery reader does not speak")
            connect: dict[str, Any] = {"verbose": False, "pedantic": False, "lang": "python3", "version": "mp",
                                       "protocol": 1, "headers": True, "no_responders": True, "name": name}  # fmt: skip
            if ep.user is not None:
                connect["user"], connect["pass"] = ep.user, ep.password or ""
            elif ep.token is not None:
                connect["auth_token"] = ep.token
            sock = reader._transport.get_extra_info("socket") if reader._transport else None
            if sock is not None and rcvbuf:
                import socket

                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            reader.subject = subject
            reader._write(b"CONNECT " + orjson.dumps(connect) + b"\r\nSUB " + subject.encode() + b" " + reader._sid
                          + b"\r\n")  # fmt: skip
            await reader.flush(timeout_s)
        except BaseException:
            reader.close()
            raise
        return reader

    # --- sending ------------------------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return not self.closed.done() and not self._closing

    def _write(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            raise DeliveryError(self.error or "the delivery connection is closed")
        self._transport.write(data)

    def publish(self, subject: bytes | str, payload: bytes = b"") -> None:
        s = subject.encode() if isinstance(subject, str) else subject
        self._write(b"PUB %s %d\r\n%s\r\n" % (s, len(payload), payload))

    def ack(self, reply: bytes | str) -> None:
        """Acknowledge a delivery (an empty payload is ``+ACK``; with ``ack_policy=all`` it acks all before it)."""
        self.publish(reply)

    async def flush(self, timeout_s: float = 5.0) -> None:
        """Wait until the server has processed everything sent so far (``PING`` -> ``PONG``)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pongs.append(fut)
        self._write(b"PING\r\n")
        done, _ = await asyncio.wait([fut, self.closed], timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if fut not in done or fut.cancelled():  # no PONG: timed out, or the connection ended (its pongs cancelled)
            if fut in self._pongs:
                self._pongs.remove(fut)
            raise DeliveryError(self.error or f"no PONG within {timeout_s}s")

    def close(self) -> None:
        """Unsubscribe and close (what was written before is still sent); nothing more reaches the handler."""
        if self._closing:
            return
        self._closing = True
        if self._transport is not None and not self._transport.is_closing():
            with contextlib.suppress(Exception):
                self._transport.write(b"UNSUB " + self._sid + b"\r\n")
            self._transport.close()
        else:
            self._finish(None)

    # --- asyncio.Protocol ---------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closing:
            self._finish(None)
        else:
            self._finish(self.error or f"connection lost: {exc or 'closed by the server'}")

    def _finish(self, error: str | None) -> None:
        if self.closed.done():
            return
        if error and not self.error:
            self.error = error
        self._closing = True
        for fut in self._pongs:
            if not fut.done():
                fut.cancel()
        self._pongs.clear()
        if self._info is not None and not self._info.done():
            self._info.set_exception(DeliveryError(self.error or "connection closed before INFO"))
            self._info.exception()  # retrieved: no "never retrieved" warning when nobody waits
        self.closed.set_result(None)
        if self.on_close is not None:
            self.on_close(self)

    def _fail(self, error: str) -> None:
        self.error = self.error or error
        if self._transport is not None:
            self._transport.abort()  # connection_lost follows
        else:
            self._finish(error)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        buf = self._buf + data if self._buf else data
        try:
            pos = self._parse(buf)
        except DeliveryError as exc:
            self._buf = b""
            self._fail(str(exc))
            return
        self._buf = buf[pos:]

    def _parse(self, buf: bytes) -> int:  # one flat loop over the protocol verbs, for speed
        """Parse every complete frame of ``buf``; returns where the incomplete rest starts."""
        out: list[Delivery] = []
        pos, n = 0, len(buf)
        find = buf.find
        while pos < n:
            eol = find(b"\r\n", pos)
            if eol < 0:
                break
            c = buf[pos]
            if c == 72 and buf.startswith(b"HMSG ", pos):  # 'H': HMSG <subj> <sid> [reply] <hdr len> <total len>
                args = buf[pos + 5 : eol].split()
                if len(args) == 5:
                    subj, _, reply, hl, tl = args
                elif len(args) == 4:
                    subj, _, hl, tl = args
                    reply = b""
                else:
                    raise DeliveryError(f"bad HMSG line: {buf[pos:eol][:200]!r}")
                start = eol + 2
                hend, end = start + int(hl), start + int(tl)
                if end + 2 > n:
                    break
                if buf[start + 8] == 32:  # "NATS/1.0 <status>": a JetStream status message, not data
                    if out:
                        self._hand_over(out)
                        out = []
                    self._status(buf[start:hend], reply)
                else:
                    i = find(_MSG_ID, start, hend)
                    if i >= 0:
                        i += 12
                        key: str | None = buf[i : find(b"\r\n", i, hend)].strip().decode()
                    else:
                        key = None
                    out.append((reply, subj.decode(), buf[hend:end], key))
                pos = end + 2
            elif c == 77 and buf.startswith(b"MSG ", pos):  # 'M': MSG <subj> <sid> [reply] <len>
                args = buf[pos + 4 : eol].split()
                if len(args) == 4:
                    subj, _, reply, tl = args
                elif len(args) == 3:
                    subj, _, tl = args
                    reply = b""
                else:
                    raise DeliveryError(f"bad MSG line: {buf[pos:eol][:200]!r}")
                start = eol + 2
                end = start + int(tl)
                if end + 2 > n:
                    break
                out.append((reply, subj.decode(), buf[start:end], None))
                pos = end + 2
            else:
                line = buf[pos:eol]
                pos = eol + 2
                if line == b"PING":
                    self._write(b"PONG\r\n")
                elif line == b"PONG":
                    if self._pongs:
                        fut = self._pongs.pop(0)
                        if not fut.done():
                            fut.set_result(None)
                elif line.startswith(b"INFO"):
                    info = orjson.loads(line[4:].strip() or b"{}")
                    if self._info is not None and not self._info.done():
                        self._info.set_result(info)
                elif line.startswith(b"-ERR"):
                    if out:
                        self._hand_over(out)
                    raise DeliveryError(f"server error: {line[4:].strip().decode(errors='replace')}")
                elif line == b"+OK" or not line:
                    pass
                else:
                    raise DeliveryError(f"unexpected protocol line: {line[:200]!r}")
        if out:
            self._hand_over(out)
        return pos

    def _hand_over(self, out: list[Delivery]) -> None:
        self.stats.messages += len(out)
        self.on_batch(out)

    def _status(self, hdr: bytes, reply: bytes) -> None:
        """``NATS/1.0 100 FlowControl Request`` / ``NATS/1.0 100 Idle Heartbeat`` (others are ignored)."""
        if b"FlowControl" in hdr[:48]:
            if reply:
                self.stats.flow_controls += 1
                self._write(b"PUB %s 0\r\n\r\n" % reply)
            return
        if b"Idle Heartbeat" in hdr[:48]:
            self.stats.heartbeats += 1
            self.stats.last_consumer_seq = _int_header(hdr, _LAST_CONSUMER, self.stats.last_consumer_seq)
            self.stats.last_stream_seq = _int_header(hdr, _LAST_STREAM, self.stats.last_stream_seq)
            stalled = _header(hdr, _STALLED)
            if stalled:
                self.stats.stalled_replies += 1
                self._write(b"PUB %s 0\r\n\r\n" % stalled)


def _header(hdr: bytes, name: bytes) -> bytes:
    i = hdr.find(name)
    if i < 0:
        return b""
    i += len(name)
    j = hdr.find(b"\r\n", i)
    return hdr[i : j if j >= 0 else len(hdr)].strip()


def _int_header(hdr: bytes, name: bytes, default: int) -> int:
    value = _header(hdr, name)
    return int(value) if value.isdigit() else default
