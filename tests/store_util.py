"""Helpers shared by the storage tests: hypothesis strategies for every record type, run-until helpers."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from hypothesis import strategies as st

from marketprism.records import RECORD_TYPES, Record
from marketprism.store.schema import TableSpec, table_spec

# Microseconds between 1970 and 2200: inside every backend's timestamp range.
TS = st.integers(min_value=0, max_value=7_258_118_400_000_000)
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
LEVELS = st.lists(st.lists(TEXT, min_size=2, max_size=2), max_size=4)  # Book: [price, size]
RAW_LEVELS = st.lists(st.lists(TEXT, min_size=2, max_size=4), max_size=4)  # venue JSON: OKX has 4 elements
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def _value(kind: str, raw: bool) -> st.SearchStrategy[Any]:
    return {"string": TEXT, "int": INT64, "float": st.floats(allow_nan=False), "bool": st.booleans(),
            "timestamp": TS, "levels": RAW_LEVELS if raw else LEVELS}[kind]  # fmt: skip


@st.composite
def records(draw: st.DrawFn, spec: TableSpec) -> Record:
    """Any valid record of ``spec``'s type: every field drawn over its whole column type."""
    values: dict[str, Any] = {}
    raw = _raw_fields(spec)
    for col in spec.columns:
        if col.name == "key":
            continue
        value = _value(col.kind, col.name in raw)
        values[col.name] = draw(st.none() | value if col.nullable else value)
    return msgspec.convert(_to_wire(spec, values), spec.record_type)


def _raw_fields(spec: TableSpec) -> set[str]:
    fields = msgspec.inspect.type_info(spec.record_type).fields  # type: ignore[attr-defined]
    return {f.name for f in fields if isinstance(f.type, msgspec.inspect.RawType)}


def _to_wire(spec: TableSpec, values: dict[str, Any]) -> dict[str, Any]:
    raw = _raw_fields(spec)
    return {k: (msgspec.Raw(msgspec.json.encode(v)) if k in raw else v) for k, v in values.items()}


def all_type_specs() -> list[TableSpec]:
    return [table_spec(dt) for dt in RECORD_TYPES]


def encoded(record: Record) -> bytes:
    return msgspec.json.encode(record)


async def wait_for(predicate: Any, timeout_s: float, step: float = 0.05) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(step)
    return bool(predicate())
