"""The exchange simulator over real sockets on 127.0.0.1: each venue's own protocol, checked with the
project's own venue declarations and parsers, plus independent implementations of the sync rules
(Binance U/u and snapshot bridge, OKX seqId chain and checksum, Bybit u+1)."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import websockets

from marketprism.records import DataType
from marketprism.sim import (
    Faults,
    SimConfig,
    SimServer,
    okx_checksum,
    parse_faults_arg,
    parse_replay_arg,
    parse_replay_args,
    read_recording,
)
from marketprism.venues import VENUES, ParseError, get_venue

try:
    from fixtures_util import FIXTURES, fixture_path, jsonl_frames
except ModuleNotFoundError:  # tests/ imported as a package
    from tests.fixtures_util import FIXTURES, fixture_path, jsonl_frames

ALL_TYPES = [DataType.TRADE, DataType.DEPTH, DataType.TICKER]
SYMBOLS = ["BTC-USDT", "ETH-USDT"]

# --- an independent, minimal client side -------------------------------------------------------------


def key_of(venue: str, frame: str) -> tuple[str, str] | None:
    """(instrument, data type) of a data frame, None for replies and channels not collected."""
    if frame == "pong":
        return None
    obj = orjson.loads(frame)
    if venue.startswith("binance"):
        stream = obj.get("stream")
        if not isinstance(stream, str):
            return None
        sym, _, ch = stream.partition("@")
        if ch.startswith("depth"):
            return sym.upper(), "depth"
        kind = {"trade": "trade", "aggTrade": "trade", "bookTicker": "ticker"}.get(ch)
        return (sym.upper(), kind) if kind else None
    if venue.startswith("okx"):
        if "event" in obj or "arg" not in obj:
            return None
        ch = obj["arg"]["channel"]
        kind = "trade" if ch.startswith("trades") else "depth" if ch.startswith("books") else "ticker"
        return obj["arg"]["instId"], kind
    if "topic" not in obj:
        return None
    parts = obj["topic"].split(".")
    return parts[-1], {"publicTrade": "trade", "orderbook": "depth", "tickers": "ticker"}[parts[0]]


class Client:
    """Connects like a collector: the venue's URL layout, subscribe messages and parser."""

    def __init__(self, sim: SimServer, venue: str):
        self.sim = sim
        self.name = venue
        self.venue = get_venue(venue)
        self.parser = self.venue.new_parser()
        self.ws: Any = None

    async def __aenter__(self) -> Client:
        self.ws = await websockets.connect(self.sim.ws_url(self.name), max_size=None, max_queue=None)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()

    async def subscribe(self, symbols: list[str], types: list[DataType], unsubscribe: bool = False) -> int:
        subs = self.venue.subscriptions(symbols, types)
        build = self.venue.unsubscribe_messages if unsubscribe else self.venue.subscribe_messages
        messages = build(subs, 100 if unsubscribe else 1)
        for m in messages:
            await self.ws.send(m)
        return len(messages)

    async def read(self, seconds: float) -> list[str]:
        out: list[str] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                out.append(await asyncio.wait_for(self.ws.recv(), left))
            except TimeoutError:
                break
        return out

    async def read_until(self, done: Callable[[str], bool], timeout: float = 5.0) -> list[str]:
        out: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            frame = await asyncio.wait_for(self.ws.recv(), max(0.01, deadline - time.monotonic()))
            out.append(frame)
            if done(frame):
                return out

    def data(self, frames: Iterable[str]) -> list[str]:
        return [f for f in frames if key_of(self.name, f) is not None]


async def http_get(url: str) -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, dict(r.headers), orjson.loads(await r.read())


def unsub_ack(venue: str, n_args: int) -> Callable[[str], bool]:
    """Predicate for the (last) unsubscribe acknowledgement in the venue's shape."""
    seen = Counter[str]()

    def done(frame: str) -> bool:
        try:
            obj = orjson.loads(frame)
        except orjson.JSONDecodeError:  # "pong", or an injected malformed frame
            return False
        if venue.startswith("binance"):
            return obj.get("id") == 100
        if venue.startswith("okx"):
            if obj.get("event") == "unsubscribe":
                seen["acks"] += 1
            return seen["acks"] == n_args
        return obj.get("op") == "unsubscribe" and obj.get("req_id") == "100"

    return done


def synthetic(venues: list[str], rate: float = 40.0, **kw: Any) -> SimConfig:
    return SimConfig(mode="synthetic", venues=venues, symbols=kw.pop("symbols", SYMBOLS), rate=rate, **kw)


# --- synthetic mode: every venue --------------------------------------------------------------------------


@pytest.mark.parametrize("venue", list(VENUES))
async def test_synthetic_acks_frames_parse_and_truth_counts_are_exact(venue: str) -> None:
    async with SimServer(synthetic([venue])) as sim, Client(sim, venue) as c:
        n_messages = await c.subscribe(SYMBOLS, ALL_TYPES)
        frames = await c.read(0.6)
        await c.subscribe(SYMBOLS, ALL_TYPES, unsubscribe=True)
        frames += await c.read_until(unsub_ack(venue, len(SYMBOLS) * 3))
        truth = sim.truth()
    replies = [orjson.loads(f) for f in frames if key_of(venue, f) is None]
    if venue.startswith("binance"):
        assert replies[0] == {"result": None, "id": 1}
    elif venue.startswith("okx"):
        acks = [r for r in replies if r["event"] == "subscribe"]
        assert len(acks) == 6 and all(set(r) == {"event", "arg", "connId"} for r in acks)
        assert {a["arg"]["channel"] for a in acks} == {"trades", "books", "bbo-tbt"}
    else:
        assert replies[0]["success"] is True and replies[0]["op"] == "subscribe" and replies[0]["req_id"] == "1"
        assert isinstance(replies[0]["conn_id"], str) and replies[0]["ret_msg"] == ""
    received: Counter[tuple[str, str]] = Counter()
    records: Counter[tuple[str, str]] = Counter()
    for frame in c.data(frames):
        received[key_of(venue, frame)] += 1  # type: ignore[index]
        for rec in c.parser.parse(frame, 0):  # any ParseError fails the test
            records[(rec.symbol, rec.data_type.value)] += 1
    for symbol in SYMBOLS:
        for dt in ("trade", "depth", "ticker"):
            assert records[(symbol, dt)] >= 5, (symbol, dt, records)
    vt = truth["venues"][venue]
    sent = Counter({(inst, dt): c["frames"] for inst, per in vt["instruments"].items() for dt, c in per.items()})
    assert sent == received  # every frame the server counted arrived, nothing more
    assert vt["connections"] == 1 and vt["subscribe_messages"] == n_messages
    assert truth["connections"][venue] == 1 and truth["subscribe_messages"][venue] == n_messages


