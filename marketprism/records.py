"""Normalised record types, enums and symbol normalisation.

Every record carries ``exchange``, ``market``, ``symbol`` (normalised ``BASE-QUOTE``), ``instrument``
(the venue's own id), ``ts`` (exchange event time) and ``recv_ts`` (local receive time), both integer
microseconds since the epoch. Prices and sizes stay the exchange's decimal strings: nothing is lost in a
float round trip, and venue checksums are computed over exactly these strings.

The records are msgspec Structs: the bus payload is ``msgspec.json.encode(record)`` (field names as
declared here, see ``docs/payloads.md``) and decoding is typed by the subject's data type.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import ClassVar

import msgspec


class Exchange(StrEnum):
    BINANCE = "binance"
    OKX = "okx"
    BYBIT = "bybit"
    DERIBIT = "deribit"


class Market(StrEnum):
    SPOT = "spot"
    PERPETUAL = "perpetual"
    FUTURE = "future"
    OPTION = "option"


class DataType(StrEnum):
    TRADE = "trade"
    DEPTH = "depth"
    TICKER = "ticker"
    STATUS = "status"
    BOOK = "book"  # marketprism.book.records.Book: top-N snapshot of a validated local book
    BOOK_DELTA = "book_delta"  # marketprism.book.records.BookDelta: validated incremental L2
    FUNDING_RATE = "funding_rate"
    OPEN_INTEREST = "open_interest"
    LIQUIDATION = "liquidation"
    LONG_SHORT_RATIO = "long_short_ratio"
    VOLATILITY_INDEX = "volatility_index"


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


# A price level exactly as the venue sent it: [price, size, ...] decimal strings. OKX appends its
# deprecated "0" and the number of orders; Binance and Bybit send exactly [price, size].
Level = tuple[str, ...]
_levels_decoder = msgspec.json.Decoder(list[Level])
_levels_encoder = msgspec.json.Encoder()


class Record(msgspec.Struct, kw_only=True, gc=False, omit_defaults=True):
    """Fields shared by every record type."""

    data_type: ClassVar[DataType]

    exchange: str
    market: str
    symbol: str
    instrument: str
    ts: int
    recv_ts: int

    def subject(self) -> str:
        return f"md.{self.data_type}.{self.exchange}.{self.market}.{self.symbol}"

    def natural_key(self) -> str:  # pragma: no cover - every concrete type overrides it
        raise NotImplementedError


class Trade(Record, kw_only=True, gc=False):
    """One trade (or one Binance aggTrade when ``aggregate`` is true).

    ``side`` is the taker's side. ``trade_id`` is the venue's id as a string; for an aggTrade it is the
    aggregate id and ``first_trade_id``/``last_trade_id`` hold the range of underlying trade ids.
    """

    data_type: ClassVar[DataType] = DataType.TRADE

    trade_id: str
    price: str
    size: str
    side: str
    aggregate: bool = False
    first_trade_id: int | None = None
    last_trade_id: int | None = None

    def natural_key(self) -> str:
        kind = "aggtrade" if self.aggregate else "trade"
        return f"{kind}:{self.exchange}:{self.market}:{self.symbol}:{self.trade_id}"


class Depth(Record, kw_only=True, gc=False):
    """A raw L2 update (or venue snapshot) with the venue's own sequence fields kept intact.

    ``bids`` and ``asks`` hold the venue's own JSON array of levels, byte for byte (``msgspec.Raw``): the
    collector never materialises levels, which is most of the cost of a depth frame. ``bid_levels()`` /
    ``ask_levels()`` decode them (and reject malformed levels); ``Depth.levels([...])`` builds one.

    Mapping of sequence fields per venue:
      Binance: ``first_seq`` = U, ``seq`` = u, ``prev_seq`` = pu (USDⓈ-M only).
      OKX:     ``seq`` = seqId, ``prev_seq`` = prevSeqId (absent in pre-2023 frames), ``checksum``.
      Bybit:   ``seq`` = u, ``cross_seq`` = seq.
    A size of "0" deletes the level.
    """

    data_type: ClassVar[DataType] = DataType.DEPTH

    is_snapshot: bool
    bids: msgspec.Raw
    asks: msgspec.Raw
    seq: int | None = None
    first_seq: int | None = None
    prev_seq: int | None = None
    cross_seq: int | None = None
    checksum: int | None = None

    @staticmethod
    def levels(levels: list[Level] | list[list[str]]) -> msgspec.Raw:
        return msgspec.Raw(_levels_encoder.encode(levels))

    def bid_levels(self) -> list[Level]:
        return decode_levels(self.bids)

    def ask_levels(self) -> list[Level]:
        return decode_levels(self.asks)

    def natural_key(self) -> str:
        # OKX frames from before seqId existed are identified by time and checksum.
        ident = self.seq if self.seq is not None else f"{self.ts}:{self.checksum}"
        kind = "snap" if self.is_snapshot else "upd"
        return f"depth:{self.exchange}:{self.market}:{self.symbol}:{kind}:{ident}"


def decode_levels(raw: msgspec.Raw | bytes) -> list[Level]:
    """Levels as tuples of the venue's strings; raises ``ValueError`` naming what is malformed."""
    try:
        levels: list[Level] = _levels_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise ValueError(f"malformed depth levels: {exc}") from None
    for level in levels:
        if len(level) < 2:
            raise ValueError(f"malformed depth level {list(level)!r}: want [price, size, ...]")
    return levels


