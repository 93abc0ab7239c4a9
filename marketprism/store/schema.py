"""Table schemas, derived from the record types so that every field of every record is stored.

One table per record type, named in the plural (``trades``, ``depths``, ``book_deltas``, ...). The columns
are the record's own fields in declaration order, then ``key``: the record's natural key (the bus's
``Nats-Msg-Id``), which is what "stored once" is checked against. Types:

* ``ts``/``recv_ts`` (µs since the epoch on the wire) -> microsecond timestamps (DuckDB ``TIMESTAMP``,
  ClickHouse ``DateTime64(6, 'UTC')``): exact, and range filters prune by them;
* prices, sizes and ids stay the venue's decimal strings (``VARCHAR``/``String``): a float would not
  give back "61837.63000000", and checksums are computed over exactly these strings;
* book levels (``Depth.bids``, ``Book.asks``, ...) -> lists of lists of strings, queryable as arrays;
* optional fields are nullable; a field with a default (``aggregate``, ``reason``...) stores the default
  when the bus payload omitted it (payloads are encoded with ``omit_defaults``).

A record type registered later (issue 6's funding rates, ratios...) gets its table from the same rules.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import msgspec
import polars as pl
import pyarrow as pa
import pyarrow.json as pa_json

from marketprism.records import RECORD_TYPES, DataType, Record

TIME_FIELDS = ("ts", "recv_ts")

# Plural table names (DESIGN §5); a type missing here gets "<data_type>s".
TABLE_NAMES: dict[str, str] = {
    "trade": "trades",
    "depth": "depths",
    "book": "books",
    "book_delta": "book_deltas",
    "ticker": "tickers",
    "status": "statuses",
    "funding_rate": "funding_rates",
    "open_interest": "open_interests",
    "liquidation": "liquidations",
    "long_short_ratio": "long_short_ratios",
    "volatility_index": "volatility_indices",
}


class SchemaError(TypeError):
    """A record field whose type has no column mapping."""


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # string | int | float | bool | timestamp | levels
    nullable: bool
    default: Any = None  # stored when the payload omitted the field (None: no default)

    @property
    def polars_type(self) -> Any:
        return _POLARS[self.kind]

    @property
    def arrow_type(self) -> pa.DataType:
        return _ARROW[self.kind]

    def duckdb_type(self) -> str:
        return _DUCKDB[self.kind]

    def clickhouse_type(self) -> str:
        base = _CLICKHOUSE[self.kind]
        # ClickHouse arrays cannot be Nullable; an absent list is stored as [].
        return f"Nullable({base})" if self.nullable and self.kind != "levels" else base


_POLARS: dict[str, Any] = {
    "string": pl.String,
    "int": pl.Int64,
    "float": pl.Float64,
    "bool": pl.Boolean,
    "timestamp": pl.Datetime("us", "UTC"),
    "levels": pl.List(pl.List(pl.String)),
}
_ARROW: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "levels": pa.list_(pa.list_(pa.string())),
}
_DUCKDB = {
    "string": "VARCHAR",
    "int": "BIGINT",
    "float": "DOUBLE",
    "bool": "BOOLEAN",
    "timestamp": "TIMESTAMPTZ",
    "levels": "VARCHAR[][]",
}
_CLICKHOUSE = {
    "string": "String",
    "int": "Int64",
    "float": "Float64",
    "bool": "Bool",
    "timestamp": "DateTime64(6, 'UTC')",
    "levels": "Array(Array(String))",
}
# ClickHouse: low-cardinality columns are dictionary-encoded; the rest get a codec that suits them.
_LOW_CARDINALITY = {"exchange", "market", "symbol", "instrument", "side", "event", "reason"}


def _kind(name: str, t: msgspec.inspect.Type) -> tuple[str, bool]:
    if isinstance(t, msgspec.inspect.UnionType):
        inner = [u for u in t.types if not isinstance(u, msgspec.inspect.NoneType)]
        if len(inner) != 1:
            raise SchemaError(f"field {name!r}: unions other than X | None have no column type")
        kind, _ = _kind(name, inner[0])
        return kind, True
    if name in TIME_FIELDS and isinstance(t, msgspec.inspect.IntType):
        return "timestamp", False
    if isinstance(t, msgspec.inspect.StrType):
        return "string", False
    if isinstance(t, msgspec.inspect.BoolType):
        return "bool", False
    if isinstance(t, msgspec.inspect.IntType):
        return "int", False
    if isinstance(t, msgspec.inspect.FloatType):
        return "float", False
    # Raw level arrays (Depth, BookDelta) and list[tuple[str, str]] (Book): the venue's [price, size, ...].
    if isinstance(t, msgspec.inspect.RawType | msgspec.inspect.ListType):
        return "levels", False
    raise SchemaError(f"field {name!r}: no column type for {type(t).__name__}")


def _default(value: Any) -> Any:
    if value is msgspec.NODEFAULT or value is None:
        return None
    if isinstance(value, msgspec.Raw):
        return msgspec.json.decode(bytes(value))
    return value


@dataclass(frozen=True)
class TableSpec:
    """How one record type is stored."""

    data_type: str
    table: str
    record_type: type[Record]
    columns: tuple[Column, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def polars_schema(self) -> dict[str, Any]:
        # The bus carries µs integers; they become timestamps after the read.
        return {c.name: (pl.Int64 if c.kind == "timestamp" else c.polars_type) for c in self.columns if c.name != "key"}

    def _wire_schema(self) -> pa.Schema:
        # The bus carries µs integers; they become timestamps after the read.
        return pa.schema(
            [(c.name, pa.int64() if c.kind == "timestamp" else c.arrow_type) for c in self.columns if c.name != "key"]
        )

    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.arrow_type, nullable=c.nullable) for c in self.columns])

    def frame(self, payloads: Sequence[bytes], keys: Sequence[str]) -> pl.DataFrame:
        """Bus payloads (JSON, one record each) and their natural keys -> a typed frame, one row per payload.

        Raises ``pyarrow.ArrowInvalid`` (or ``ValueError``) when a payload does not fit the schema; the caller then
        finds the poisoned payloads one by one (``validate``). pyarrow's JSON reader (typed by the schema, unknown
        fields ignored) reads nested level lists 3-4x faster than polars' ndjson reader.
        """
        # A block must hold the longest line whole (a line straddling two blocks is an error, not a poison).
        block = max(1 << 22, 2 * max(map(len, payloads)) + 64)
        table = pa_json.read_json(
            io.BytesIO(b"\n".join(payloads)),
            read_options=pa_json.ReadOptions(block_size=block),
            parse_options=pa_json.ParseOptions(explicit_schema=self._wire_schema(), unexpected_field_behavior="ignore"),
        )
        df = pl.DataFrame(pl.from_arrow(table)).select(self.names[:-1])
        if df.height != len(payloads):
            raise ValueError(f"{self.table}: {len(payloads)} payloads gave {df.height} rows")
        required = [c.name for c in self.columns if not c.nullable and c.default is None and c.name != "key"]
        nulls = df.select(pl.col(required).null_count()).row(0)
        if any(nulls):
            missing = [n for n, k in zip(required, nulls, strict=True) if k]
            raise ValueError(f"{self.table}: required fields missing or of the wrong type: {', '.join(missing)}")
        fills = [
            pl.col(c.name).fill_null(c.default) if c.default is not None else pl.col(c.name)
            for c in self.columns
            if c.name != "key" and c.kind != "timestamp"
        ]
        times = [
            pl.col(c.name).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
            for c in self.columns
            if c.kind == "timestamp"
        ]
        return df.with_columns(*fills, *times, pl.Series("key", keys, dtype=pl.String)).select(self.names)

    def validate(self, payload: bytes) -> Record:
        """Decode one payload strictly as this table's record type (raises ``msgspec.DecodeError``/``ValueError``)."""
        return _decoder(self.record_type).decode(payload)

    def rows_to_records(self, df: pl.DataFrame) -> list[Record]:
        """Stored rows back into records (the inverse of ``frame``): used by tests and exports."""
        out: list[Record] = []
        level_cols = [c.name for c in self.columns if c.kind == "levels"]
        raw_levels = {
            f.name
            for f in msgspec.inspect.type_info(self.record_type).fields  # type: ignore[attr-defined]
            if isinstance(f.type, msgspec.inspect.RawType)
        }
        for row in df.drop("key").iter_rows(named=True):
            for t in TIME_FIELDS:
                row[t] = _epoch_us(row[t])
            for name in level_cols:
                levels = row[name] or []
                row[name] = (
                    msgspec.Raw(msgspec.json.encode(levels)) if name in raw_levels else [tuple(x) for x in levels]
                )
            out.append(msgspec.convert(row, self.record_type, from_attributes=False))
        return out

    # --- DDL --------------------------------------------------------------------------------------------------

    def duckdb_ddl(self) -> str:
        cols = ",\n  ".join(f'"{c.name}" {c.duckdb_type()}{"" if c.nullable else " NOT NULL"}' for c in self.columns)
        return f'CREATE TABLE IF NOT EXISTS "{self.table}" (\n  {cols}\n)'

    def clickhouse_ddl(self, database: str) -> str:
        def col(c: Column) -> str:
            t = c.clickhouse_type()
            if c.name in _LOW_CARDINALITY and c.kind == "string":
                t = f"LowCardinality({t})"
            codec = " CODEC(Delta, ZSTD(1))" if c.kind == "timestamp" else " CODEC(ZSTD(1))"
            return f"`{c.name}` {t}{codec}"

        cols = ",\n  ".join(col(c) for c in self.columns)
        # ReplacingMergeTree on the query pattern plus the natural key: a row stored twice (a replay outside the
        # bus's duplicate window) collapses at merge time, and FINAL reads are exact before it.
        return (
            f"CREATE TABLE IF NOT EXISTS `{database}`.`{self.table}` (\n  {cols}\n)\n"
            "ENGINE = ReplacingMergeTree\n"
            "PARTITION BY toYYYYMM(ts)\n"
            "ORDER BY (exchange, market, symbol, ts, key)\n"
            "SETTINGS non_replicated_deduplication_window = 1000"
        )