@pytest.mark.parametrize("venue", ["binance_spot", "binance_usdm"])
async def test_binance_update_ids_are_continuous_and_trade_ids_contiguous(venue: str) -> None:
    async with SimServer(synthetic([venue], rate=100)) as sim, Client(sim, venue) as c:
        await c.subscribe(["BTC-USDT"], ALL_TYPES)
        frames = c.data(await c.read(0.6))
    datas = [orjson.loads(f)["data"] for f in frames]
    depth = [d for d in datas if d.get("e") == "depthUpdate"]
    trades = [d["t"] for d in datas if d.get("e") == "trade"]
    tickers = [d["u"] for d in datas if "b" in d and isinstance(d["b"], str)]
    assert len(depth) > 30 and len(trades) > 30 and len(tickers) > 30
    for prev, cur in itertools.pairwise(depth):
        assert cur["U"] == prev["u"] + 1 and cur["u"] >= cur["U"]
        if venue == "binance_usdm":
            assert cur["pu"] == prev["u"]
    assert trades == list(range(trades[0], trades[0] + len(trades)))
    assert tickers == sorted(tickers)


def apply_levels(side: dict[str, str], levels: list[list[str]]) -> None:
    for level in levels:
        price, size = level[0], level[1]
        if float(size) == 0:
            side.pop(price, None)
        else:
            side[price] = size


def as_lists(bids: dict[str, str], asks: dict[str, str]) -> tuple[list[list[str]], list[list[str]]]:
    return (
        [[p, bids[p]] for p in sorted(bids, key=float, reverse=True)],
        [[p, asks[p]] for p in sorted(asks, key=float)],
    )


@pytest.mark.parametrize("venue", ["binance_spot", "binance_usdm"])
async def test_binance_rest_snapshot_bridges_the_stream_to_the_true_book(venue: str) -> None:
    futures = venue == "binance_usdm"
    async with SimServer(synthetic([venue], rate=100)) as sim, Client(sim, venue) as c:
        await c.subscribe(["BTC-USDT"], [DataType.DEPTH])
        buffered = c.data(await c.read(0.3))
        path = "/fapi/v1/depth" if futures else "/api/v3/depth"
        status, _, snap = await http_get(f"{sim.rest_base(venue)}{path}?symbol=BTCUSDT&limit=1000")
        assert status == 200 and ("E" in snap) == futures
        events = [orjson.loads(f)["data"] for f in buffered + c.data(await c.read(0.5))]
        last_id = snap["lastUpdateId"]
        bids, asks = dict(map(tuple, snap["bids"])), dict(map(tuple, snap["asks"]))
        # The documented rules (SOURCES.md §3): spot keeps u > L and starts with U <= L+1 <= u; USDⓈ-M
        # keeps u >= L and starts with U <= L <= u.
        kept = [e for e in events if (e["u"] >= last_id if futures else e["u"] > last_id)]
        first = kept[0]
        assert first["U"] <= (last_id if futures else last_id + 1) <= first["u"]
        for prev, cur in itertools.pairwise(kept):
            assert cur["pu"] == prev["u"] if futures else cur["U"] == prev["u"] + 1
        for e in kept:
            apply_levels(bids, e["b"])
            apply_levels(asks, e["a"])
        status, _, truth_book = await http_get(
            f"http://127.0.0.1:{sim.port}/_sim/book?venue={venue}&instrument=BTC-USDT&seq={kept[-1]['u']}"
        )
    assert status == 200 and len(kept) > 20
    assert list(as_lists(bids, asks)) == [truth_book["bids"], truth_book["asks"]]
    assert float(truth_book["bids"][0][0]) < float(truth_book["asks"][0][0])


def test_okx_checksum_rule_matches_the_recorded_okx_books() -> None:
    """The checksum the simulator writes follows the rule the recorded OKX frames verify with."""
    frames = jsonl_frames("okx/books_BTC-USDT_2022-05-13.jsonl")
    bids: dict[str, str] = {}
    asks: dict[str, str] = {}
    for frame in frames:
        d = orjson.loads(frame)["data"][0]
        apply_levels(bids, d["bids"])
        apply_levels(asks, d["asks"])
        b, a = as_lists(bids, asks)
        assert okx_checksum(b, a) == d["checksum"] == reference_checksum(b, a)


def reference_checksum(bids: list[list[str]], asks: list[list[str]]) -> int:
    """SOURCES.md "OKX checksum", written out independently of the simulator."""
    parts = []
    for i in range(25):
        if i < len(bids):
            parts.append(f"{bids[i][0]}:{bids[i][1]}")
        if i < len(asks):
            parts.append(f"{asks[i][0]}:{asks[i][1]}")
    crc = zlib.crc32(":".join(parts).encode())
    return crc - 2**32 if crc > 2**31 - 1 else crc