class Ticker(Record, kw_only=True, gc=False):
    """Best bid and ask. ``seq`` is the venue's update id where it has one (Binance u, Bybit/OKX seq)."""

    data_type: ClassVar[DataType] = DataType.TICKER

    bid_price: str
    bid_size: str
    ask_price: str
    ask_size: str
    seq: int | None = None
    last_price: str | None = None

    def natural_key(self) -> str:
        ident = self.seq if self.seq is not None else self.ts
        return f"ticker:{self.exchange}:{self.market}:{self.symbol}:{ident}"


class Status(Record, kw_only=True, gc=False):
    """A connection event for one symbol: downstream books must treat ``disconnected`` as a possible gap.

    ``event`` is one of ``connected``, ``disconnected``. ``connection`` identifies the WebSocket
    connection (venue, shard, attempt) so the natural key is unique per event.
    """

    data_type: ClassVar[DataType] = DataType.STATUS

    event: str
    connection: str
    reason: str = ""

    def natural_key(self) -> str:
        return f"status:{self.exchange}:{self.market}:{self.symbol}:{self.connection}:{self.event}"


class FundingRate(Record, kw_only=True, gc=False):
    """Funding and the prices it is computed from, as the venue publishes them (stream or REST).

    ``funding_rate`` is the rate for the funding at ``funding_time`` (µs; the next funding for a live stream, the
    settled one for history); ``predicted_rate`` the venue's estimate of the following one (OKX
    ``nextFundingRate``); ``mark_price``/``index_price`` where the same message carries them (Binance
    ``markPriceUpdate``, OKX ``mark-price`` has only the mark). Rates and prices are the venue's decimal strings.

    Further fields, each kept where a venue sends it (None elsewhere): ``estimated_settle_price`` (Binance ``P``),
    ``next_funding_time`` (µs; OKX ``nextFundingTime``), ``min_funding_rate``/``max_funding_rate`` (OKX's bounds),
    ``premium``, ``interest_rate``, ``impact_value``, ``settled_rate`` (OKX ``settFundingRate``: the rate of the
    last settlement), ``settle_state`` (OKX ``settState``: processing | settled), ``method`` (OKX
    ``current_period`` | ``next_period``), ``formula_type`` (OKX ``noRate`` | ``withRate``), ``funding_rate_1h``
    and ``prev_index_price`` (Deribit ``interest_1h``, ``prev_index_price``). A venue's empty string ("no value") is
    stored as None.
    """

    data_type: ClassVar[DataType] = DataType.FUNDING_RATE

    funding_rate: str | None = None
    funding_time: int | None = None
    predicted_rate: str | None = None
    mark_price: str | None = None
    index_price: str | None = None
    estimated_settle_price: str | None = None
    next_funding_time: int | None = None
    min_funding_rate: str | None = None
    max_funding_rate: str | None = None
    premium: str | None = None
    interest_rate: str | None = None
    impact_value: str | None = None
    settled_rate: str | None = None
    settle_state: str | None = None
    method: str | None = None
    formula_type: str | None = None
    funding_rate_1h: str | None = None
    prev_index_price: str | None = None

    def natural_key(self) -> str:
        # A mark-only record (OKX mark-price) may share its millisecond with a funding push of the same symbol.
        kind = ":mark" if self.funding_rate is None and self.mark_price is not None else ""
        return f"funding_rate:{self.exchange}:{self.market}:{self.symbol}:{self.ts}{kind}"


