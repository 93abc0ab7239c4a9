"""The platform's typed configuration: venues, NATS, storage, data quality.

Plain pydantic models, importable without Prefect (the Prefect Blocks in ``blocks/`` subclass them, so a
block and the engine validate with the same rules and the same messages).

Where values come from, highest first:

1. environment variables ``MARKETPRISM_<SECTION>__<FIELD>``, e.g. ``MARKETPRISM_NATS__SERVERS``,
   ``MARKETPRISM_STORAGE__HOT_BACKEND``, ``MARKETPRISM_VENUES__BINANCE_SPOT__SYMBOLS``,
   ``MARKETPRISM_QUALITY__FRESHNESS_S__TRADE``. A double underscore nests; lists are comma-separated;
   dicts are ``key=value,...`` (or one key per variable); booleans are true/false/1/0/yes/no; an empty
   value clears an optional field. Variables without ``__`` (``MARKETPRISM_DATA_DIR``, ...) are not config.
   A ``__`` variable that names no field is an error, so a typo never passes silently.
2. block (or file) values, the ``values`` given to :func:`resolve`;
3. the defaults declared here.

:func:`resolve` returns the effective :class:`PlatformConfig` and the source of every leaf value.
Invalid input raises :class:`ConfigError`, whose message lists ``field.path: problem (got 'value')``.

:func:`migrate_original` converts the original MarketPrism's YAML files into this configuration and
reports what maps where, what is dropped and why.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from marketprism.bus.stream import MarketDataStream
from marketprism.records import DataType, SymbolError, symbol_of
from marketprism.stream.session import SessionConfig
from marketprism.venues import VENUES, Venue

if TYPE_CHECKING:
    from marketprism.runner import CollectorSpec

ENV_PREFIX = "MARKETPRISM_"
MASK = "**********"
DEFAULT_SYMBOLS: tuple[str, ...] = ("BTC-USDT", "ETH-USDT")  # the same as marketprism.runner.DEFAULT_SYMBOLS
SECTIONS = ("venues", "nats", "storage", "quality")
Source = Literal["env", "block", "default"]

_STREAM = MarketDataStream()
_SESSION = SessionConfig()


class ConfigError(ValueError):
    """Invalid configuration. ``problems`` holds ``(field path, problem, shown value)`` triples."""

    def __init__(self, problems: Sequence[tuple[str, str, str | None]], header: str = "invalid MarketPrism config"):
        self.problems = list(problems)
        lines = [f"{path}: {problem}" + (f" (got {shown})" if shown is not None else "") for path, problem, shown in
                 self.problems]  # fmt: skip
        super().__init__(header + ":\n  " + "\n  ".join(lines) if lines else header)


# --- validation helpers ------------------------------------------------------------------------------


def _check_url(value: str | None, schemes: tuple[str, ...]) -> str | None:
    if value is None:
        return None
    value = value.strip()
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.netloc:
        raise ValueError(f"must be a {'/'.join(schemes)} URL with a host, e.g. {schemes[-1]}://host:port")
    return value


def _csv_list(value: Any) -> Any:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


def normalise_symbol(value: str) -> str:
    """``"btc-usdt"`` -> ``"BTC-USDT"``. Config symbols are BASE-QUOTE; venue ids are not accepted here."""
    sym = value.strip().upper()
    parts = sym.split("-")
    if len(parts) != 2 or not all(parts) or not all(p.isalnum() for p in parts):
        raise ValueError(f"{value!r} is not a BASE-QUOTE symbol such as 'BTC-USDT'")
    return sym


def _secret_annotation(annotation: Any) -> bool:
    return annotation is SecretStr or SecretStr in typing.get_args(annotation)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=False)

    @classmethod
    def secret_fields(cls) -> set[str]:
        return {name for name, f in cls.model_fields.items() if _secret_annotation(f.annotation)}


# --- the models ----------------------------------------------------------------------------------------


class VenueConfig(_Model):
    """One streaming venue: what to collect and how its connections behave."""

    venue: str = Field(description=f"venue name, one of {', '.join(VENUES)}")
    enabled: bool = Field(default=True, description="collect this venue")
    symbols: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SYMBOLS), description="normalised BASE-QUOTE symbols, e.g. BTC-USDT"
    )
    data_types: list[DataType] = Field(
        default_factory=list, description="data types to collect (default: every channel the venue has)"
    )
    ws_url: str | None = Field(default=None, description="WebSocket base URL override (ws/wss), e.g. a simulator")
    rest_url: str | None = Field(default=None, description="REST base URL override (http/https)")
    depth_levels: int | None = Field(default=None, gt=0, description="top-N levels in published book snapshots")
    book_interval_ms: int = Field(default=100, gt=0, description="book snapshot / update interval (ms)")
    stall_timeout_s: float = Field(default=_SESSION.stall_timeout_s, gt=0, description="reconnect after silence")
    backoff_initial_s: float = Field(default=_SESSION.backoff_initial_s, gt=0, description="first reconnect delay")
    backoff_max_s: float = Field(default=_SESSION.backoff_max_s, gt=0, description="reconnect delay cap")
    max_connection_age_s: float | None = Field(
        default=None, gt=0, description="rotate connections older than this (default: the venue's own limit)"
    )
    streams_per_connection: int | None = Field(
        default=None, gt=0, description="subscriptions per connection (default: the venue's limit)"
    )

    @model_validator(mode="before")
    @classmethod
    def _default_data_types(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("data_types") is None and data.get("venue") in VENUES:
            data = {**data, "data_types": list(VENUES[data["venue"]].channels)}
        return data

    @field_validator("venue")
    @classmethod
    def _known_venue(cls, value: str) -> str:
        if value not in VENUES:
            raise ValueError(f"unknown venue {value!r}; known: {', '.join(VENUES)}")
        return value

    @field_validator("symbols", mode="before")
    @classmethod
    def _symbols_csv(cls, value: Any) -> Any:
        return _csv_list(value)

    @field_validator("symbols")
    @classmethod
    def _symbols(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must list at least one symbol")
        out: list[str] = []
        for sym in map(normalise_symbol, value):
            if sym not in out:
                out.append(sym)
        return out

    @field_validator("data_types", mode="before")
    @classmethod
    def _data_types_csv(cls, value: Any) -> Any:
        return _csv_list(value)

    @field_validator("data_types")
    @classmethod
    def _data_types(cls, value: list[DataType], info: Any) -> list[DataType]:
        venue = VENUES.get(info.data.get("venue", ""))
        if venue is None:
            return value
        if not value:
            raise ValueError("must list at least one data type")
        missing = [dt.value for dt in value if dt not in venue.channels]
        if missing:
            raise ValueError(
                f"{venue.name} has no channel for {', '.join(map(repr, missing))}; "
                f"it offers {', '.join(dt.value for dt in venue.channels)}"
            )
        return list(dict.fromkeys(value))

    @field_validator("ws_url")
    @classmethod
    def _ws_url(cls, value: str | None) -> str | None:
        return _check_url(value, ("ws", "wss"))

    @field_validator("rest_url")
    @classmethod
    def _rest_url(cls, value: str | None) -> str | None:
        return _check_url(value, ("http", "https"))

    @field_validator("backoff_max_s")
    @classmethod
    def _backoff(cls, value: float, info: Any) -> float:
        initial = info.data.get("backoff_initial_s")
        if initial is not None and value < initial:
            raise ValueError(f"must be >= backoff_initial_s ({initial})")
        return value

    @field_validator("streams_per_connection")
    @classmethod
    def _streams(cls, value: int | None, info: Any) -> int | None:
        venue = VENUES.get(info.data.get("venue", ""))
        if value is not None and venue is not None and value > venue.limits.streams_per_connection:
            raise ValueError(f"{venue.name} allows at most {venue.limits.streams_per_connection} per connection")
        return value

    @property
    def definition(self) -> Venue:
        return VENUES[self.venue]

    def ws_base(self) -> str:
        return self.ws_url or self.definition.ws_url

    def base_rest_url(self) -> str:
        return self.rest_url or self.definition.rest_url

    def to_spec(self) -> CollectorSpec:
        from marketprism.runner import CollectorSpec

        wanted: dict[str, Any] = {
            "venue": self.venue, "symbols": tuple(self.symbols), "data_types": tuple(self.data_types),
            # carried when the runner's spec grows these fields
            "ws_url": self.ws_url, "rest_url": self.rest_url, "depth_levels": self.depth_levels,
            "book_interval_ms": self.book_interval_ms, "streams_per_connection": self.streams_per_connection,
            "session": self.session_config(),
        }  # fmt: skip
        known = {f.name for f in dataclasses.fields(CollectorSpec)}
        return CollectorSpec(**{k: v for k, v in wanted.items() if k in known})

    def session_config(self) -> SessionConfig:
        return dataclasses.replace(
            _SESSION,
            stall_timeout_s=self.stall_timeout_s,
            backoff_initial_s=self.backoff_initial_s,
            backoff_max_s=self.backoff_max_s,
            max_connection_age_s=self.max_connection_age_s,
        )


_NATS_SCHEMES = ("nats", "tls", "ws", "wss")


class NatsConfig(_Model):
    """The bus: servers, credentials and the market-data stream's limits."""

    servers: list[str] = Field(default_factory=list, description="NATS URLs; empty = embedded nats-server")
    user: str | None = Field(default=None, description="user name (with password)")
    password: SecretStr | None = Field(default=None, description="password for user")
    token: SecretStr | None = Field(default=None, description="auth token (instead of user/password)")
    stream_name: str = Field(default=_STREAM.name, description="JetStream stream for md.>")
    max_age_s: float = Field(default=_STREAM.max_age_s, gt=0, description="stream max age (s)")
    max_bytes: int = Field(default=_STREAM.max_bytes, description="stream max bytes (-1 = unlimited)")
    duplicate_window_s: float = Field(default=_STREAM.duplicate_window_s, gt=0, description="Msg-Id dedupe window")

    @field_validator("servers", mode="before")
    @classmethod
    def _servers_csv(cls, value: Any) -> Any:
        return _csv_list(value)

    @field_validator("servers")
    @classmethod
    def _servers(cls, value: list[str]) -> list[str]:
        for url in value:
            parts = urlsplit(url)
            if parts.scheme not in _NATS_SCHEMES or not parts.hostname:
                raise ValueError(f"{url!r} is not a NATS URL ({'/'.join(_NATS_SCHEMES)}://host:port)")
        return value

    @field_validator("password")
    @classmethod
    def _password(cls, value: SecretStr | None, info: Any) -> SecretStr | None:
        if value is not None and not info.data.get("user"):
            raise ValueError("needs nats.user")
        return value

    @field_validator("token")
    @classmethod
    def _token(cls, value: SecretStr | None, info: Any) -> SecretStr | None:
        if value is not None and info.data.get("user"):
            raise ValueError("use either a token or user/password, not both")
        return value

    @field_validator("stream_name")
    @classmethod
    def _stream_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", value):
            raise ValueError("a JetStream stream name: letters, digits, '_' and '-' only")
        return value

    @field_validator("max_bytes")
    @classmethod
    def _max_bytes(cls, value: int) -> int:
        if value <= 0 and value != -1:
            raise ValueError("must be > 0, or -1 for unlimited")
        return value

    @field_validator("duplicate_window_s")
    @classmethod
    def _dup_window(cls, value: float, info: Any) -> float:
        max_age = info.data.get("max_age_s")
        if max_age is not None and value > max_age:
            raise ValueError(f"must be <= max_age_s ({max_age})")
        return value

    def stream(self) -> MarketDataStream:
        return MarketDataStream(
            name=self.stream_name,
            max_age_s=self.max_age_s,
            max_bytes=self.max_bytes,
            duplicate_window_s=self.duplicate_window_s,
        )

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect`` (``servers`` is empty when the bus is embedded)."""
        opts: dict[str, Any] = {"servers": list(self.servers)}
        if self.user:
            opts["user"] = self.user
        if self.password is not None:
            opts["password"] = self.password.get_secret_value()
        if self.token is not None:
            opts["token"] = self.token.get_secret_value()
        return opts


_CLICKHOUSE_SCHEMES = ("clickhouse", "http", "https")


class StorageConfig(_Model):
    """Hot and cold stores."""

    hot_backend: Literal["duckdb", "clickhouse"] = Field(default="duckdb", description="hot store")
    duckdb_path: str = Field(default="data/hot.duckdb", min_length=1, description="DuckDB file (hot_backend duckdb)")
    clickhouse_url: SecretStr | None = Field(
        default=None, description="ClickHouse DSN, http(s)://user:password@host:8123/db; empty = local server"
    )
    cold_backend: Literal["parquet", "clickhouse"] = Field(default="parquet", description="cold store")
    parquet_path: str = Field(default="data/cold", min_length=1, description="Parquet root: any fsspec path")
    cold_clickhouse_url: SecretStr | None = Field(
        default=None, description="ClickHouse DSN of the cold store (cold_backend clickhouse); empty = clickhouse_url"
    )
    hot_retention_days: int = Field(default=7, gt=0, description="days kept hot before moving to cold")
    batch_rows: int = Field(default=100_000, gt=0, description="insert batch: rows (large batches commit faster)")
    batch_seconds: float = Field(default=1.0, gt=0, description="insert batch: max seconds")

    @field_validator("clickhouse_url", "cold_clickhouse_url")
    @classmethod
    def _dsn(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        parts = urlsplit(value.get_secret_value())
        if parts.scheme not in _CLICKHOUSE_SCHEMES or not parts.hostname:
            raise ValueError(f"must be a {'/'.join(_CLICKHOUSE_SCHEMES)} URL with a host")
        return value


def _default_freshness() -> dict[str, float]:
    return {DataType.TRADE.value: 120.0, DataType.DEPTH.value: 30.0, DataType.TICKER.value: 30.0}


class QualityConfig(_Model):
    """Scheduled data-quality checks."""

    enabled: bool = Field(default=True, description="run the data-quality flow")
    schedule_cron: str = Field(default="0 * * * *", description="cron schedule of the quality flow")
    window_minutes: int = Field(default=60, gt=0, description="how much recent data each run checks")
    freshness_s: dict[str, float] = Field(
        default_factory=_default_freshness, description="data_type -> max staleness (s) before data counts as stale"
    )
    data_docs_path: str = Field(default="data/gx", min_length=1, description="where GX Data Docs are written")

    @field_validator("schedule_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        value = " ".join(value.split())
        if len(value.split()) != 5:
            raise ValueError("a 5-field cron expression, e.g. '0 * * * *'")
        try:
            from cronsim import CronSim, CronSimError
        except ImportError:  # pragma: no cover - cronsim ships with Prefect; the field count still checks
            return value
        from datetime import datetime

        try:
            CronSim(value, datetime(2000, 1, 1))
        except CronSimError as exc:
            raise ValueError(f"not a valid cron expression: {exc}") from None
        return value

    @field_validator("freshness_s", mode="before")
    @classmethod
    def _freshness_csv(cls, value: Any) -> Any:
        return _kv_dict(value) if isinstance(value, str) else value

    @field_validator("freshness_s")
    @classmethod
    def _freshness(cls, value: dict[str, float]) -> dict[str, float]:
        known = {dt.value for dt in DataType}
        for key, seconds in value.items():
            if key not in known:
                raise ValueError(f"unknown data type {key!r}; known: {', '.join(sorted(known))}")
            if seconds <= 0:
                raise ValueError(f"{key}: must be > 0 seconds, got {seconds}")
        return value


def _default_venues() -> dict[str, VenueConfig]:
    return {name: VenueConfig(venue=name) for name in VENUES}


class PlatformConfig(_Model):
    """Everything the platform needs: one entry per streaming venue plus bus, storage and quality."""

    venues: dict[str, VenueConfig] = Field(default_factory=_default_venues)
    nats: NatsConfig = Field(default_factory=NatsConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)

    @field_validator("venues", mode="before")
    @classmethod
    def _venue_keys(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        out: dict[str, Any] = {}
        for key, entry in value.items():
            if isinstance(entry, Mapping):
                entry = dict(entry)
                entry.setdefault("venue", key)
                if entry["venue"] != key:
                    raise ValueError(f"venues.{key}.venue is {entry['venue']!r}: an entry's key must be its venue")
            out[key] = entry
        return out

    def enabled_venues(self) -> list[VenueConfig]:
        return [v for v in self.venues.values() if v.enabled]

    def collector_specs(self) -> list[CollectorSpec]:
        return [v.to_spec() for v in self.enabled_venues()]


SECTION_MODELS: dict[str, type[_Model]] = {"nats": NatsConfig, "storage": StorageConfig, "quality": QualityConfig}


# --- leaves, masking ----------------------------------------------------------------------------------


def _jsonable(value: Any, reveal: bool) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value() if reveal else MASK
    if isinstance(value, DataType):
        return value.value
    if isinstance(value, list | tuple):
        return [_jsonable(v, reveal) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v, reveal) for k, v in value.items()}
    return value


def _model_leaves(prefix: str, model: BaseModel, reveal: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        path = f"{prefix}.{name}"
        if isinstance(value, dict):
            out.update({f"{path}.{k}": _jsonable(v, reveal) for k, v in value.items()})
        else:
            out[path] = _jsonable(value, reveal)
    return out


def leaves(config: PlatformConfig, *, reveal: bool = False) -> dict[str, Any]:
    """Every leaf value by dotted path (``nats.servers``, ``venues.okx_spot.symbols``); secrets masked."""
    out: dict[str, Any] = {}
    for name, venue in config.venues.items():
        out.update(_model_leaves(f"venues.{name}", venue, reveal))
    for section in SECTION_MODELS:
        out.update(_model_leaves(section, getattr(config, section), reveal))
    return out


def to_dict(config: PlatformConfig, *, include_secrets: bool = False) -> dict[str, Any]:
    """The config as plain data. Secrets are left out unless ``include_secrets`` (never masked: a mask
    written to a file would be read back as the secret)."""
    data = config.model_dump(mode="python")
    out = _jsonable(data, reveal=True)
    if not include_secrets:
        for section, model in SECTION_MODELS.items():
            for name in model.secret_fields():
                out[section].pop(name, None)
    return typing.cast(dict[str, Any], out)


def masked_dict(config: PlatformConfig) -> dict[str, Any]:
    return typing.cast(dict[str, Any], _jsonable(config.model_dump(mode="python"), reveal=False))


def secret_paths(config: PlatformConfig) -> list[str]:
    """Paths of secrets that are set (so a caller can say which ones a file left out)."""
    return [f"{s}.{n}" for s, m in SECTION_MODELS.items() for n in sorted(m.secret_fields())
            if getattr(getattr(config, s), n) is not None]  # fmt: skip


def env_name(path: str) -> str:
    """``nats.servers`` -> ``MARKETPRISM_NATS__SERVERS``."""
    return ENV_PREFIX + "__".join(path.split(".")).upper()


# --- resolution ---------------------------------------------------------------------------------------


def _kv_dict(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected key=value pairs separated by commas, got {item!r}")
        out[key.strip().lower()] = value.strip()
    return out


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the non-None type, optional?) of an annotation such as ``int | None``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return (args[0] if len(args) == 1 else annotation), len(args) < len(typing.get_args(annotation))
    return annotation, False


def _env_value(annotation: Any, raw: str) -> Any:
    inner, optional = _unwrap(annotation)
    origin = typing.get_origin(inner)
    if origin is list:
        return _csv_list(raw)
    if origin is dict:
        return _kv_dict(raw)
    if optional and raw.strip() == "":
        return None
    return raw.strip() if inner is not SecretStr else raw


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _env_overrides(env: Mapping[str, str]) -> list[tuple[str, tuple[str, ...], Any]]:
    """``(variable, path, value)`` for every ``MARKETPRISM_A__B`` variable; unknown ones raise ConfigError."""
    problems: list[tuple[str, str, str | None]] = []
    out: list[tuple[str, tuple[str, ...], Any]] = []
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX) or "__" not in var:
            continue
        parts = [p.lower() for p in var[len(ENV_PREFIX) :].split("__")]
        raw = env[var]
        section, rest = parts[0], parts[1:]
        if section not in SECTIONS:
            problems.append((var, f"unknown config section {section!r}{_suggest(section, SECTIONS)}; "
                                  f"sections: {', '.join(SECTIONS)}", None))  # fmt: skip
            continue
        model: type[_Model]
        head: tuple[str, ...]
        if section == "venues":
            if len(rest) < 2:
                problems.append((var, "name a venue and a field: MARKETPRISM_VENUES__<VENUE>__<FIELD>", None))
                continue
            if rest[0] not in VENUES:
                problems.append((var, f"unknown venue {rest[0]!r}{_suggest(rest[0], VENUES)}; "
                                      f"known: {', '.join(VENUES)}", None))  # fmt: skip
                continue
            model, head, fields = VenueConfig, (section, rest[0]), rest[1:]
        else:
            model, head, fields = SECTION_MODELS[section], (section,), rest
        if not fields or not fields[0]:
            problems.append((var, f"name a field of {section}", None))
            continue
        name = fields[0]
        info = model.model_fields.get(name)
        if info is None or (section == "venues" and name == "venue"):
            known = [f for f in model.model_fields if f != "venue"]
            problems.append((var, f"{model.__name__} has no field {name!r}{_suggest(name, known)}", None))
            continue
        is_dict = typing.get_origin(_unwrap(info.annotation)[0]) is dict
        if len(fields) == 2 and is_dict and fields[1]:
            out.append((var, (*head, name, fields[1]), raw.strip()))
        elif len(fields) == 1:
            try:
                out.append((var, (*head, name), _env_value(info.annotation, raw)))
            except ValueError as exc:
                shown = MASK if _secret_annotation(info.annotation) else repr(raw)
                problems.append((f"{'.'.join((*head, name))} [{var}]", str(exc), shown))
        else:
            problems.append((var, f"too many '__' parts for field {name!r}", None))
    if problems:
        raise ConfigError(problems, header="invalid MARKETPRISM_ environment variable(s)")
    return out


def _set(tree: dict[str, Any], path: Sequence[str], value: Any) -> None:
    node = tree
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {} if child is None else dict(child) if isinstance(child, Mapping) else {}
            node[key] = child
        node = child
    node[path[-1]] = value


def _seed_dict(tree: dict[str, Any], path: Sequence[str]) -> None:
    """Before one key of a dict field is set, give the field its current value (else its default)."""
    node: Any = tree
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            break
        node = node[key]
    else:
        return
    model: type[BaseModel] = VenueConfig if path[0] == "venues" else SECTION_MODELS[path[0]]
    default = model.model_fields[path[-1]].get_default(call_default_factory=True)
    _set(tree, path, dict(default or {}))


def _mark_values(values: Mapping[str, Any], marks: dict[str, Source]) -> None:
    for section, body in values.items():
        if section == "venues" and isinstance(body, Mapping):
            for name, entry in body.items():
                if isinstance(entry, Mapping):
                    for key in entry:
                        marks[f"venues.{name}.{key}"] = "block"
        elif isinstance(body, Mapping):
            for key in body:
                marks[f"{section}.{key}"] = "block"
        else:
            marks[section] = "block"


def _plain(values: Mapping[str, Any]) -> dict[str, Any]:
    """A mutable deep copy of the values (models turned into dicts, secrets kept as SecretStr)."""

    def conv(v: Any) -> Any:
        if isinstance(v, BaseModel):
            return {k: conv(getattr(v, k)) for k in type(v).model_fields}
        if isinstance(v, Mapping):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [conv(x) for x in v]
        return copy.copy(v)

    return typing.cast(dict[str, Any], conv(values))


def _is_secret_path(loc: Sequence[Any]) -> bool:
    names = [p for p in loc if isinstance(p, str)]
    secret = {n for m in SECTION_MODELS.values() for n in m.secret_fields()}
    return bool(names) and names[-1] in secret


def _format_loc(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def config_error(exc: ValidationError, env_vars: Mapping[str, str] | None = None, prefix: str = "") -> ConfigError:
    """Turn pydantic's error into ``field.path: problem (got 'value')`` lines (secrets never echoed)."""
    problems: list[tuple[str, str, str | None]] = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        path = prefix + _format_loc(loc) if loc else (prefix.rstrip(".") or "config")
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown field{_suggest(str(loc[-1]), _siblings(loc))}"
        var = next((v for p, v in (env_vars or {}).items()
                    if path == p or path.startswith(p + "[") or p.startswith(path + ".")), None)  # fmt: skip
        if var:
            path = f"{path} [{var}]"
        shown = MASK if _is_secret_path(loc) and err.get("input") is not None else repr(err.get("input"))
        problems.append((path, msg, shown))
    return ConfigError(problems)