@pytest.mark.parametrize("venue", ["okx_spot", "okx_swap"])
async def test_okx_books_snapshot_then_seq_chain_with_valid_checksums(venue: str) -> None:
    async with SimServer(synthetic([venue], rate=100)) as sim, Client(sim, venue) as c:
        await c.subscribe(["BTC-USDT"], [DataType.DEPTH, DataType.TICKER])
        frames = [orjson.loads(f) for f in c.data(await c.read(0.6))]
        books = [f for f in frames if f["arg"]["channel"] == "books"]
        bbo = [f["data"][0] for f in frames if f["arg"]["channel"] == "bbo-tbt"]
        assert books[0]["action"] == "snapshot" and books[0]["data"][0]["prevSeqId"] == -1
        bids: dict[str, str] = {}
        asks: dict[str, str] = {}
        steps = set()
        prev_seq = None
        for f in books:
            d = f["data"][0]
            if prev_seq is not None:
                assert f["action"] == "update" and d["prevSeqId"] == prev_seq and d["seqId"] > prev_seq
                steps.add(d["seqId"] - prev_seq)
            prev_seq = d["seqId"]
            assert all(len(level) == 4 and level[2] == "0" for level in d["bids"] + d["asks"])
            apply_levels(bids, d["bids"])
            apply_levels(asks, d["asks"])
            assert reference_checksum(*as_lists(bids, asks)) == d["checksum"] != 0
        truth_book = sim.book(venue, "BTC-USDT", prev_seq)
    assert len(books) > 30 and len(steps) > 3  # seqId grows by varying steps, as on live OKX
    assert truth_book is not None and list(as_lists(bids, asks)) == [truth_book["bids"], truth_book["asks"]]
    assert bbo and all(float(b["bids"][0][0]) < float(b["asks"][0][0]) for b in bbo)


async def test_bybit_orderbook_snapshot_then_u_plus_one_and_ticker_deltas() -> None:
    async with SimServer(synthetic(["bybit_linear"], rate=100)) as sim, Client(sim, "bybit_linear") as c:
        await c.subscribe(["BTC-USDT"], ALL_TYPES)
        frames = [orjson.loads(f) for f in c.data(await c.read(0.6))]
        books = [f for f in frames if f["topic"].startswith("orderbook.50.")]
        assert books[0]["type"] == "snapshot" and all(f["type"] == "delta" for f in books[1:])
        us = [f["data"]["u"] for f in books]
        assert us == list(range(us[0], us[0] + len(us)))
        bids: dict[str, str] = {}
        asks: dict[str, str] = {}
        for f in books:
            apply_levels(bids, f["data"]["b"])
            apply_levels(asks, f["data"]["a"])
        truth_book = sim.book("bybit_linear", "BTCUSDT", us[-1])
    assert truth_book is not None and list(as_lists(bids, asks)) == [truth_book["bids"], truth_book["asks"]]
    tickers = [f for f in frames if f["topic"] == "tickers.BTCUSDT"]
    assert tickers[0]["type"] == "snapshot" and {"bid1Price", "ask1Price", "lastPrice"} <= set(tickers[0]["data"])
    assert len(tickers) > 5 and all(t["type"] == "delta" and len(t["data"]) < 14 for t in tickers[1:])
    trades = [t for f in frames if f["topic"] == "publicTrade.BTCUSDT" for t in f["data"]]
    assert len(trades) > 30 and len({t["i"] for t in trades}) == len(trades)
    assert {t["S"] for t in trades} == {"Buy", "Sell"} and all(t["BT"] is False for t in trades)


async def test_subscription_variants_heartbeats_and_errors() -> None:
    venues = ["binance_spot", "okx_spot", "bybit_linear"]
    async with SimServer(synthetic(venues, rate=50)) as sim:
        # Binance: streams in the URL, another depth speed, aggTrade, LIST_SUBSCRIPTIONS, bad JSON.
        url = sim.ws_url("binance_spot") + "?streams=btcusdt@trade"
        async with websockets.connect(url) as ws:
            await ws.send('{"method":"SUBSCRIBE","params":["btcusdt@depth","ethusdt@aggTrade"],"id":7}')
            await ws.send('{"method":"LIST_SUBSCRIPTIONS","id":8}')
            await ws.send("not json")
            frames = [await ws.recv() for _ in range(60)]
        replies = [orjson.loads(f) for f in frames if key_of("binance_spot", f) is None]
        assert replies[:2] == [
            {"result": None, "id": 7},
            {"result": ["btcusdt@trade", "btcusdt@depth", "ethusdt@aggTrade"], "id": 8},
        ]
        assert replies[2]["code"] == 3
        streams = {orjson.loads(f)["stream"] for f in frames if key_of("binance_spot", f)}
        assert streams == {"btcusdt@trade", "btcusdt@depth", "ethusdt@aggTrade"}
        parser = get_venue("binance_spot").new_parser()
        aggs = [r for f in frames if "aggTrade" in f[:40] for r in parser.parse(f, 0)]
        assert aggs and all(r.aggregate and r.first_trade_id == r.last_trade_id == int(r.trade_id) for r in aggs)
        # OKX: ping/pong, another books channel, tickers shape, unknown instrument.
        async with websockets.connect(sim.ws_url("okx_spot")) as ws:
            await ws.send("ping")
            assert await ws.recv() == "pong"
            args = [{"channel": "books-l2-tbt", "instId": "BTC-USDT"}, {"channel": "tickers", "instId": "BTC-USDT"},
                    {"channel": "trades", "instId": "NOPE-USDT"}]  # fmt: skip
            await ws.send(orjson.dumps({"op": "subscribe", "args": args}).decode())
            frames = [orjson.loads(await ws.recv()) for _ in range(20)]
        assert frames[0]["event"] == "subscribe" and frames[1]["event"] == "subscribe"
        assert frames[2]["event"] == "error" and frames[2]["code"] == "60018"
        data = [f for f in frames if "arg" in f and "event" not in f]
        assert {f["arg"]["channel"] for f in data} == {"books-l2-tbt", "tickers"}
        parser = get_venue("okx_spot").new_parser()
        assert all(parser.parse(orjson.dumps(f), 0) for f in data)
        # Bybit: ping, a deeper book topic, duplicate and invalid topics.
        async with websockets.connect(sim.ws_url("bybit_linear")) as ws:
            await ws.send('{"op":"ping","req_id":"p"}')
            pong = orjson.loads(await ws.recv())
            assert pong["ret_msg"] == "pong" and pong["op"] == "ping" and pong["success"] is True
            await ws.send('{"op":"subscribe","args":["orderbook.200.BTCUSDT"],"req_id":"1"}')
            await ws.send('{"op":"subscribe","args":["orderbook.200.BTCUSDT","tickers.NOPEUSDT"],"req_id":"2"}')
            frames = [orjson.loads(await ws.recv()) for _ in range(8)]
        replies = [f for f in frames if "op" in f]
        assert replies[0]["success"] is True and replies[1]["success"] is False
        assert "already subscribed" in replies[1]["ret_msg"] and "tickers.NOPEUSDT" in replies[1]["ret_msg"]
        assert {f["topic"] for f in frames if "topic" in f} == {"orderbook.200.BTCUSDT"}