class OpenInterest(Record, kw_only=True, gc=False):
    """Open interest at ``ts``: ``open_interest`` in the venue's unit (contracts or base currency, as it sends it),
    ``open_interest_value`` in quote currency where the venue gives it (OKX ``oiUsd``/``oiCcy``, Binance
    ``sumOpenInterestValue``, Bybit ``openInterestValue``). ``open_interest_ccy``: OKX ``oiCcy``, the open interest
    in coin (base currency) where ``open_interest`` is in contracts."""

    data_type: ClassVar[DataType] = DataType.OPEN_INTEREST

    open_interest: str
    open_interest_value: str | None = None
    open_interest_ccy: str | None = None

    def natural_key(self) -> str:
        return f"open_interest:{self.exchange}:{self.market}:{self.symbol}:{self.ts}"


class Liquidation(Record, kw_only=True, gc=False):
    """A forced order. ``side`` is the liquidation order's side (a long position is liquidated by a sell);
    ``status`` and ``order_id`` where the venue gives them. Venues send no id for most liquidations, so the
    natural key is the event itself: time, side, price and size.

    ``price``: Binance the order price ``p``, OKX the bankruptcy price ``bkPx``, Bybit ``p``. ``size``: Binance the
    original quantity ``q``, OKX ``sz`` (contracts for swaps), Bybit ``v``. Kept where sent: ``avg_price``
    (Binance ``ap``), ``filled_size`` (Binance ``z``, accumulated), ``last_filled_size`` (Binance ``l``),
    ``order_type`` (Binance ``o``), ``time_in_force`` (Binance ``f``), ``position_side`` (``long``/``short``; OKX
    ``posSide``, Bybit's ``S`` which names the liquidated position), ``bankruptcy_loss`` (OKX ``bkLoss``) and
    ``currency`` (OKX ``ccy``, for margin liquidations)."""

    data_type: ClassVar[DataType] = DataType.LIQUIDATION

    side: str
    price: str
    size: str
    status: str | None = None
    order_id: str | None = None
    avg_price: str | None = None
    filled_size: str | None = None
    last_filled_size: str | None = None
    order_type: str | None = None
    time_in_force: str | None = None
    position_side: str | None = None
    bankruptcy_loss: str | None = None
    currency: str | None = None

    def natural_key(self) -> str:
        return f"liquidation:{self.exchange}:{self.market}:{self.symbol}:{self.ts}:{self.side}:{self.price}:{self.size}"


class LongShortRatio(Record, kw_only=True, gc=False):
    """One bucket of a long/short ratio series. ``kind``: ``top_position`` (top traders by position),
    ``top_account`` (top traders by account), ``global_account`` (all accounts). ``period`` is the bucket size as
    the venue names it (``5m``, ``1H``...). ``long_ratio``/``short_ratio`` are the shares where the venue sends
    them (they sum to 1 there); ``long_short_ratio`` = long / short."""

    data_type: ClassVar[DataType] = DataType.LONG_SHORT_RATIO

    kind: str
    period: str
    long_short_ratio: str
    long_ratio: str | None = None
    short_ratio: str | None = None

    def natural_key(self) -> str:
        return f"long_short_ratio:{self.exchange}:{self.market}:{self.symbol}:{self.kind}:{self.period}:{self.ts}"