def _siblings(loc: Sequence[Any]) -> list[str]:
    if not loc:
        return []
    if loc[0] == "venues":
        return list(VenueConfig.model_fields)
    if len(loc) == 1:
        return list(SECTIONS)
    model = SECTION_MODELS.get(str(loc[0]))
    return list(model.model_fields) if model else []


def resolve(values: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
            ) -> tuple[PlatformConfig, dict[str, str]]:  # fmt: skip
    """The effective config from ``values`` (blocks or a file) under ``env`` (default: ``os.environ``).

    Returns the config and ``{leaf path: "env" | "block" | "default"}`` for every leaf of it.
    ``values`` without a ``venues`` key means every venue with its defaults.
    """
    env = os.environ if env is None else env
    values = {k: v for k, v in _plain(values or {}).items() if v is not None}  # an empty YAML section: absent
    unknown = [k for k in values if k not in SECTIONS]
    if unknown:
        raise ConfigError([(k, f"unknown section{_suggest(k, SECTIONS)}; sections: {', '.join(SECTIONS)}", None)
                           for k in unknown])  # fmt: skip
    marks: dict[str, Source] = {}
    _mark_values(values, marks)
    tree = values
    if "venues" not in tree:
        tree["venues"] = {name: {} for name in VENUES}
    mismatched = [(f"venues.{k}.venue", "an entry's key must be its venue name", repr(e["venue"]))
                  for k, e in tree["venues"].items() if isinstance(e, Mapping) and e.get("venue", k) != k]  # fmt: skip
    if mismatched:
        raise ConfigError(mismatched)
    env_paths: dict[str, str] = {}
    for var, path, value in _env_overrides(env):
        if (path[0] != "venues" and len(path) == 3) or len(path) == 4:  # one key of a dict field
            _seed_dict(tree, path[:-1])
        _set(tree, path, value)
        dotted = ".".join(path)
        marks[dotted] = "env"
        env_paths[dotted] = var
        for key in [k for k in marks if k.startswith(dotted + ".")]:
            del marks[key]  # a whole dict replaced by env: its keys come from env too
    try:
        config = PlatformConfig.model_validate(tree)
    except ValidationError as exc:
        raise config_error(exc, env_paths) from None
    sources: dict[str, str] = {}
    for leaf in leaves(config):
        probe = leaf
        while probe and probe not in marks:
            probe = probe.rpartition(".")[0]
        sources[leaf] = marks.get(probe, "default")
    return config, sources