async def test_client_heartbeat_venues_cut_silent_connections() -> None:
    async with SimServer(synthetic(["okx_spot"], client_idle_timeout_s=0.4)) as sim:
        async with websockets.connect(sim.ws_url("okx_spot")) as ws:
            for _ in range(4):  # a client that pings (text "ping", as OKX wants) is kept
                await ws.send("ping")
                assert await ws.recv() == "pong"
                await asyncio.sleep(0.2)
            t0 = time.monotonic()
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 3.0)
        assert 0.2 < time.monotonic() - t0 < 1.0


async def test_rest_endpoints_in_synthetic_mode() -> None:
    async with SimServer(synthetic(list(VENUES))) as sim:
        base = {name: sim.rest_base(name) for name in VENUES}
        status, _, info = await http_get(base["binance_spot"] + "/api/v3/exchangeInfo")
        assert status == 200 and [s["symbol"] for s in info["symbols"]] == ["BTCUSDT", "ETHUSDT"]
        assert info["symbols"][0]["filters"][0]["tickSize"] == "0.01000000"
        status, _, info = await http_get(base["binance_usdm"] + "/fapi/v1/exchangeInfo")
        assert status == 200 and info["symbols"][0]["contractType"] == "PERPETUAL"
        status, _, err = await http_get(base["binance_spot"] + "/api/v3/depth?symbol=NOPEUSDT")
        assert status == 400 and err["code"] == -1121
        status, _, depth = await http_get(base["binance_spot"] + "/api/v3/depth?symbol=BTCUSDT&limit=5")
        assert status == 200 and len(depth["bids"]) == len(depth["asks"]) == 5 and set(depth) == {
            "lastUpdateId", "bids", "asks"}  # fmt: skip
        status, _, inst = await http_get(base["okx_swap"] + "/api/v5/public/instruments?instType=SWAP")
        assert status == 200 and [i["instId"] for i in inst["data"]] == ["BTC-USDT-SWAP", "ETH-USDT-SWAP"]
        status, _, inst = await http_get(base["okx_spot"] + "/api/v5/public/instruments?instType=SWAP")
        assert inst == {"code": "0", "data": [], "msg": ""}
        status, _, _ = await http_get(base["okx_spot"] + "/api/v5/public/instruments")
        assert status == 400
        status, _, books = await http_get(base["okx_spot"] + "/api/v5/market/books?instId=BTC-USDT&sz=5")
        assert books["code"] == "0" and len(books["data"][0]["bids"]) == 5 and len(books["data"][0]["asks"][0]) == 4
        status, _, ob = await http_get(
            base["bybit_linear"] + "/v5/market/orderbook?category=linear&symbol=BTCUSDT&limit=3"
        )
        assert ob["retCode"] == 0 and len(ob["result"]["b"]) == 3 and {"u", "seq", "ts"} <= set(ob["result"])
        status, _, ins = await http_get(base["bybit_linear"] + "/v5/market/instruments-info?category=linear")
        assert [i["symbol"] for i in ins["result"]["list"]] == ["BTCUSDT", "ETHUSDT"]
        status, _, err = await http_get(base["bybit_linear"] + "/v5/market/orderbook?symbol=BTCUSDT")
        assert err["retCode"] == 10001
        # Ground-truth endpoints.
        status, _, truth = await http_get(f"http://127.0.0.1:{sim.port}/_sim/truth")
        assert status == 200 and truth["venues"]["okx_spot"]["rest_requests"] == 3
        status, _, book = await http_get(f"http://127.0.0.1:{sim.port}/_sim/book?venue=okx_swap&instrument=BTC-USDT")
        assert status == 200 and book["instrument"] == "BTC-USDT-SWAP" and book["seq"] == book["current_seq"]
        for query, want in [("venue=nope&instrument=BTC-USDT", 404), ("venue=okx_swap&instrument=X-Y", 404),
                            ("venue=okx_swap&instrument=BTC-USDT&seq=abc", 400),
                            ("venue=okx_swap&instrument=BTC-USDT&seq=1", 404)]:  # fmt: skip
            status, _, _ = await http_get(f"http://127.0.0.1:{sim.port}/_sim/book?{query}")
            assert status == want, query


async def test_synthetic_mode_serves_hundreds_of_streams_on_one_connection() -> None:
    """Every one of 300 streams delivers, in order, on one connection (throughput lives in bench/)."""
    symbols = [f"C{i}-USDT" for i in range(100)]
    async with (
        SimServer(synthetic(["binance_spot"], rate=5, symbols=symbols)) as sim,
        Client(sim, "binance_spot") as c,
    ):
        await c.subscribe(symbols, ALL_TYPES)
        frames = await c.read(3.0)
    streams = {orjson.loads(f)["stream"] for f in frames if f.startswith('{"stream"')}
    assert len(streams) == 300


# --- faults -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("abort", [False, True])
async def test_fault_disconnect_closes_every_connection(abort: bool) -> None:
    faults = {"binance_spot": Faults(disconnect_every_s=0.3, disconnect_abort=abort)}
    async with SimServer(synthetic(["binance_spot"], faults=faults)) as sim, Client(sim, "binance_spot") as c:
        await c.subscribe(["BTC-USDT"], [DataType.TRADE])
        t0 = time.monotonic()
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await c.read(3.0)
        elapsed = time.monotonic() - t0
        await asyncio.sleep(0.1)
        truth = sim.truth()["venues"]["binance_spot"]
    assert 0.2 < elapsed < 1.0
    assert closed.value.rcvd is None if abort else closed.value.rcvd.code == 1001
    assert truth["disconnects_injected"] == 1 and truth["open_connections"] == 0


