"""Compiled kernel of ``marketprism.book.l2`` (``_l2fast.c``); optional, see l2.py."""

from collections.abc import Sequence
from typing import Any

import msgspec

VERSION: int
F_RESPELLED: int
F_FALLBACK: int
F_REFILL: int
F_TRIM: int

def apply_raw(
    size: dict[str, str],
    keys: list[float],
    prices: list[str],
    bound: float,
    sign: float,
    window: int,
    low: int,
    high: int,
    raw: bytes | msgspec.Raw,
    /,
) -> int: ...
def apply_levels(
    size: dict[str, str],
    keys: list[float],
    prices: list[str],
    bound: float,
    sign: float,
    window: int,
    low: int,
    high: int,
    levels: Sequence[Any],
    /,
) -> int: ...
def load_raw(
    sign: float, window: int, raw: bytes | msgspec.Raw, /
) -> tuple[dict[str, str], list[float], list[str], float] | None: ...
def okx_checksum(
    bid_prices: list[str], bid_size: dict[str, str], ask_prices: list[str], ask_size: dict[str, str], n: int, /
) -> int: ...
def crc32(data: bytes, /) -> int: ...
