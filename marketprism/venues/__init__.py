"""Venue registry: one module per exchange, each declaring its venues."""

from marketprism.venues.base import Heartbeat, Limits, ParseError, Parser, Subscription, Venue
from marketprism.venues.binance import BINANCE_SPOT, BINANCE_USDM
from marketprism.venues.bybit import BYBIT_LINEAR
from marketprism.venues.okx import OKX_SPOT, OKX_SWAP

VENUES: dict[str, Venue] = {v.name: v for v in (BINANCE_SPOT, BINANCE_USDM, OKX_SPOT, OKX_SWAP, BYBIT_LINEAR)}


def get_venue(name: str) -> Venue:
    try:
        return VENUES[name]
    except KeyError:
        raise ValueError(f"unknown venue {name!r}; known: {', '.join(VENUES)}") from None


__all__ = ["VENUES", "Heartbeat", "Limits", "ParseError", "Parser", "Subscription", "Venue", "get_venue"]