async def test_fault_drop_makes_sequence_gaps_counted_in_truth() -> None:
    faults = {"binance_spot": Faults(drop_every_n=5)}
    async with SimServer(synthetic(["binance_spot"], rate=100, faults=faults)) as sim, Client(sim, "binance_spot") as c:
        await c.subscribe(["BTC-USDT"], [DataType.DEPTH])
        frames = c.data(await c.read(0.5))
        await c.subscribe(["BTC-USDT"], [DataType.DEPTH], unsubscribe=True)
        frames += c.data(await c.read_until(unsub_ack("binance_spot", 1)))
        counts = sim.truth()["venues"]["binance_spot"]["instruments"]["BTCUSDT"]["depth"]
    depth = [orjson.loads(f)["data"] for f in frames]
    gaps = sum(1 for p, q in itertools.pairwise(depth) if q["U"] != p["u"] + 1)
    assert gaps >= 8 and counts["dropped"] in (gaps, gaps + 1)  # the last drop may leave no frame after it
    assert counts["frames"] == len(depth) and 0 <= counts["frames"] - 4 * counts["dropped"] <= 4


async def test_fault_malformed_frames_raise_parse_error_and_the_good_frame_follows() -> None:
    faults = {"bybit_linear": Faults(malformed_every_n=4)}
    async with SimServer(synthetic(["bybit_linear"], rate=100, faults=faults)) as sim, Client(sim, "bybit_linear") as c:
        await c.subscribe(["BTC-USDT"], [DataType.TRADE, DataType.DEPTH])
        frames = await c.read(0.5)
        await c.subscribe(["BTC-USDT"], [DataType.TRADE, DataType.DEPTH], unsubscribe=True)
        frames += await c.read_until(unsub_ack("bybit_linear", 2))
        truth = sim.truth()["venues"]["bybit_linear"]["instruments"]["BTCUSDT"]
    bad, good = 0, 0
    for i, frame in enumerate(frames):
        try:
            c.parser.parse(frame, 0)
            good += 1
        except ParseError:
            bad += 1
            assert frames[i + 1].startswith(frame)  # the intact frame comes right after its truncated copy
    assert bad >= 10 and bad == sum(t["malformed"] for t in truth.values())
    assert good - 2 == sum(t["frames"] for t in truth.values())  # minus the two replies


async def test_fault_corrupt_checksum_is_detected_by_the_checksum_rule() -> None:
    faults = {"okx_spot": Faults(corrupt_checksum_every_n=3)}
    async with SimServer(synthetic(["okx_spot"], rate=100, faults=faults)) as sim, Client(sim, "okx_spot") as c:
        await c.subscribe(["BTC-USDT"], [DataType.DEPTH])
        frames = c.data(await c.read(0.5))
        await c.subscribe(["BTC-USDT"], [DataType.DEPTH], unsubscribe=True)
        frames += c.data(await c.read_until(unsub_ack("okx_spot", 1)))
        counts = sim.truth()["venues"]["okx_spot"]["instruments"]["BTC-USDT"]["depth"]
    bids: dict[str, str] = {}
    asks: dict[str, str] = {}
    bad = []
    for i, frame in enumerate(frames):
        d = orjson.loads(frame)["data"][0]
        apply_levels(bids, d["bids"])
        apply_levels(asks, d["asks"])
        if reference_checksum(*as_lists(bids, asks)) != d["checksum"]:
            bad.append(i)
    assert len(bad) >= 10 and len(bad) == counts["corrupted"] and counts["frames"] == len(frames)
    assert bad == list(range(2, len(frames), 3))[: len(bad)]


async def test_fault_stall_silences_data_and_pings_then_resumes_without_gap() -> None:
    cfg = synthetic(["binance_spot"], rate=100, ping_interval_s=0.1)
    async with (
        SimServer(cfg) as sim,
        aiohttp.ClientSession() as http,
        http.ws_connect(sim.ws_url("binance_spot"), autoping=False) as ws,
    ):
        await ws.send_str('{"method":"SUBSCRIBE","params":["btcusdt@depth@100ms"],"id":1}')
        events: list[tuple[float, str, str]] = []
        t0 = time.monotonic()
        stall_at = None
        while time.monotonic() - t0 < 2.0:
            if stall_at is None and time.monotonic() - t0 > 0.4:
                async with http.post(f"http://127.0.0.1:{sim.port}/_sim/faults",
                                         json={"venue": "binance_spot", "stall_s": 0.8}) as r:  # fmt: skip
                    assert r.status == 200 and (await r.json())["binance_spot"]["stall_s"] == 0.8
                stall_at = time.monotonic()
            msg = await ws.receive(timeout=2.0)
            events.append((time.monotonic(), msg.type.name, msg.data if msg.type.name == "TEXT" else ""))
    assert stall_at is not None
    gaps = [(b[0] - a[0], a[0]) for a, b in itertools.pairwise(events)]
    longest, started = max(gaps)
    assert 0.6 < longest < 1.3 and abs(started - stall_at) < 0.2
    pings = [t for t, kind, _ in events if kind == "PING"]
    assert sum(1 for t in pings if t < stall_at) >= 2 and sum(1 for t in pings if t > stall_at + 0.9) >= 2
    depth = [orjson.loads(d)["data"] for _, kind, d in events if kind == "TEXT" and d.startswith('{"stream"')]
    assert all(q["U"] == p["u"] + 1 for p, q in itertools.pairwise(depth))  # delayed, not lost


