"""Venue registry: one module per exchange, each declaring its venues.

``VENUES`` are the streaming venues (each gets a collector). ``PULLS`` are the scheduled REST pulls of every
exchange, by name (``binance_usdm.top_position``...), including REST-only exchanges (Deribit) that have no collector.
"""

from marketprism.venues.base import Heartbeat, Limits, ParseError, Parser, Subscription, Venue
from marketprism.venues.binance import BINANCE_SPOT, BINANCE_USDM
from marketprism.venues.binance import REST_PULLS as _BINANCE_PULLS
from marketprism.venues.bybit import BYBIT_LINEAR
from marketprism.venues.bybit import REST_PULLS as _BYBIT_PULLS
from marketprism.venues.deribit import REST_PULLS as _DERIBIT_PULLS
from marketprism.venues.okx import OKX_SPOT, OKX_SWAP
from marketprism.venues.okx import REST_PULLS as _OKX_PULLS
from marketprism.venues.pull import RestPull

VENUES: dict[str, Venue] = {v.name: v for v in (BINANCE_SPOT, BINANCE_USDM, OKX_SPOT, OKX_SWAP, BYBIT_LINEAR)}

# REST pulls of every exchange (REST-only ones too: they are not in VENUES, so no collector is started for them).
PULLS: dict[str, RestPull] = {p.name: p for p in (*_BINANCE_PULLS, *_OKX_PULLS, *_BYBIT_PULLS, *_DERIBIT_PULLS)}


def get_venue(name: str) -> Venue:
    try:
        return VENUES[name]
    except KeyError:
        raise ValueError(f"unknown venue {name!r}; known: {', '.join(VENUES)}") from None


def get_pull(name: str) -> RestPull:
    try:
        return PULLS[name]
    except KeyError:
        raise ValueError(f"unknown REST pull {name!r}; known: {', '.join(PULLS)}") from None


__all__ = [
    "PULLS", "VENUES", "Heartbeat", "Limits", "ParseError", "Parser", "RestPull", "Subscription", "Venue", "get_pull",
    "get_venue",
]  # fmt: skip