def _epoch_us(value: Any) -> int:
    if isinstance(value, int):
        return value
    # datetime with tz -> µs exactly (timedelta arithmetic avoids float rounding)
    from datetime import UTC, datetime

    delta = value - datetime(1970, 1, 1, tzinfo=UTC if value.tzinfo else None)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@cache
def _decoder(record_type: type[Record]) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(record_type)


def spec_for_type(record_type: type[Record]) -> TableSpec:
    info = msgspec.inspect.type_info(record_type)
    fields = info.fields  # type: ignore[attr-defined]
    columns: list[Column] = []
    for f in fields:
        kind, nullable = _kind(f.name, f.type)
        columns.append(Column(f.name, kind, nullable, _default(f.default)))
    columns.append(Column("key", "string", False))
    dt = str(record_type.data_type)
    return TableSpec(dt, TABLE_NAMES.get(dt, f"{dt}s"), record_type, tuple(columns))


def table_spec(data_type: str | DataType) -> TableSpec:
    """The spec of a registered data type; ``KeyError`` names the known ones."""
    record_type = RECORD_TYPES.get(DataType(data_type)) if data_type in DataType._value2member_map_ else None
    if record_type is None:
        raise KeyError(f"no record type {data_type!r}; known: {', '.join(sorted(map(str, RECORD_TYPES)))}")
    return _spec_cached(record_type)


@cache
def _spec_cached(record_type: type[Record]) -> TableSpec:
    return spec_for_type(record_type)


def all_specs() -> list[TableSpec]:
    return [table_spec(dt) for dt in RECORD_TYPES]