async def test_rest_faults_status_retry_after_and_fail_count() -> None:
    faults = {"binance_usdm": Faults(rest_status=429, rest_fail_count=2, rest_retry_after_s=3)}
    async with SimServer(synthetic(["binance_usdm", "okx_spot"], faults=faults)) as sim:
        url = sim.rest_base("binance_usdm") + "/fapi/v1/depth?symbol=BTCUSDT"
        results = [await http_get(url) for _ in range(3)]
        assert [r[0] for r in results] == [429, 429, 200]
        assert results[0][1]["Retry-After"] == "3" and results[0][2]["code"] == -1003
        sim.set_faults("binance_usdm", Faults(rest_status=418, rest_retry_after_s=7))  # no count: every request
        results = [await http_get(url) for _ in range(2)]
        assert [(r[0], r[1]["Retry-After"]) for r in results] == [(418, "7"), (418, "7")]
        assert "banned" in results[0][2]["msg"]
        control = f"http://127.0.0.1:{sim.port}/_sim/faults"
        async with aiohttp.ClientSession() as http:
            async with http.post(control, json={"rest_status": 503, "rest_fail_count": 1}) as r:  # every venue
                assert r.status == 200
            async with http.post(control, json={"venue": "okx_spot", "no_such_fault": 1}) as r:
                assert r.status == 400 and "no_such_fault" in (await r.json())["error"]
        status, headers, body = await http_get(sim.rest_base("okx_spot") + "/api/v5/market/books?instId=BTC-USDT")
        assert status == 503 and headers["Retry-After"] == "1" and body["code"] == "50001"
        status, _, body = await http_get(sim.rest_base("okx_spot") + "/api/v5/market/books?instId=BTC-USDT")
        assert status == 200 and body["code"] == "0"
        assert (await http_get(url))[0] == 503
        truth = sim.truth()["venues"]
    assert truth["binance_usdm"]["rest_failures_injected"] == 5 and truth["binance_usdm"]["rest_requests"] == 6


# --- replay mode ----------------------------------------------------------------------------------------

REPLAYS: dict[str, tuple[list[str], list[str]]] = {
    "binance_spot": (["binance/spot_trade_BTCUSDT_2024-08-08_first500.jsonl",
                      "binance/spot_depthUpdate_BTCUSDT_2024-08-08_first400.jsonl",
                      "binance/spot_bookTicker_BTCUSDT_2024-08-08_first500.jsonl"], ["BTC-USDT"]),
    "binance_usdm": (["binance/usdm_cryptofeed_2021-07-22.ws.raw.txt"], ["SUSHI-USDT", "CTK-USDT", "AKRO-USDT"]),
    "okx_spot": (["okx/books_BTC-USDT_2022-05-13.jsonl", "okx/trades_2022-05-13.jsonl",
                  "okx/tickers_2022-05-13.jsonl"], ["BTC-USDT"]),
    "okx_swap": (["okx/okx_cryptofeed_2022-05-13.ws.raw.txt"], ["UNI-USD"]),
    "bybit_linear": (["bybit/v5_orderbook500_XRPUSDT_2024-12-01.jsonl"], ["XRP-USDT"]),
}  # fmt: skip


def recorded_frames(relative: str) -> list[str]:
    """Received frames of a fixture, read here independently of the simulator's reader."""
    text = fixture_path(relative).read_text(encoding="utf-8")
    if relative.endswith(".jsonl"):
        return [line for line in text.split("\n") if line]
    out = []
    for line in text.split("\n"):
        head, sep, rest = line.partition(": ")
        if sep and head.replace(".", "").isdigit():
            out.append(rest)
    return out


async def collect_replay(sim: SimServer, c: Client, timeout: float = 10.0) -> list[str]:
    frames: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frames += await c.read(0.2)
        if sim.truth()["replay_done"]:
            return frames + await c.read(0.2)
    raise AssertionError("replay did not finish")


@pytest.mark.parametrize("venue", list(REPLAYS))
async def test_replay_delivers_exactly_the_recorded_frames_of_subscribed_streams(venue: str) -> None:
    files, symbols = REPLAYS[venue]
    v = get_venue(venue)
    wanted = {v.to_instrument(s) for s in symbols}
    expected: dict[tuple[str, str], list[str]] = defaultdict(list)
    for rel in files:
        for frame in recorded_frames(rel):
            key = key_of(venue, frame)
            if key is not None and key[0] in wanted:
                expected[key].append(frame)
    cfg = SimConfig(mode="replay", replay_files={venue: [str(fixture_path(f)) for f in files]}, speed=0.0)
    async with SimServer(cfg) as sim, Client(sim, venue) as c:
        await c.subscribe(symbols, ALL_TYPES)
        frames = c.data(await collect_replay(sim, c))
        truth = sim.truth()
    got: dict[tuple[str, str], list[str]] = defaultdict(list)
    for frame in frames:
        got[key_of(venue, frame)].append(frame)  # type: ignore[index]
    assert got == expected  # byte-identical, in recorded order per stream, nothing else
    assert sum(len(f) for f in got.values()) > 40
    sent = {(i, dt): c["frames"] for i, per in truth["venues"][venue]["instruments"].items() for dt, c in per.items()}
    assert sent == {k: len(f) for k, f in expected.items()}
    subjects: Counter[str] = Counter()
    for frame in frames:  # any ParseError fails the test
        subjects.update(r.subject() for r in c.parser.parse(frame, 0))
    source = truth["replay"][venue]["subjects"]
    assert all(source[s] == n for s, n in subjects.items()) and truth["replay"][venue]["parse_errors"] == 0


