"""The typed config without Prefect: defaults, env precedence, validation messages, migration, YAML, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from marketprism.bus.stream import MarketDataStream
from marketprism.cli import app
from marketprism.config import (
    MASK,
    ConfigError,
    PlatformConfig,
    from_yaml,
    leaves,
    migrate_original,
    resolve,
    to_yaml,
)
from marketprism.records import DataType
from marketprism.runner import DEFAULT_SYMBOLS, CollectorSpec
from marketprism.stream.session import SessionConfig
from marketprism.venues import VENUES
from tests.fixtures_util import fixture_path

runner = CliRunner()
ORIGINAL = "original-marketprism"


def original_dir() -> Path:
    return fixture_path(f"{ORIGINAL}/unified_data_collection.yaml").parent


# --- defaults and precedence ------------------------------------------------------------------------


def test_defaults_are_valid_and_every_leaf_is_default() -> None:
    config, sources = resolve({}, env={})
    assert config == PlatformConfig()
    assert list(config.venues) == list(VENUES)
    for name, venue in config.venues.items():
        assert venue.symbols == list(DEFAULT_SYMBOLS) and venue.enabled
        assert venue.data_types == list(VENUES[name].channels)
        assert venue.to_spec() == CollectorSpec(name, DEFAULT_SYMBOLS, tuple(VENUES[name].channels))
        assert venue.session_config() == SessionConfig()
    assert config.nats.stream() == MarketDataStream() and config.nats.connect_options() == {"servers": []}
    assert config.storage.hot_backend == "duckdb" and config.storage.cold_backend == "parquet"
    assert set(sources) == set(leaves(config)) and set(sources.values()) == {"default"}
    assert "nats.servers" in sources and "venues.okx_swap.symbols" in sources and "quality.freshness_s.trade" in sources


def test_env_beats_block_values_beat_defaults() -> None:
    values = {
        "venues": {"binance_spot": {"symbols": ["btc-usdt"], "stall_timeout_s": 10}, "okx_swap": {"enabled": False}},
        "nats": {"servers": ["nats://block:4222"], "stream_name": "BLOCK_STREAM"},
        "storage": {"hot_backend": "duckdb"},
    }
    env = {
        "MARKETPRISM_NATS__SERVERS": "nats://a:4222, nats://b:4222",
        "MARKETPRISM_STORAGE__HOT_BACKEND": "clickhouse",
        "MARKETPRISM_VENUES__BINANCE_SPOT__SYMBOLS": "BTC-USDT,SOL-USDT",
        "MARKETPRISM_DATA_DIR": "/not/config",  # no "__": not config, ignored
        "PATH": "/usr/bin",
    }
    config, sources = resolve(values, env)
    assert list(config.venues) == ["binance_spot", "okx_swap"]  # the values name the venues
    assert config.nats.servers == ["nats://a:4222", "nats://b:4222"] and sources["nats.servers"] == "env"
    assert config.nats.stream_name == "BLOCK_STREAM" and sources["nats.stream_name"] == "block"
    assert config.nats.max_age_s == MarketDataStream().max_age_s and sources["nats.max_age_s"] == "default"
    assert config.storage.hot_backend == "clickhouse" and sources["storage.hot_backend"] == "env"
    spot = config.venues["binance_spot"]
    assert spot.symbols == ["BTC-USDT", "SOL-USDT"] and sources["venues.binance_spot.symbols"] == "env"
    assert spot.stall_timeout_s == 10 and sources["venues.binance_spot.stall_timeout_s"] == "block"
    assert spot.session_config().stall_timeout_s == 10
    assert sources["venues.binance_spot.backoff_max_s"] == "default"
    assert not config.venues["okx_swap"].enabled and sources["venues.okx_swap.enabled"] == "block"
    assert [s.venue for s in config.collector_specs()] == ["binance_spot"]


def test_env_adds_a_venue_and_keeps_the_default_venues() -> None:
    config, sources = resolve({}, {"MARKETPRISM_VENUES__BYBIT_LINEAR__SYMBOLS": "SOL-USDT"})
    assert list(config.venues) == list(VENUES)
    assert config.venues["bybit_linear"].symbols == ["SOL-USDT"] and sources["venues.bybit_linear.symbols"] == "env"
    assert config.venues["okx_spot"].symbols == list(DEFAULT_SYMBOLS)


@pytest.mark.parametrize(
    ("raw", "expected"), [("true", True), ("false", False), ("1", True), ("0", False), ("FALSE", False)]
)
def test_bool_parsing(raw: str, expected: bool) -> None:
    config, _ = resolve({}, {"MARKETPRISM_QUALITY__ENABLED": raw, "MARKETPRISM_VENUES__OKX_SPOT__ENABLED": raw})
    assert config.quality.enabled is expected and config.venues["okx_spot"].enabled is expected


def test_list_dict_and_optional_parsing() -> None:
    env = {
        "MARKETPRISM_VENUES__OKX_SPOT__DATA_TYPES": "trade, ticker,",
        "MARKETPRISM_VENUES__OKX_SPOT__WS_URL": "ws://127.0.0.1:9999",
        "MARKETPRISM_VENUES__OKX_SPOT__DEPTH_LEVELS": "",  # empty clears an optional field
        "MARKETPRISM_QUALITY__FRESHNESS_S__TRADE": "5",
        "MARKETPRISM_NATS__SERVERS": "",  # empty list: the embedded server
    }
    values = {"venues": {"okx_spot": {"depth_levels": 20}}, "nats": {"servers": ["nats://x:4222"]}}
    config, sources = resolve(values, env)
    okx = config.venues["okx_spot"]
    assert okx.data_types == [DataType.TRADE, DataType.TICKER] and okx.depth_levels is None
    assert okx.ws_base() == "ws://127.0.0.1:9999" and okx.base_rest_url() == VENUES["okx_spot"].rest_url
    assert config.nats.servers == [] and sources["nats.servers"] == "env"
    # one key of a dict: the other keys keep their defaults
    assert config.quality.freshness_s == {"trade": 5.0, "depth": 30.0, "ticker": 30.0}
    assert sources["quality.freshness_s.trade"] == "env" and sources["quality.freshness_s.depth"] == "default"
    config, sources = resolve({}, {"MARKETPRISM_QUALITY__FRESHNESS_S": "depth=3,trade=4"})
    assert config.quality.freshness_s == {"depth": 3.0, "trade": 4.0} and sources["quality.freshness_s.depth"] == "env"


def test_credentials_reach_nats_options_and_leaves_mask_them() -> None:
    config, sources = resolve({}, {"MARKETPRISM_NATS__USER": "mp", "MARKETPRISM_NATS__PASSWORD": "s3cret"})
    assert config.nats.connect_options() == {"servers": [], "user": "mp", "password": "s3cret"}
    assert leaves(config)["nats.password"] == MASK and sources["nats.password"] == "env"
    assert leaves(config, reveal=True)["nats.password"] == "s3cret"
    assert "s3cret" not in repr(config)


# --- validation messages ----------------------------------------------------------------------------

INVALID = [
    ({"venues": {"kraken_spot": {}}}, {}, "venues.kraken_spot.venue", "'kraken_spot'"),
    ({"venues": {"binance_spot": {"data_types": ["trade", "status"]}}}, {}, "venues.binance_spot.data_types",
     "'status'"),
    ({"venues": {"binance_spot": {"data_types": ["trades"]}}}, {}, "venues.binance_spot.data_types[0]", "'trades'"),
    ({"venues": {"okx_spot": {"symbols": []}}}, {}, "venues.okx_spot.symbols", "[]"),
    ({}, {"MARKETPRISM_VENUES__OKX_SPOT__SYMBOLS": "BTCUSDT"},
     "venues.okx_spot.symbols [MARKETPRISM_VENUES__OKX_SPOT__SYMBOLS]", "'BTCUSDT'"),
    ({"venues": {"okx_spot": {"ws_url": "https://ws.okx.com"}}}, {}, "venues.okx_spot.ws_url", "'https://ws.okx.com'"),
    ({"venues": {"okx_spot": {"rest_url": "wss://www.okx.com"}}}, {}, "venues.okx_spot.rest_url", "'wss://www.okx.com'"),
    ({"venues": {"bybit_linear": {"streams_per_connection": 201}}}, {}, "venues.bybit_linear.streams_per_connection",
     "201"),
    ({"storage": {"hot_retention_days": -1}}, {}, "storage.hot_retention_days", "-1"),
    ({}, {"MARKETPRISM_STORAGE__HOT_BACKEND": "postgres"}, "storage.hot_backend [MARKETPRISM_STORAGE__HOT_BACKEND]",
     "'postgres'"),
    ({}, {"MARKETPRISM_QUALITY__ENABLED": "maybe"}, "quality.enabled [MARKETPRISM_QUALITY__ENABLED]", "'maybe'"),
    ({"nats": {"servers": ["localhost:4222"]}}, {}, "nats.servers", "localhost:4222"),
    ({"nats": {"max_age_s": 60, "duplicate_window_s": 120}}, {}, "nats.duplicate_window_s", "120"),
    ({"quality": {"schedule_cron": "61 * * * *"}}, {}, "quality.schedule_cron", "'61 * * * *'"),
    ({"quality": {"freshness_s": {"trades": 5}}}, {}, "quality.freshness_s", "'trades'"),
    ({"nats": {"servres": ["nats://a:4222"]}}, {}, "nats.servres", "did you mean 'servers'"),
    ({"venues": {"binance_spot": {"venue": "okx_spot"}}}, {}, "venues.binance_spot.venue", "'okx_spot'"),
]  # fmt: skip


@pytest.mark.parametrize(("values", "env", "path", "shown"), INVALID, ids=[c[2] for c in INVALID])
def test_invalid_config_names_the_field_and_the_value(values: dict, env: dict, path: str, shown: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(values, env)
    message = str(info.value)
    line = next((ln for ln in message.splitlines() if ln.strip().startswith(path + ":")), None)
    assert line is not None, message
    assert shown in line, message
    assert isinstance(info.value, ValueError) and info.value.problems


@pytest.mark.parametrize(
    ("var", "hint"),
    [
        ("MARKETPRISM_NATS__SERVRES", "did you mean 'servers'"),
        ("MARKETPRISM_STORAGES__HOT_BACKEND", "unknown config section 'storages'"),
        ("MARKETPRISM_VENUES__BINANCE_SPOTT__SYMBOLS", "did you mean 'binance_spot'"),
        ("MARKETPRISM_VENUES__BINANCE_SPOT", "name a venue and a field"),
        ("MARKETPRISM_VENUES__BINANCE_SPOT__SYMBOL", "did you mean 'symbols'"),
        ("MARKETPRISM_NATS__SERVERS__X", "too many"),
    ],
)
def test_typo_in_an_env_var_fails_naming_the_variable(var: str, hint: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve({}, {var: "BTC-USDT"})
    assert var in str(info.value) and hint in str(info.value)


def test_secret_values_are_never_echoed_in_errors() -> None:
    with pytest.raises(ConfigError) as info:
        resolve({}, {"MARKETPRISM_NATS__PASSWORD": "hunter2"})  # a password needs a user
    assert "nats.password" in str(info.value) and "hunter2" not in str(info.value) and MASK in str(info.value)
    with pytest.raises(ConfigError) as info:
        resolve({"storage": {"clickhouse_url": "ftp://u:hunter2@host"}}, {})
    assert "storage.clickhouse_url" in str(info.value) and "hunter2" not in str(info.value)


# --- migration from the original --------------------------------------------------------------------


def test_migrate_original_makes_a_valid_config_with_a_report() -> None:
    config, report = migrate_original(original_dir(), env={})
    assert isinstance(config, PlatformConfig)
    assert len(report.files) == 4
    assert list(config.venues) == ["binance_spot", "binance_usdm", "okx_spot", "okx_swap"]
    for venue in config.venues.values():
        assert venue.symbols == ["BTC-USDT", "ETH-USDT"]  # BTCUSDT and BTC-USDT-SWAP normalised
        assert venue.data_types[:2] == [DataType.DEPTH, DataType.TRADE]
        assert venue.depth_levels == 200 and venue.book_interval_ms == 100
        assert (venue.backoff_initial_s, venue.backoff_max_s, venue.stall_timeout_s) == (1.0, 30.0, 60.0)
        assert venue.ws_url is None and venue.rest_url is None  # the original's URLs equal our defaults
    assert config.venues["binance_spot"].max_connection_age_s == 86100
    assert config.venues["okx_spot"].max_connection_age_s is None  # OKX does not cut connections by age
    assert config.nats.servers == ["nats://127.0.0.1:4222"]
    assert (config.nats.stream_name, config.nats.max_age_s, config.nats.max_bytes) == ("MARKET_DATA", 172800, 2**31)
    assert config.nats.duplicate_window_s == 300  # the JetStream init file created the stream
    storage = config.storage
    assert storage.hot_backend == "clickhouse" and storage.cold_backend == "clickhouse"
    assert storage.clickhouse_url is not None
    assert storage.clickhouse_url.get_secret_value() == "http://default@localhost:8123/marketprism_hot"
    assert storage.cold_clickhouse_url is not None
    assert storage.cold_clickhouse_url.get_secret_value() == "http://default@clickhouse-cold:8123/marketprism_cold"
    assert (storage.hot_retention_days, storage.batch_rows, storage.batch_seconds) == (3, 6000, 3.0)

    maps = {(s, t) for s, t, _ in report.maps}
    assert ("unified_data_collection.yaml:exchanges.binance_derivatives.symbols", "venues.binance_usdm.symbols") in maps
    assert ("unified_data_collection.yaml:exchanges.okx_derivatives.symbols[BTC-USDT-SWAP]", "BTC-USDT") in maps
    assert ("hot_storage_config.yaml:hot_storage.retention_days", "storage.hot_retention_days") in maps
    assert ("js_init_market_data.yaml:streams.MARKET_DATA.max_age", "nats.max_age_s") in maps
    dropped = dict(report.dropped)
    assert "deribit" in dropped["unified_data_collection.yaml:exchanges.deribit_derivatives"]
    # derivatives streams where the venue streams them (issue 6); the rest is a scheduled REST pull
    venues = config.venues
    assert venues["binance_spot"].data_types == venues["okx_spot"].data_types == [DataType.DEPTH, DataType.TRADE]
    assert venues["binance_usdm"].data_types == [DataType.DEPTH, DataType.TRADE, DataType.FUNDING_RATE,
                                                 DataType.LIQUIDATION]  # fmt: skip
    assert venues["okx_swap"].data_types == [DataType.DEPTH, DataType.TRADE, DataType.FUNDING_RATE,
                                             DataType.OPEN_INTEREST, DataType.LIQUIDATION]  # fmt: skip
    assert ("unified_data_collection.yaml:exchanges.binance_derivatives.data_types[funding_rate]",
            "venues.binance_usdm.data_types[funding_rate]") in maps  # fmt: skip
    assert "has no streaming channel for open_interest" in dropped[
        "unified_data_collection.yaml:exchanges.binance_derivatives.data_types[open_interest]"]  # fmt: skip
    assert "always on" in dropped["unified_data_collection.yaml:exchanges.binance_spot.orderbook.validation_enabled"]
    assert "verified" in dropped["cold_storage_config.yaml:replication"]
    assert all(reason for _, reason in report.dropped)  # every drop says why
    assert any("bybit_linear" in w for w in report.warnings)
    assert any("duplicate_window" in w for w in report.warnings)
    assert json.loads(json.dumps(report.as_dict()))["dropped"]


def test_migrate_expands_variables_from_the_environment() -> None:
    cold = fixture_path(f"{ORIGINAL}/cold_storage_config.yaml")
    config, report = migrate_original([cold], env={"COLD_CH_HOST": "cold.example", "COLD_CH_PWD": "p@ss"})
    url = config.storage.cold_clickhouse_url
    assert url is not None and url.get_secret_value() == "http://default:p%40ss@cold.example:8123/marketprism_cold"
    assert not any("p@ss" in w for w in report.warnings)
    assert list(config.venues) == list(VENUES)  # no collector file: venues keep their defaults


def test_migrate_rejects_a_path_without_original_files(tmp_path: Path) -> None:
    (tmp_path / "other.yaml").write_text("foo: 1\n")
    with pytest.raises(ConfigError, match="no original MarketPrism YAML"):
        migrate_original(tmp_path)
    with pytest.raises(ConfigError, match="no such file"):
        migrate_original(tmp_path / "missing.yaml")


# --- YAML -------------------------------------------------------------------------------------------


def test_yaml_round_trip_and_secrets_only_when_asked() -> None:
    config, _ = resolve(
        {"venues": {"okx_swap": {"symbols": ["SOL-USDT"], "data_types": ["depth"], "ws_url": "ws://127.0.0.1:1"}},
         "quality": {"schedule_cron": "*/5 * * * *"}},
        {"MARKETPRISM_NATS__USER": "u", "MARKETPRISM_NATS__PASSWORD": "pw",
         "MARKETPRISM_STORAGE__CLICKHOUSE_URL": "http://u:pw@h:8123/db"},
    )  # fmt: skip
    assert from_yaml(to_yaml(config, include_secrets=True)) == config
    text = to_yaml(config)
    assert "pw" not in text.replace("password", "") and "MARKETPRISM_NATS__PASSWORD" in text
    back = from_yaml(text)
    assert back.nats.password is None and back.storage.clickhouse_url is None
    assert back.model_dump(exclude={"nats": {"password"}, "storage": {"clickhouse_url"}}) == config.model_dump(
        exclude={"nats": {"password"}, "storage": {"clickhouse_url"}}
    )
    migrated, _ = migrate_original(original_dir(), env={})
    assert from_yaml(to_yaml(migrated, include_secrets=True)) == migrated


def test_from_yaml_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"venues\.okx_spot\.symbols: .*'BTCUSDT'"):
        from_yaml("venues:\n  okx_spot:\n    symbols: [BTCUSDT]\n")
    with pytest.raises(ConfigError, match="unknown section"):
        from_yaml("natz:\n  servers: []\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        from_yaml("- a\n- b\n")
    assert from_yaml("venues:\nnats:\n") == PlatformConfig()  # empty sections: the defaults


# --- CLI (no Prefect: --offline and migrate) ---------------------------------------------------------


def test_config_show_masks_secrets_and_names_sources() -> None:
    env = {"MARKETPRISM_NATS__USER": "mp", "MARKETPRISM_NATS__PASSWORD": "s3cret-pw",
           "MARKETPRISM_VENUES__OKX_SPOT__SYMBOLS": "SOL-USDT"}  # fmt: skip
    result = runner.invoke(app, ["config", "show", "--offline"], env=env)
    assert result.exit_code == 0, result.output
    assert "s3cret-pw" not in result.output and MASK in result.output
    assert "nats.password" in result.output and "--offline" in result.output
    result = runner.invoke(app, ["config", "show", "--offline", "--json"], env=env)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert "s3cret-pw" not in result.stdout
    assert payload["config"]["nats"]["password"] == MASK and payload["sources"]["nats.password"] == "env"
    assert payload["config"]["venues"]["okx_spot"]["symbols"] == ["SOL-USDT"]
    assert payload["sources"]["venues.okx_spot.symbols"] == "env" and payload["sources"]["nats.servers"] == "default"


def test_config_show_fails_on_a_typo_naming_the_variable() -> None:
    result = runner.invoke(app, ["config", "show", "--offline"], env={"MARKETPRISM_NATS__SERVRES": "nats://a:1"})
    assert result.exit_code == 1
    assert "MARKETPRISM_NATS__SERVRES" in result.output and "servers" in result.output


def test_config_migrate_prints_the_report_and_writes_importable_yaml(tmp_path: Path) -> None:
    out = tmp_path / "marketprism.yaml"
    result = runner.invoke(app, ["config", "migrate", str(original_dir()), "--write", str(out)])
    assert result.exit_code == 0, result.output
    for word in ("maps", "dropped", "warnings", "deribit", "venues.binance_usdm"):
        assert word in result.output
    assert "MARKETPRISM_STORAGE__CLICKHOUSE_URL" in result.output  # the secret it left out, and how to set it
    config = from_yaml(out.read_text())
    assert list(config.venues) == ["binance_spot", "binance_usdm", "okx_spot", "okx_swap"]
    assert config.storage.clickhouse_url is None  # secrets only with --include-secrets
    result = runner.invoke(app, ["config", "migrate", str(original_dir()), "--json", "--write", str(out),
                                 "--include-secrets"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["maps"]
    assert from_yaml(out.read_text()).storage.clickhouse_url is not None


def test_importing_the_cli_does_not_import_prefect() -> None:
    code = "import sys, marketprism.cli, marketprism.config; sys.exit('prefect' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
