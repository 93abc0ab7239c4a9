"""One error taxonomy shared by every component: what kind of failure this is, and its stable code.

Every failure a component counts is classified into one of three **kinds**, which decide what the
component does about it:

``retryable``
    A transient condition of the environment (network, exchange, NATS, load). The component carries on by
    itself (reconnects with backoff, retries the publish) and needs no fix in config or code; a rate that
    persists still deserves an operator's look.
``bad_data``
    One input item is unusable (a malformed frame, a venue error reply, a record the bus refuses). The item
    is skipped and counted; the component carries on.
``fatal``
    Retrying cannot help (invalid config, rejected credentials, a programming error). The component stops
    and reports it, so the flow run fails visibly instead of looping.

Each failure also has a stable ``code`` (below), which labels the error counters
(``marketprism_errors_total{component, kind, code}``): an operator sees *what* is failing, not only that
something is. A code always has the same kind (``KIND_OF``).

Data loss is deliberately not a kind of its own: when the publish buffer is full (``BUFFER_FULL``) or a
stop leaves records unacknowledged (``DROPPED_AT_STOP``) the cause is transient and the component carries
on, so both are ``retryable``; the records lost are counted separately in
``marketprism_bus_dropped_total{reason}``, which has its own alert (any drop is one).

``classify(exc)`` maps any exception to an ``ErrorInfo(kind, code, message)``. Components raise
``MarketPrismError`` subclasses (``NatsUnavailable``, ``AckTimeout``, ``ParseError`` ...) where they create
the failure themselves; ``marketprism.config.ConfigError`` and pydantic's ``ValidationError`` are
``CONFIG_INVALID``; third-party exceptions (websockets, aiohttp, nats, msgspec, json) are mapped by type.
Anything unknown is ``fatal``/``INTERNAL``: a bug should stop loudly, not be retried forever.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    RETRYABLE = "retryable"
    BAD_DATA = "bad_data"
    FATAL = "fatal"


class Code(StrEnum):
    # retryable: the component recovers by itself
    CONNECT_FAILED = "CONNECT_FAILED"  # could not reach or handshake with a peer (DNS, TCP, TLS, timeout)
    RATE_LIMITED = "RATE_LIMITED"  # HTTP 429/418 from a venue (WebSocket handshake or REST)
    UPSTREAM_UNAVAILABLE = "UPSTREAM_UNAVAILABLE"  # HTTP 5xx from a venue
    WS_CLOSED = "WS_CLOSED"  # an open WebSocket was closed by the peer or the network
    WS_STALL = "WS_STALL"  # an open WebSocket went silent past the stall timeout and was recycled
    NATS_UNAVAILABLE = "NATS_UNAVAILABLE"  # NATS not connected / no server / JetStream unavailable
    ACK_TIMEOUT = "ACK_TIMEOUT"  # NATS/JetStream did not answer a publish (or request) in time
    PUBLISH_REJECTED = "PUBLISH_REJECTED"  # JetStream answered a publish with an error (e.g. no stream)
    BUFFER_FULL = "BUFFER_FULL"  # publish buffer full: the new record was dropped (see module doc)
    DROPPED_AT_STOP = "DROPPED_AT_STOP"  # records still unacknowledged when a publisher was closed
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"  # a hot-store commit failed; the batch is held and retried
    # bad_data: the item is skipped
    PARSE_MALFORMED = "PARSE_MALFORMED"  # a frame that is not valid JSON / not the expected shape
    PARSE_VENUE_ERROR = "PARSE_VENUE_ERROR"  # the venue answered with an error message instead of data
    PARSE_BUG = "PARSE_BUG"  # a parser raised something other than ParseError (a bug; the frame is skipped)
    RECORD_INVALID = "RECORD_INVALID"  # a record the bus refuses (bad subject, payload too large)
    DEAD_LETTERED = "DEAD_LETTERED"  # a bus message the writer cannot store: sent to the dead-letter stream
    # fatal: the component stops
    CONFIG_INVALID = "CONFIG_INVALID"  # invalid configuration (bad field value, bad URL)
    AUTH_FAILED = "AUTH_FAILED"  # credentials rejected (NATS authorisation, TLS required)
    HTTP_REJECTED = "HTTP_REJECTED"  # HTTP 4xx other than 408/418/429: the request itself is wrong
    CANCELLED = "CANCELLED"  # cancellation / interpreter exit: stop (not counted as an error)
    INTERNAL = "INTERNAL"  # anything unclassified: a bug


KIND_OF: dict[Code, Kind] = {
    **dict.fromkeys(
        (Code.CONNECT_FAILED, Code.RATE_LIMITED, Code.UPSTREAM_UNAVAILABLE, Code.WS_CLOSED, Code.WS_STALL,
         Code.NATS_UNAVAILABLE, Code.ACK_TIMEOUT, Code.PUBLISH_REJECTED, Code.BUFFER_FULL, Code.DROPPED_AT_STOP,
         Code.STORE_UNAVAILABLE),
        Kind.RETRYABLE,
    ),
    **dict.fromkeys((Code.PARSE_MALFORMED, Code.PARSE_VENUE_ERROR, Code.PARSE_BUG, Code.RECORD_INVALID,
                     Code.DEAD_LETTERED), Kind.BAD_DATA),
    **dict.fromkeys(
        (Code.CONFIG_INVALID, Code.AUTH_FAILED, Code.HTTP_REJECTED, Code.CANCELLED, Code.INTERNAL), Kind.FATAL
    ),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    kind: Kind
    code: Code
    message: str = ""

    @property
    def retryable(self) -> bool:
        return self.kind is Kind.RETRYABLE

    @property
    def fatal(self) -> bool:
        return self.kind is Kind.FATAL

    @classmethod
    def of(cls, code: Code | str, message: str = "") -> ErrorInfo:
        code = Code(code)
        return cls(KIND_OF[code], code, message)


class MarketPrismError(Exception):
    """Base of the errors components raise themselves; ``code`` (and so ``kind``) says what it is."""

    default_code: Code = Code.INTERNAL

    def __init__(self, message: str = "", *, code: Code | str | None = None):
        super().__init__(message)
        self.code = Code(code) if code is not None else self.default_code

    @property
    def kind(self) -> Kind:
        return KIND_OF[self.code]


class BadDataError(MarketPrismError, ValueError):
    """An input item that cannot be used (``marketprism.venues.base.ParseError`` derives from it)."""

    default_code = Code.PARSE_MALFORMED


class NatsUnavailable(MarketPrismError, ConnectionError):
    default_code = Code.NATS_UNAVAILABLE


class AckTimeout(MarketPrismError, TimeoutError):
    default_code = Code.ACK_TIMEOUT


class PublishRejected(MarketPrismError, RuntimeError):
    default_code = Code.PUBLISH_REJECTED


def _loaded(module: str) -> Any:
    """A module only if something already imported it (an exception of an unimported library can't exist)."""
    return sys.modules.get(module)


def _http_code(status: int) -> Code:
    if status in (418, 429):
        return Code.RATE_LIMITED
    if status == 408 or status >= 500:
        return Code.UPSTREAM_UNAVAILABLE
    return Code.HTTP_REJECTED


def _classify_code(exc: BaseException) -> Code:
    if isinstance(exc, MarketPrismError):
        return exc.code
    if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit | GeneratorExit):
        return Code.CANCELLED

    ws = _loaded("websockets.exceptions")
    if ws is not None:
        if isinstance(exc, ws.ConnectionClosed):
            return Code.WS_CLOSED
        if isinstance(exc, ws.InvalidURI):
            return Code.CONFIG_INVALID
        if isinstance(exc, ws.InvalidStatus):
            status = getattr(getattr(exc, "response", None), "status_code", 0)
            code = _http_code(status)
            return Code.CONNECT_FAILED if code is Code.HTTP_REJECTED else code  # e.g. a 403 while geo-routing
        if isinstance(exc, ws.WebSocketException):
            return Code.CONNECT_FAILED

    aiohttp = _loaded("aiohttp")
    if aiohttp is not None:
        if isinstance(exc, aiohttp.ClientResponseError):
            return _http_code(exc.status)
        if isinstance(exc, aiohttp.InvalidURL):
            return Code.CONFIG_INVALID
        if isinstance(exc, aiohttp.ClientError):
            return Code.CONNECT_FAILED

    nats_errors = _loaded("nats.errors")
    if nats_errors is not None and isinstance(exc, nats_errors.Error):
        ne = nats_errors
        if isinstance(exc, ne.AuthorizationError | ne.InvalidUserCredentialsError | ne.SecureConnRequiredError):
            return Code.AUTH_FAILED
        if isinstance(exc, ne.TimeoutError):
            return Code.ACK_TIMEOUT
        if isinstance(exc, ne.BadSubjectError | ne.BadHeaderError | ne.MaxPayloadError):
            return Code.RECORD_INVALID
        js = _loaded("nats.js.errors")
        if js is not None:
            if isinstance(exc, js.BadRequestError):
                return Code.CONFIG_INVALID  # e.g. a stream definition JetStream refuses
            if isinstance(exc, js.ServiceUnavailableError | js.ServerError | js.NoStreamResponseError):
                return Code.NATS_UNAVAILABLE
            if isinstance(exc, js.APIError):
                return Code.PUBLISH_REJECTED
        return Code.NATS_UNAVAILABLE  # no servers, closed, stale, reconnecting, outbound buffer full ...

    config = _loaded("marketprism.config")
    if config is not None and isinstance(exc, config.ConfigError):
        return Code.CONFIG_INVALID
    pydantic = _loaded("pydantic")
    if pydantic is not None and isinstance(exc, pydantic.ValidationError):
        return Code.CONFIG_INVALID

    msgspec = _loaded("msgspec")
    if msgspec is not None and isinstance(exc, msgspec.DecodeError):
        return Code.PARSE_MALFORMED  # msgspec.ValidationError is a DecodeError
    if isinstance(exc, UnicodeDecodeError) or type(exc).__name__ == "JSONDecodeError":
        return Code.PARSE_MALFORMED  # json's and orjson's

    if isinstance(exc, TimeoutError | OSError | EOFError):  # ConnectionError is an OSError
        return Code.CONNECT_FAILED
    return Code.INTERNAL


def classify(exc: BaseException) -> ErrorInfo:
    """The kind and code of ``exc``: ``retryable`` -> retry with backoff, ``bad_data`` -> skip, ``fatal`` -> stop."""
    try:
        text = str(exc)
    except Exception:  # a third-party __str__ that fails on a partially built exception
        text = repr(exc)
    return ErrorInfo.of(_classify_code(exc), f"{type(exc).__name__}: {text}")


def classify_parse_error(exc: BaseException) -> ErrorInfo:
    """A frame the parser could not handle is always skipped: anything not bad data is a parser bug."""
    info = classify(exc)
    return info if info.kind is Kind.BAD_DATA else ErrorInfo.of(Code.PARSE_BUG, info.message)