async def test_replay_resumes_after_a_disconnect_with_the_overlap() -> None:
    rel = "binance/usdm_depthUpdate_SUSHIUSDT_2021-07-22.jsonl"  # 255 frames over 30 s
    faults = {"binance_usdm": Faults(disconnect_every_s=0.4)}
    cfg = SimConfig(mode="replay", replay_files={"binance_usdm": [str(fixture_path(rel))]}, speed=20.0,
                    replay_overlap=5, faults=faults)  # fmt: skip
    connections: list[list[str]] = []
    async with SimServer(cfg) as sim:
        while not sim.truth()["replay_done"] and len(connections) < 20:
            async with Client(sim, "binance_usdm") as c:
                await c.subscribe(["SUSHI-USDT"], [DataType.DEPTH])
                frames: list[str] = []
                with pytest.raises(websockets.ConnectionClosed):
                    while True:
                        frames.append(await c.ws.recv())
                connections.append(c.data(frames))
        counts = sim.truth()["venues"]["binance_usdm"]["instruments"]["SUSHIUSDT"]["depth"]
    recorded = recorded_frames(rel)
    assert len(connections) >= 3
    for prev, cur in itertools.pairwise(connections):
        if len(prev) >= 5 and cur:
            assert cur[:5] == prev[-5:]  # each new connection starts 5 frames back
    unique = list(dict.fromkeys(f for conn in connections for f in conn))
    assert unique == recorded  # together: every frame, in order
    resumed = sum(1 for prev, cur in itertools.pairwise(connections) if prev and cur)
    assert counts["frames"] == len(recorded) and counts["resent"] == 5 * resumed


async def test_replay_faults_drop_and_corrupt_recorded_frames() -> None:
    rel = "okx/books_BTC-USDT_2022-05-13.jsonl"  # 98 frames with verified checksums
    faults = {"okx_spot": Faults(drop_every_n=7, corrupt_checksum_every_n=10)}
    cfg = SimConfig(mode="replay", replay_files={"okx_spot": [str(fixture_path(rel))]}, faults=faults)
    async with SimServer(cfg) as sim, Client(sim, "okx_spot") as c:
        await c.subscribe(["BTC-USDT"], [DataType.DEPTH])
        frames = c.data(await collect_replay(sim, c))
        counts = sim.truth()["venues"]["okx_spot"]["instruments"]["BTC-USDT"]["depth"]
    recorded = recorded_frames(rel)
    kept = [f for i, f in enumerate(recorded) if (i + 1) % 7]
    assert len(frames) == len(kept) == counts["frames"] and counts["dropped"] == len(recorded) - len(kept)
    corrupted = [i for i, (got, want) in enumerate(zip(frames, kept, strict=True)) if got != want]
    assert corrupted == list(range(9, len(kept), 10)) and counts["corrupted"] == len(corrupted)
    for i in corrupted:  # only the checksum differs
        got, want = orjson.loads(frames[i]), orjson.loads(kept[i])
        assert got["data"][0].pop("checksum") != want["data"][0].pop("checksum") and got == want


async def test_replay_serves_recorded_rest_bodies() -> None:
    spot = [
        "binance/spot_depthUpdate_NKNUSDT_2021-10-12.jsonl",
        "binance/spot_rest_depth_NKNUSDT_limit1000_2021-10-12.json",
        "binance/spot_cryptofeed_2021-10-12.http.raw.txt",
        "binance/spot_rest_exchangeInfo_trimmed_2021-10-12.json",
    ]
    okx = ["okx/rest_public_instruments_SPOT_2022-05-13.json", "okx/trades_2022-05-13.jsonl"]
    files = {"binance_spot": [str(fixture_path(f)) for f in spot], "okx_spot": [str(fixture_path(f)) for f in okx]}
    async with SimServer(SimConfig(mode="replay", replay_files=files)) as sim, aiohttp.ClientSession() as http:

        async def get(url: str) -> tuple[int, bytes]:
            async with http.get(url) as r:
                return r.status, await r.read()

        base = sim.rest_base("binance_spot")
        assert await get(f"{base}/api/v3/depth?symbol=NKNUSDT&limit=1000") == (
            200,
            fixture_path(spot[1]).read_bytes(),
        )
        status, body = await get(f"{base}/api/v3/depth?symbol=LRCBTC")  # from the cryptofeed REST recording
        assert status == 200 and orjson.loads(body)["lastUpdateId"] == 259345543
        assert (await get(f"{base}/api/v3/depth?symbol=BTCUSDT"))[0] == 400  # not recorded
        assert await get(f"{base}/api/v3/exchangeInfo") == (200, fixture_path(spot[3]).read_bytes())
        inst = f"{sim.rest_base('okx_spot')}/api/v5/public/instruments?instType=SPOT"
        assert await get(inst) == (200, fixture_path(okx[0]).read_bytes())
        status, body = await get(f"{sim.rest_base('okx_spot')}/api/v5/public/instruments?instType=SWAP")
        assert status == 200 and orjson.loads(body)["data"] == []


async def test_replay_paces_at_recorded_speed_times_factor() -> None:
    rel = "bybit/v5_orderbook500_XRPUSDT_2024-12-01.jsonl"  # 50 frames over 4.8 s
    took = {}
    for speed in (4.0, 0.0):
        cfg = SimConfig(mode="replay", replay_files={"bybit_linear": [str(fixture_path(rel))]}, speed=speed)
        async with SimServer(cfg) as sim, Client(sim, "bybit_linear") as c:
            t0 = time.monotonic()
            await c.subscribe(["XRP-USDT"], [DataType.DEPTH])
            frames = await c.read_until(lambda f: '"u":20254918,' in f, 5.0)  # the last recorded frame
            took[speed] = time.monotonic() - t0
            assert c.data(frames) == recorded_frames(rel)
    assert 0.9 < took[4.0] < 2.5 and took[0.0] < 0.5, took