# --- YAML ---------------------------------------------------------------------------------------------


def to_yaml(config: PlatformConfig, *, include_secrets: bool = False) -> str:
    """This project's YAML (the format ``marketprism config import`` reads). Secrets only if asked."""
    header = "# MarketPrism config: `marketprism config import FILE` writes it to Prefect blocks.\n"
    left_out = [] if include_secrets else secret_paths(config)
    if left_out:
        header += "".join(f"# secret {p} left out: set {env_name(p)} or write with include_secrets\n"
                          for p in left_out)  # fmt: skip
    body = yaml.safe_dump(to_dict(config, include_secrets=include_secrets), sort_keys=False, allow_unicode=True)
    return header + body


def yaml_values(text: str, source: str = "YAML") -> dict[str, Any]:
    """The raw mapping of a config YAML document (validated as a mapping of known sections only)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([(source, f"not valid YAML: {exc}", None)]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([(source, "must be a mapping of sections", repr(type(data).__name__))])
    return data


def from_yaml(text: str) -> PlatformConfig:
    """Validate a config YAML document (no environment applied)."""
    config, _ = resolve(yaml_values(text), env={})
    return config


# --- migration from the original MarketPrism --------------------------------------------------------


@dataclasses.dataclass
class MigrationReport:
    """What the migration did: ``maps`` (source key -> target field), ``dropped`` (with why), ``warnings``."""

    files: list[str] = dataclasses.field(default_factory=list)
    maps: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)  # (source, target, note)
    dropped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (source, reason)
    warnings: list[str] = dataclasses.field(default_factory=list)

    def map(self, source: str, target: str, note: str = "") -> None:
        self.maps.append((source, target, note))

    def drop(self, source: str, reason: str) -> None:
        self.dropped.append((source, reason))

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "maps": [{"source": s, "target": t, "note": n} for s, t, n in self.maps],
            "dropped": [{"source": s, "reason": r} for s, r in self.dropped],
            "warnings": self.warnings,
        }


# original exchange + market type -> our venue
_VENUE_MAP = {
    ("binance", "spot"): "binance_spot",
    ("binance", "perpetual"): "binance_usdm",
    ("okx", "spot"): "okx_spot",
    ("okx", "perpetual"): "okx_swap",
    ("bybit", "perpetual"): "bybit_linear",
}
_PERP_ALIASES = {"perpetual", "swap", "derivatives", "linear", "usdm", "futures_perpetual"}
# original data type -> our DataType value (whether we collect it is checked against DataType and the venue)
_TYPE_MAP = {"orderbook": "depth", "trade": "trade", "ticker": "ticker", "funding_rate": "funding_rate",
             "open_interest": "open_interest", "liquidation": "liquidation", "lsr_top_position": "long_short_ratio",
             "lsr_all_account": "long_short_ratio", "volatility_index": "volatility_index"}  # fmt: skip

_ORDERBOOK_DROPS = {
    "depth_limit": "the local book keeps every level the venue streams; the published top-N is depth_levels",
    "method": "book sync is fixed per venue (depth stream + REST or venue snapshots); no REST-polling mode",
    "snapshot_interval": "no REST-polling book mode: books are kept from the depth stream",
    "snapshot_depth": "snapshot depth is chosen by the order-book processor per venue",
    "request_timeout": "REST timeouts are set by the engine",
    "ws_api_url": "snapshots come over REST, not the Binance WebSocket API",
    "rest_base": "use rest_url",
    "validation_enabled": "sequence and checksum validation is always on",
    "buffer_max_size": "internal buffers are bounded by the engine, not per venue",
    "buffer_timeout": "internal buffers are bounded by the engine, not per venue",
    "internal_queue_maxsize": "internal queues are bounded by the engine, not per venue",
    "publish_queue_maxsize": "publishing is async with bounded in-flight acks, not a drop-oldest queue",
}
_COLLECTOR_TOP_DROPS = {
    "system": "logging, metrics and environment come from the CLI, Prefect and prometheus-client",
    "monitoring": "metrics and health are served by the platform's own endpoints (prometheus-client)",
    "error_handling": "one error taxonomy decides retry vs stop; reconnects use capped backoff per venue",
    "data_types": "each venue's data_types decides what is streamed; REST pulls (funding, open interest, "
                  "ratios, DVOL) become scheduled flows, not configured here yet",
    "trading_strategies": "no strategy profiles: depth and intervals are set per venue",
    "logging": "log sampling has no equivalent",
    "clickhouse": "the collector does not write ClickHouse; storage settings come from hot_storage_config.yaml",
    "storage": "collector-side buffering has no equivalent; the storage writer batches by storage.batch_rows/"
               "batch_seconds",
}  # fmt: skip
_SERVICE_TOP_DROPS = {
    "http_port": "service ports have no equivalent: flows run under Prefect",
    "metrics_port": "one metrics endpoint per host, set by the platform",
    "logging": "logging is configured by the CLI and Prefect",
    "monitoring": "health and metrics are served by the platform",
    "performance": "transfer concurrency is managed by the hot->cold flow",
    "security": "checksums are always verified; TLS is part of the DSN",
    "subscriptions": "the storage writer stores every data type on the bus",
    "replication": "hot->cold is a scheduled flow moving whole partitions older than storage.hot_retention_days, "
                   "verified (row count + content hash) before deleting from hot",
}  # fmt: skip

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def _expand(node: Any, env: Mapping[str, str], used: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: _expand(v, env, used) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand(v, env, used) for v in node]
    if isinstance(node, str) and "${" in node:

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2) or ""
            if name in env:
                used[name] = "environment"
                return env[name]
            secret = any(w in name.upper() for w in ("PWD", "PASS", "SECRET", "TOKEN", "KEY"))
            used[name] = "default" if secret else f"default {default!r}"
            return default

        text = _VAR.sub(sub, node)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            return text
        return value if value is None or isinstance(value, int | float | bool) else text
    return node


def _files(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    items = [paths] if isinstance(paths, str | Path) else list(paths)
    out: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            out.extend(sorted(p for p in item.iterdir() if p.suffix in (".yaml", ".yml")))
        elif item.is_file():
            out.append(item)
        else:
            raise ConfigError([(str(item), "no such file or directory", None)], header="cannot migrate")
    return out


def _norm_symbols(symbols: Any, src: str, report: MigrationReport) -> list[str]:
    out: list[str] = []
    for raw in symbols or []:
        try:
            sym = symbol_of(str(raw))
        except SymbolError:
            report.drop(f"{src}[{raw}]", "cannot be read as BASE-QUOTE")
            continue
        if sym != str(raw):
            report.map(f"{src}[{raw}]", sym, "normalised to BASE-QUOTE")
        if sym not in out:
            out.append(sym)
    return out


def _venue_for(key: str, body: Mapping[str, Any]) -> tuple[str | None, str]:
    exchange = str(body.get("exchange") or body.get("name") or key).lower()
    base = next((b for b in ("binance", "okx", "bybit", "deribit") if exchange.startswith(b)), exchange)
    market = str(body.get("market_type") or "").lower()
    if market in _PERP_ALIASES or (not market and exchange.endswith(("derivatives", "perpetual", "swap"))):
        market = "perpetual"
    venue = _VENUE_MAP.get((base, market))
    if venue is not None:
        return venue, ""
    if base == "deribit":
        return None, "deribit has no streaming venue yet (its DVOL is a REST pull, planned as a scheduled flow)"
    return None, f"no streaming venue for exchange {exchange!r} market_type {market!r}"


def _strip_path(url: str, venue: Venue) -> str:
    url = url.rstrip("/")
    return url[: -len(venue.ws_path)] if venue.ws_path and url.endswith(venue.ws_path) else url


_WS_DROPS = {
    "ping_interval": "heartbeats follow each venue's protocol, declared in marketprism/venues/",
    "ping_timeout": "heartbeats follow each venue's protocol; silence is caught by stall_timeout_s",
    "max_retries": "collectors reconnect forever with capped exponential backoff (x2, full jitter)",
    "retry_delay": "reconnect delays are backoff_initial_s / backoff_max_s",
    "auto_reconnect": "collectors always reconnect",
    "max_reconnect_attempts": "collectors reconnect forever",
    "backoff_multiplier": "backoff doubles, with full jitter (fixed)",
    "connection_timeout": "the connection age limit is max_connection_age_s (default: the venue's own)",
    "dual_connection_enabled": "rotation always overlaps the old and the new connection",
    "max_size": "the frame size limit is set by the engine",
    "data_buffer_size": "no per-connection buffer knob",
    "reconnect_delay": "superseded by stability.reconnection.initial_delay",
    "max_reconnect_delay": "superseded by stability.reconnection.max_delay",
}
_STABILITY_DROPS = {
    "heartbeat": "heartbeats follow each venue's protocol; silence is caught by stall_timeout_s",
    "memory_management": "books are bounded by the venue's depth; no state eviction knobs",
    "error_recovery": "books resync one symbol on a sequence or checksum gap, always; no thresholds",
    "performance_monitoring": "prometheus metrics cover latency and throughput",
    "logging": "logging is configured by the CLI and Prefect",
}


def _migrate_session(name: str, data: Mapping[str, Any], report: MigrationReport) -> tuple[dict[str, Any], Any]:
    """Reconnect and watchdog settings shared by every venue, plus the proactive rotation age."""
    session: dict[str, Any] = {}
    ws = ((data.get("networking") or {}).get("websocket")) or {}
    stability = ws.get("stability") or {}
    reconnection = stability.get("reconnection") or {}
    src = f"{name}:networking.websocket"
    consumed = {"stability", "timeout", "proactive_reconnect_threshold", "proactive_reconnect_enabled"}
    for ours, (new_key, old_key) in {"backoff_initial_s": ("initial_delay", "reconnect_delay"),
                                     "backoff_max_s": ("max_delay", "max_reconnect_delay")}.items():  # fmt: skip
        if new_key in reconnection:
            session[ours] = float(reconnection[new_key])
            report.map(f"{src}.stability.reconnection.{new_key}", f"venues.*.{ours}")
            if old_key in ws and float(ws[old_key]) != session[ours]:
                report.warn(f"{src}.{old_key} ({ws[old_key]}) conflicts with stability.reconnection.{new_key} "
                            f"({reconnection[new_key]}); kept the latter")  # fmt: skip
        elif old_key in ws:
            session[ours] = float(ws[old_key])
            consumed.add(old_key)
            report.map(f"{src}.{old_key}", f"venues.*.{ours}")
    if "timeout" in ws:
        session["stall_timeout_s"] = float(ws["timeout"])
        report.map(f"{src}.timeout", "venues.*.stall_timeout_s", "receive timeout -> stall watchdog")
    age = ws.get("proactive_reconnect_threshold") if ws.get("proactive_reconnect_enabled", True) else None
    if "proactive_reconnect_enabled" in ws and not ws["proactive_reconnect_enabled"]:
        report.drop(f"{src}.proactive_reconnect_enabled", "connections are always rotated before the venue's cut")
    for key in ws:
        if key not in consumed:
            report.drop(f"{src}.{key}", _WS_DROPS.get(key, "no equivalent in this project"))
    for key in reconnection:
        if key not in ("initial_delay", "max_delay"):
            report.drop(f"{src}.stability.reconnection.{key}",
                        _WS_DROPS.get(key, "collectors reconnect forever with capped backoff; no knob"))  # fmt: skip
    for key in stability:
        if key != "reconnection":
            report.drop(f"{src}.stability.{key}", _STABILITY_DROPS.get(key, "no equivalent in this project"))
    return session, age


def _migrate_collector(name: str, data: Mapping[str, Any], out: dict[str, Any], report: MigrationReport) -> None:
    venues: dict[str, dict[str, Any]] = out.setdefault("venues", {})
    session, age = _migrate_session(name, data, report)
    src_ws = f"{name}:networking.websocket"
    for key in data.get("networking") or {}:
        if key != "websocket":
            report.drop(
                f"{name}:networking.{key}",
                {"http": "REST client limits are set per venue by the engine", "proxy": "no proxy support yet"}.get(
                    key, "no equivalent"
                ),
            )
    for key, body in (data.get("exchanges") or {}).items():
        src = f"{name}:exchanges.{key}"
        if not isinstance(body, Mapping):
            report.drop(src, "not a mapping")
            continue
        venue_name, why = _venue_for(key, body)
        if venue_name is None:
            report.drop(src, why)
            continue
        venue = VENUES[venue_name]
        report.map(f"{src} (exchange {body.get('exchange')!r}, market_type {body.get('market_type')!r})",
                   f"venues.{venue_name}")  # fmt: skip
        entry: dict[str, Any] = {"enabled": bool(body.get("enabled", True))}
        if "enabled" in body:
            report.map(f"{src}.enabled", f"venues.{venue_name}.enabled")
        symbols = _norm_symbols(body.get("symbols"), f"{src}.symbols", report)
        if symbols:
            entry["symbols"] = symbols
            report.map(f"{src}.symbols", f"venues.{venue_name}.symbols")
        types_: list[str] = []
        for raw in body.get("data_types") or []:
            ours = _TYPE_MAP.get(str(raw))
            tsrc = f"{src}.data_types[{raw}]"
            if ours is None:
                report.drop(tsrc, "unknown data type in the original")
            elif ours not in {d.value for d in DataType}:
                report.drop(tsrc, f"this project does not collect {ours} yet")
            elif DataType(ours) not in venue.channels:
                report.drop(tsrc, f"{venue_name} has no streaming channel for {ours}")
            else:
                if ours not in types_:
                    types_.append(ours)
                note = "raw L2 deltas; books are built by the order-book processor" if raw == "orderbook" else ""
                report.map(tsrc, f"venues.{venue_name}.data_types[{ours}]", note)
        if not types_:
            report.drop(src, f"none of its data types is streamed by {venue_name}")
            continue
        entry["data_types"] = types_
        api = body.get("api") or {}
        for okey, ours_key, default in (("ws_url", "ws_url", venue.ws_url), ("base_url", "rest_url", venue.rest_url)):
            if okey not in api:
                continue
            url = _strip_path(str(api[okey]), venue) if okey == "ws_url" else str(api[okey]).rstrip("/")
            if url == default.rstrip("/"):
                report.map(f"{src}.api.{okey}", f"venues.{venue_name}.{ours_key}", "same as the default; not set")
            else:
                entry[ours_key] = url
                report.map(f"{src}.api.{okey}", f"venues.{venue_name}.{ours_key}")
                report.warn(f"{src}.api.{okey} {url!r} differs from {venue_name}'s default {default!r}: kept as an "
                            "override")  # fmt: skip
        book = body.get("orderbook") or {}
        for okey, value in book.items():
            bsrc = f"{src}.orderbook.{okey}"
            if okey == "nats_publish_depth":
                entry["depth_levels"] = int(value)
                report.map(bsrc, f"venues.{venue_name}.depth_levels")
            elif okey == "update_frequency":
                entry["book_interval_ms"] = int(value)
                report.map(bsrc, f"venues.{venue_name}.book_interval_ms")
            elif okey == "publish_interval":
                ms = round(float(value) * 1000)
                if entry.get("book_interval_ms", ms) != ms:
                    report.warn(f"{bsrc} ({ms} ms) conflicts with update_frequency; kept update_frequency")
                    report.drop(bsrc, "conflicts with update_frequency")
                else:
                    entry["book_interval_ms"] = ms
                    report.map(bsrc, f"venues.{venue_name}.book_interval_ms", "seconds -> ms")
            else:
                report.drop(bsrc, _ORDERBOOK_DROPS.get(okey, "no equivalent in this project"))
        for okey in body:
            if okey not in {"name", "exchange", "market_type", "enabled", "symbols", "data_types", "api", "orderbook"}:
                report.drop(f"{src}.{okey}", "no equivalent for a streaming venue")
        entry.update(session)
        if age and venue.limits.max_connection_age_s:
            entry["max_connection_age_s"] = float(age)
            report.map(f"{src_ws}.proactive_reconnect_threshold", f"venues.{venue_name}.max_connection_age_s",
                       "rotation before the venue's 24 h cut")  # fmt: skip
        if venue_name in venues:
            report.warn(f"{src} maps to {venue_name} again: merged symbols and data types")
            old = venues[venue_name]
            entry["symbols"] = list(dict.fromkeys(old.get("symbols", []) + entry.get("symbols", [])))
            entry["data_types"] = list(dict.fromkeys(old.get("data_types", []) + entry["data_types"]))
        venues[venue_name] = entry
    nats = data.get("nats") or {}
    if nats:
        _migrate_nats(f"{name}:nats", nats, out, report)
        js = ((nats.get("jetstream") or {}).get("streams")) or {}
        for sname, stream in js.items():
            _migrate_stream(f"{name}:nats.jetstream.streams.{sname}", stream, out, report)
    quality = data.get("data_quality") or {}
    validation = quality.get("validation") or {}
    if "enabled" in validation:
        out.setdefault("quality", {})["enabled"] = bool(validation["enabled"])
        report.map(f"{name}:data_quality.validation.enabled", "quality.enabled")
    if quality:
        report.drop(f"{name}:data_quality (thresholds, cleaning, dedup)",
                    "quality runs as Great Expectations suites (quality.*); dedup is JetStream's Msg-Id; "
                    "records are never cleaned or altered")  # fmt: skip
    for key in data:
        if key in _COLLECTOR_TOP_DROPS:
            report.drop(f"{name}:{key}", _COLLECTOR_TOP_DROPS[key])
        elif key not in {"exchanges", "nats", "networking", "data_quality"}:
            report.drop(f"{name}:{key}", "no equivalent in this project")


def _migrate_nats(src: str, nats: Mapping[str, Any], out: dict[str, Any], report: MigrationReport) -> None:
    target = out.setdefault("nats", {})
    servers = [str(s) for s in nats.get("servers") or []]
    if servers:
        if "servers" in target and target["servers"] != servers:
            report.warn(f"{src}.servers {servers} differ from an earlier file's {target['servers']}; kept the first")
        else:
            target["servers"] = servers
            report.map(f"{src}.servers", "nats.servers", "leave empty to run the embedded nats-server instead")
    for key in nats:
        if key == "servers":
            continue
        reason = {
            "enabled": "the bus is always on",
            "client_name": "clients name themselves per process",
            "max_reconnect_attempts": "clients reconnect forever",
            "reconnect_time_wait": "reconnect timing is set by the engine",
            "streams": "subjects are fixed: md.<data_type>.<exchange>.<market>.<symbol>",
            "publish": "publishing is async with bounded in-flight acks; naming/compat modes have no equivalent",
            "jetstream": "see the stream mapping",
        }.get(key, "no equivalent in this project")
        if key != "jetstream":
            report.drop(f"{src}.{key}", reason)


def _migrate_stream(src: str, stream: Mapping[str, Any], out: dict[str, Any], report: MigrationReport) -> None:
    target = out.setdefault("nats", {})
    fields = {"name": ("stream_name", str), "max_age": ("max_age_s", float), "max_bytes": ("max_bytes", int),
              "duplicate_window": ("duplicate_window_s", float)}  # fmt: skip
    for key, value in stream.items():
        if key in fields:
            ours, conv = fields[key]
            new = conv(value)
            if ours in target and target[ours] != new:
                report.warn(f"{src}.{key} = {value!r} replaces {target[ours]!r} from an earlier file")
            target[ours] = new
            report.map(f"{src}.{key}", f"nats.{ours}")
        elif key == "subjects":
            report.drop(f"{src}.subjects", "one stream over md.> carries every data type, order books and trades "
                                           "included (the original kept those on non-durable core NATS)")  # fmt: skip
        elif key in ("storage", "retention", "discard"):
            report.drop(f"{src}.{key}", "fixed here: file storage, limits retention, discard old")
        elif key in ("replicas", "num_replicas"):
            report.drop(f"{src}.{key}", "one replica (single server) is assumed; not configurable yet")
        elif key == "max_msgs":
            report.drop(f"{src}.{key}", "the stream is limited by max_age_s and max_bytes only")
        elif key == "max_consumers":
            report.drop(f"{src}.{key}", "no consumer limit is set")
        else:
            report.drop(f"{src}.{key}", "no equivalent in this project")


def _dsn(ch: Mapping[str, Any], http_port: Any) -> str:
    user = quote(str(ch.get("clickhouse_user") or "default"), safe="")
    password = str(ch.get("clickhouse_password") or "")
    auth = f"{user}:{quote(password, safe='')}@" if password else f"{user}@"
    host = ch.get("clickhouse_host") or "localhost"
    return f"http://{auth}{host}:{http_port}/{ch.get('clickhouse_database') or 'default'}"


_CH_KEYS = ("clickhouse_host", "clickhouse_http_port", "clickhouse_user", "clickhouse_password", "clickhouse_database")


def _migrate_clickhouse(src: str, ch: Mapping[str, Any], report: MigrationReport, target: str) -> str:
    port = ch.get("clickhouse_http_port") or 8123
    for key in _CH_KEYS:
        if key in ch:
            report.map(f"{src}.{key}", target, "part of the DSN")
    if "clickhouse_http_port" not in ch:
        report.warn(f"{src} names no HTTP port; assumed 8123 (clickhouse-connect speaks HTTP)")
    if "clickhouse_tcp_port" in ch:
        report.drop(f"{src}.clickhouse_tcp_port", "clickhouse-connect uses the HTTP interface, not the native port")
    return _dsn(ch, port)


def _migrate_hot(name: str, data: Mapping[str, Any], out: dict[str, Any], report: MigrationReport) -> None:
    storage = out.setdefault("storage", {})
    hot = data.get("hot_storage") or {}
    if hot:
        storage["hot_backend"] = "clickhouse"
        report.map(f"{name}:hot_storage", "storage.hot_backend", "'clickhouse'")
        storage["clickhouse_url"] = _migrate_clickhouse(f"{name}:hot_storage", hot, report, "storage.clickhouse_url")
        if "retention_days" in hot:
            storage["hot_retention_days"] = int(hot["retention_days"])
            report.map(f"{name}:hot_storage.retention_days", "storage.hot_retention_days")
        for key in hot:
            if key in (*_CH_KEYS, "clickhouse_tcp_port", "retention_days"):
                continue
            reason = {
                "batch_size": "superseded by batch.max_batch_size (the original's unified batch settings)",
                "flush_interval": "superseded by batch.flush_interval",
                "connection_pool": "clickhouse-connect manages its HTTP pool",
                "performance": "compression and insert settings are chosen by the store",
                "tables": "tables are created from the project's own schema (one table per record type)",
            }.get(key, "no equivalent in this project")
            report.drop(f"{name}:hot_storage.{key}", reason)
    batch = data.get("batch") or {}
    for key, value in batch.items():
        if key == "max_batch_size":
            storage["batch_rows"] = int(value)
            report.map(f"{name}:batch.max_batch_size", "storage.batch_rows")
        elif key == "flush_interval":
            storage["batch_seconds"] = float(value)
            report.map(f"{name}:batch.flush_interval", "storage.batch_seconds")
        else:
            report.drop(f"{name}:batch.{key}", "one batch policy (rows or seconds) serves every data type")
    if data.get("nats"):
        _migrate_nats(f"{name}:nats", data["nats"], out, report)
    for key in data:
        if key not in ("hot_storage", "batch", "nats"):
            report.drop(f"{name}:{key}", _SERVICE_TOP_DROPS.get(key, "no equivalent in this project"))


def _migrate_cold(name: str, data: Mapping[str, Any], out: dict[str, Any], report: MigrationReport) -> None:
    storage = out.setdefault("storage", {})
    hot = data.get("hot_storage") or {}
    if hot:
        dsn = _dsn(hot, hot.get("clickhouse_http_port") or 8123)
        if "clickhouse_url" in storage and storage["clickhouse_url"] != dsn:
            report.warn(f"{name}:hot_storage points at {_redact(dsn)}, the hot storage file at "
                        f"{_redact(storage['clickhouse_url'])}; kept the hot storage file's")  # fmt: skip
            report.drop(f"{name}:hot_storage", "the hot store is configured by hot_storage_config.yaml")
        else:
            storage.setdefault("hot_backend", "clickhouse")
            storage["clickhouse_url"] = _migrate_clickhouse(f"{name}:hot_storage", hot, report,
                                                            "storage.clickhouse_url")  # fmt: skip
    cold = data.get("cold_storage") or {}
    if cold:
        storage["cold_backend"] = "clickhouse"
        report.map(f"{name}:cold_storage", "storage.cold_backend", "'clickhouse' (Parquet is the default here)")
        storage["cold_clickhouse_url"] = _migrate_clickhouse(f"{name}:cold_storage", cold, report,
                                                             "storage.cold_clickhouse_url")  # fmt: skip
        for key in cold:
            if key not in (*_CH_KEYS, "clickhouse_tcp_port"):
                report.drop(f"{name}:cold_storage.{key}", _SERVICE_TOP_DROPS.get(key, "no equivalent in this project"))
    for key in data:
        if key not in ("hot_storage", "cold_storage"):
            report.drop(f"{name}:{key}", _SERVICE_TOP_DROPS.get(key, "no equivalent in this project"))


def _migrate_js_init(name: str, data: Mapping[str, Any], out: dict[str, Any], report: MigrationReport) -> None:
    for sname, stream in (data.get("streams") or {}).items():
        _migrate_stream(f"{name}:streams.{sname}", stream or {}, out, report)
    for key in data:
        if key != "streams":
            report.drop(f"{name}:{key}", "no equivalent in this project")


def _redact(dsn: str) -> str:
    parts = urlsplit(dsn)
    if parts.password:
        return dsn.replace(f":{parts.password}@", ":***@")
    return dsn


def _kind(data: Mapping[str, Any]) -> str | None:
    if "exchanges" in data:
        return "collector"
    if "cold_storage" in data:
        return "cold"
    if "hot_storage" in data:
        return "hot"
    if "streams" in data:
        return "jetstream"
    return None


def migrate_original(paths: str | Path | Iterable[str | Path], env: Mapping[str, str] | None = None
                     ) -> tuple[PlatformConfig, MigrationReport]:  # fmt: skip
    """Convert the original MarketPrism's YAML (a directory or files) into a :class:`PlatformConfig`.

    Files are recognised by content: the collector's ``unified_data_collection.yaml`` (``exchanges``),
    ``hot_storage_config.yaml``, ``cold_storage_config.yaml`` and the JetStream init file (``streams``);
    later files win where they overlap (stream limits from the init file, which is what created the stream).
    ``${VAR:-default}`` is expanded from ``env`` (default: nothing set, so defaults apply).
    """
    env = {} if env is None else env
    report = MigrationReport()
    order = {"collector": 0, "hot": 1, "cold": 2, "jetstream": 3}
    loaded: list[tuple[int, str, dict[str, Any]]] = []
    for path in _files(paths):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            report.warn(f"{path.name}: not valid YAML, skipped ({exc})")
            continue
        kind = _kind(data) if isinstance(data, dict) else None
        if kind is None:
            report.warn(f"{path.name}: not a file of the original MarketPrism that this migration knows; skipped")
            continue
        used: dict[str, str] = {}
        data = _expand(data, env, used)
        if used:
            report.warn(f"{path.name}: expanded ${{VAR:-default}} from " +
                        ", ".join(f"{k} ({v})" for k, v in sorted(used.items())))  # fmt: skip
        report.files.append(str(path))
        loaded.append((order[kind], path.name, data))
    if not loaded:
        raise ConfigError([(", ".join(map(str, _files(paths))) or str(paths), "no original MarketPrism YAML found",
                            None)], header="cannot migrate")  # fmt: skip
    out: dict[str, Any] = {}
    handlers = {0: _migrate_collector, 1: _migrate_hot, 2: _migrate_cold, 3: _migrate_js_init}
    for rank, name, data in sorted(loaded, key=lambda t: t[0]):
        handlers[rank](name, data, out, report)
    if "venues" in out:
        missing = [v for v in VENUES if v not in out["venues"]]
        if missing:
            report.warn(f"venues the original did not configure are left out: {', '.join(missing)} "
                        "(add them with `marketprism config import`)")  # fmt: skip
    if out.get("nats", {}).get("max_bytes", 0) and out["nats"]["max_bytes"] < 10 * 1024**3:
        report.warn(f"nats.max_bytes {out['nats']['max_bytes']:,} came from a stream that held only low-rate types; "
                    "here depth and trades go to JetStream too, so raise it (default 20 GiB)")  # fmt: skip
    config, _ = resolve(out, env={})
    return config, report