class VolatilityIndex(Record, kw_only=True, gc=False):
    """One candle of a volatility index (Deribit DVOL): ``resolution`` as the venue names it (seconds or ``1D``),
    open/high/low/close as decimal strings. ``symbol`` is the index's currency pair (``BTC-USD``), ``instrument``
    the index name (``BTC``)."""

    data_type: ClassVar[DataType] = DataType.VOLATILITY_INDEX

    resolution: str
    open: str
    high: str
    low: str
    close: str

    def natural_key(self) -> str:
        return f"volatility_index:{self.exchange}:{self.market}:{self.symbol}:{self.resolution}:{self.ts}"


RECORD_TYPES: dict[DataType, type[Record]] = {
    DataType.TRADE: Trade,
    DataType.DEPTH: Depth,
    DataType.TICKER: Ticker,
    DataType.STATUS: Status,
    DataType.FUNDING_RATE: FundingRate,
    DataType.OPEN_INTEREST: OpenInterest,
    DataType.LIQUIDATION: Liquidation,
    DataType.LONG_SHORT_RATIO: LongShortRatio,
    DataType.VOLATILITY_INDEX: VolatilityIndex,
}

# Quote assets recognised when a venue writes instruments without a separator (Binance, Bybit). Longest
# first so that "FDUSD" wins over "USD" and "USDT" over "USD".
QUOTE_ASSETS: tuple[str, ...] = tuple(
    sorted(
        {
            "USDT",
            "USDC",
            "FDUSD",
            "BUSD",
            "TUSD",
            "USDP",
            "DAI",
            "USD",
            "EUR",
            "GBP",
            "TRY",
            "BRL",
            "AUD",
            "RUB",
            "UAH",
            "JPY",
            "BIDR",
            "IDRT",
            "NGN",
            "ZAR",
            "PLN",
            "RON",
            "ARS",
            "MXN",
            "COP",
            "BTC",
            "ETH",
            "BNB",
            "XRP",
            "TRX",
            "DOGE",
            "DOT",
            "SOL",
            "VAI",
            "PAX",
            "BVND",
            "AEUR",
        },
        key=len,
        reverse=True,
    )
)


class SymbolError(ValueError):
    """An instrument id that cannot be normalised."""


def split_concatenated(instrument: str, known: dict[str, str] | None = None) -> str:
    """``BTCUSDT`` -> ``BTC-USDT``. ``known`` (from exchangeInfo) wins over the quote-suffix rule."""
    inst = instrument.upper()
    if known and inst in known:
        return known[inst]
    for quote in QUOTE_ASSETS:
        if inst.endswith(quote) and len(inst) > len(quote):
            return f"{inst[: -len(quote)]}-{quote}"
    raise SymbolError(f"cannot split instrument {instrument!r} into base and quote")


def split_dashed(instrument: str) -> str:
    """``BTC-USDT``, ``BTC-USDT-SWAP`` and ``BTC-USD-220527`` -> ``BTC-USDT`` / ``BTC-USD``."""
    parts = instrument.upper().split("-")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise SymbolError(f"cannot split instrument {instrument!r} into base and quote")
    return f"{parts[0]}-{parts[1]}"


def symbol_of(instrument: str) -> str:
    """Normalised symbol of any venue id: dashed ids (OKX) or concatenated ones (Binance, Bybit)."""
    return split_dashed(instrument) if "-" in instrument else split_concatenated(instrument)


def now_us() -> int:
    return time.time_ns() // 1000


# ``book`` and ``book_delta`` live next to the book engine and add themselves to RECORD_TYPES; imported last (they
# subclass Record) so that every importer of this module sees the complete registry.
import marketprism.book.records  # noqa: E402, F401