async def test_recording_formats_captures_and_cli_helpers(tmp_path: Path) -> None:
    frames = jsonl_frames("okx/trades_2022-05-13.jsonl")
    capture = tmp_path / "capture.jsonl.gz"
    with gzip.open(capture, "wb") as f:
        for i, frame in enumerate(frames):
            f.write(orjson.dumps({"recv_ts": 1_652_459_226_000_000 + i, "source": "ws", "url": "wss://x/ws/v5/public",
                                  "data": frame}) + b"\n")  # fmt: skip
        f.write(orjson.dumps({"recv_ts": 1, "source": "ws", "url": "u", "data": '{"event":"subscribe"}'}) + b"\n")
        body = fixture_path("okx/rest_public_instruments_SWAP_2022-05-13.json").read_text()
        url = "https://www.okx.com/api/v5/public/instruments?instType=SWAP"
        f.write(orjson.dumps({"recv_ts": 2, "source": "rest", "url": url, "data": body}) + b"\n")
    items = list(read_recording(str(capture)))
    assert [i.data for i in items[: len(frames)]] == list(frames)
    raw = list(read_recording(str(fixture_path("binance/spot_cryptofeed_2021-10-12.http.raw.txt"))))
    assert len(raw) == 4 and all(getattr(i, "url", "").startswith("https://api.binance.com/api/v3/depth") for i in raw)
    cfg = SimConfig(mode="replay", replay_files={"okx_swap": [str(capture)]})
    async with SimServer(cfg) as sim:
        truth = sim.truth()["replay"]["okx_swap"]
        status, _, inst = await http_get(sim.rest_base("okx_swap") + "/api/v5/public/instruments?instType=SWAP")
    assert sum(truth["subjects"].values()) == len(frames) and truth["skipped"] == 1
    assert status == 200 and len(inst["data"]) == 166
    # CLI helpers
    venue, paths = parse_replay_arg(f"okx_spot={FIXTURES}/okx/books_*.jsonl")
    assert venue == "okx_spot" and len(paths) == 3
    assert parse_replay_args([f"bybit_linear={capture}", f"bybit_linear={capture}"]) == {
        "bybit_linear": [str(capture)] * 2}  # fmt: skip
    assert parse_faults_arg("binance_spot:drop_every_n=10,stall_s=1.5,disconnect_abort=true,rest_fail_count=none") == (
        "binance_spot", Faults(drop_every_n=10, stall_s=1.5, disconnect_abort=True))  # fmt: skip
    assert parse_faults_arg("rest_status=429")[0] == "*"
    for bad in ["nope=x", "okx_spot=/no/such/file", "okx_spot"]:
        with pytest.raises(ValueError):
            parse_replay_arg(bad)
    for bad in ["nope:drop_every_n=1", "binance_spot:speed=2", "binance_spot:drop_every_n=1"]:
        with pytest.raises(ValueError):
            parse_faults_arg(bad)
    with pytest.raises(ValueError, match="replay_files"):
        SimConfig(mode="replay")
    with pytest.raises(ValueError, match="unknown venue"):
        SimConfig(venues=["nope"])


# --- derivatives streams (issue 6): funding, mark, open interest, liquidations --------------------------------

DERIV_TYPES = {
    "binance_usdm": [DataType.FUNDING_RATE, DataType.LIQUIDATION],
    "okx_swap": [DataType.FUNDING_RATE, DataType.OPEN_INTEREST, DataType.LIQUIDATION],
    "bybit_linear": [DataType.FUNDING_RATE, DataType.OPEN_INTEREST, DataType.LIQUIDATION],
}


@pytest.mark.parametrize("venue", list(DERIV_TYPES))
async def test_synthetic_derivatives_streams_are_consistent_and_take_faults(venue: str) -> None:
    faults = {venue: Faults(drop_every_n=6)}
    async with SimServer(synthetic([venue], rate=60, faults=faults)) as sim, Client(sim, venue) as c:
        v = c.venue
        for m in v.subscribe_messages(v.wire_streams(v.subscriptions(SYMBOLS, DERIV_TYPES[venue])), 1):
            await c.ws.send(m)
        frames = await c.read(1.5)
        truth = sim.truth()["venues"][venue]["instruments"]
        books = {inst: sim.book(venue, inst) for inst in truth}
    records = [r for f in frames for r in c.parser.parse(f, 0)]
    by_type = defaultdict(list)
    for r in records:
        by_type[r.data_type].append(r)
    for dt in DERIV_TYPES[venue]:
        assert by_type[dt], dt
    for r in by_type[DataType.FUNDING_RATE]:
        if r.funding_rate is not None:
            assert abs(float(r.funding_rate)) <= 0.00375
            assert r.funding_time is not None and r.funding_time > r.ts  # the next funding
        if r.mark_price is not None:  # near the book's mid
            book = books[r.instrument]
            mid = (float(book["bids"][0][0]) + float(book["asks"][0][0])) / 2
            assert abs(float(r.mark_price) / mid - 1) < 0.02
    for inst in truth:
        oi = [float(r.open_interest) for r in by_type[DataType.OPEN_INTEREST] if r.instrument == inst]
        assert all(abs(b / a - 1) < 0.01 for a, b in itertools.pairwise(oi))  # changes slowly
    for r in by_type[DataType.LIQUIDATION]:
        assert r.side in ("buy", "sell") and float(r.price) > 0 and float(r.size) > 0
    # ground truth counts them like any stream, and the drop fault applies to them
    dropped = 0
    for dt in DERIV_TYPES[venue]:
        key = "ticker" if v.channels[dt] == "tickers" else str(dt)
        counts = [per[key] for per in truth.values() if key in per]
        assert sum(x["frames"] for x in counts) > 0, dt
        dropped += sum(x["dropped"] for x in counts)
    assert dropped > 0


async def test_okx_liquidation_orders_subscribe_by_inst_type() -> None:
    async with SimServer(synthetic(["okx_swap", "okx_spot"], rate=80)) as sim:
        async with Client(sim, "okx_swap") as c:
            await c.ws.send('{"op":"subscribe","args":[{"channel":"liquidation-orders","instType":"SWAP"}]}')
            frames = await c.read(1.0)
        async with Client(sim, "okx_spot") as spot:  # no swap liquidations on the spot venue
            await spot.ws.send('{"op":"subscribe","args":[{"channel":"liquidation-orders","instType":"SWAP"}]}')
            (reply,) = await spot.read(0.3)
    acks = [orjson.loads(f) for f in frames if '"event"' in f]
    assert acks == [{"event": "subscribe", "arg": {"channel": "liquidation-orders", "instType": "SWAP"},
                     "connId": acks[0]["connId"]}]  # fmt: skip
    liqs = [r for f in frames if '"event"' not in f for r in c.parser.parse(f, 0)]
    assert {r.instrument for r in liqs} == {"BTC-USDT-SWAP", "ETH-USDT-SWAP"}  # every swap, one stream
    assert orjson.loads(reply)["event"] == "error"
