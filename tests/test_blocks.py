"""Prefect Blocks as the config store, against a real Prefect test server (one per module: ~8 s to start)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from marketprism.cli import app
from marketprism.config import MASK, ConfigError, PlatformConfig, migrate_original, resolve, to_yaml
from marketprism.records import DataType
from tests.fixtures_util import fixture_path

runner = CliRunner()


@pytest.fixture(scope="module")
def prefect_server() -> Iterator[None]:
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"  # no network here
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture
def clean(prefect_server: None) -> None:
    """No platform block documents: each test starts from an empty store."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from blocks import block_documents

    with get_client(sync_client=True) as client:
        for name, cls, _, _ in block_documents():
            try:
                doc = client.read_block_document_by_name(name, cls.get_block_type_slug(), include_secrets=False)
            except ObjectNotFound:
                continue
            assert doc.id is not None
            client.delete_block_document(doc.id)


def stored_data(name: str, slug: str) -> dict:
    """A block document's data as the API returns it to anyone (secrets not included)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return dict(client.read_block_document_by_name(name, slug, include_secrets=False).data)


def test_every_block_type_round_trips_and_keeps_secrets_secret(clean: None) -> None:
    from blocks import NatsBlock, QualityBlock, StorageBlock, VenueBlock

    venue = VenueBlock(venue="okx_swap", symbols=["sol-usdt", "BTC-USDT"], data_types=["depth"], depth_levels=50,
                       ws_url="ws://127.0.0.1:9000", streams_per_connection=100)  # fmt: skip
    nats = NatsBlock(servers=["nats://a:4222", "tls://b:4222"], user="mp", password="nats-pw", max_age_s=3600,
                     duplicate_window_s=60)  # fmt: skip
    storage = StorageBlock(hot_backend="clickhouse", clickhouse_url="http://u:ch-pw@ch:8123/hot",
                           parquet_path="s3://bucket/cold", hot_retention_days=2)  # fmt: skip
    quality = QualityBlock(enabled=False, schedule_cron="*/15 * * * *", freshness_s={"trade": 9})
    for name, block in (("venue-okx-swap", venue), ("nats", nats), ("storage", storage), ("quality", quality)):
        block.save(name, overwrite=True)
        loaded = type(block).load(name)
        assert loaded == block and loaded.to_config() == block.to_config()

    loaded_venue = VenueBlock.load("venue-okx-swap")
    assert loaded_venue.symbols == ["SOL-USDT", "BTC-USDT"] and loaded_venue.data_types == [DataType.DEPTH]
    assert loaded_venue.to_config().to_spec().symbols == ("SOL-USDT", "BTC-USDT")
    loaded_nats = NatsBlock.load("nats")
    assert loaded_nats.password is not None and loaded_nats.password.get_secret_value() == "nats-pw"
    assert loaded_nats.to_config().connect_options()["password"] == "nats-pw"
    loaded_storage = StorageBlock.load("storage")
    assert loaded_storage.clickhouse_url is not None
    assert loaded_storage.clickhouse_url.get_secret_value() == "http://u:ch-pw@ch:8123/hot"
    # the API hands secrets out only to callers that ask for them
    assert "nats-pw" not in json.dumps(stored_data("nats", "marketprism-nats"))
    assert "ch-pw" not in json.dumps(stored_data("storage", "marketprism-storage"))


def test_blocks_validate_like_the_engine(prefect_server: None) -> None:
    from pydantic import ValidationError

    from blocks import NatsBlock, VenueBlock

    with pytest.raises(ValidationError, match="BASE-QUOTE"):
        VenueBlock(venue="binance_spot", symbols=["BTCUSDT"])
    with pytest.raises(ValidationError, match="at most 240"):
        VenueBlock(venue="okx_spot", streams_per_connection=500)
    with pytest.raises(ValidationError, match="not a NATS URL"):
        NatsBlock(servers=["http://a:4222"])


def test_save_defaults_is_idempotent(clean: None) -> None:
    from blocks import NatsBlock, existing_blocks, save_defaults

    written = save_defaults()
    assert written == ["venue-binance-spot", "venue-binance-usdm", "venue-okx-spot", "venue-okx-swap",
                       "venue-bybit-linear", "nats", "storage", "quality"]  # fmt: skip
    assert existing_blocks() == set(written)
    NatsBlock(servers=["nats://kept:4222"]).save("nats", overwrite=True)
    assert save_defaults() == []  # nothing missing: nothing written, the user's value kept
    assert NatsBlock.load("nats").servers == ["nats://kept:4222"]
    assert len(save_defaults(overwrite=True)) == 8
    assert NatsBlock.load("nats").servers == []
    result = runner.invoke(app, ["config", "defaults"])
    assert result.exit_code == 0 and "exist already" in result.output


def test_load_platform_config_applies_env_over_blocks(clean: None) -> None:
    from blocks import NatsBlock, VenueBlock, aload_platform_config, load_platform_config

    config, sources = load_platform_config(env={})
    assert config == PlatformConfig() and set(sources.values()) == {"default"}  # no blocks: the defaults

    VenueBlock(venue="binance_spot", symbols=["BTC-USDT"]).save("venue-binance-spot", overwrite=True)
    NatsBlock(servers=["nats://block:4222"], user="mp", password="block-pw").save("nats", overwrite=True)
    env = {"MARKETPRISM_NATS__SERVERS": "nats://env:4222", "MARKETPRISM_STORAGE__BATCH_ROWS": "500"}
    config, sources = load_platform_config(env=env)
    assert list(config.venues) == ["binance_spot"]  # the venues that have blocks
    assert config.venues["binance_spot"].symbols == ["BTC-USDT"] and sources["venues.binance_spot.symbols"] == "block"
    assert config.nats.servers == ["nats://env:4222"] and sources["nats.servers"] == "env"
    assert config.nats.password is not None and config.nats.password.get_secret_value() == "block-pw"
    assert sources["nats.password"] == "block" and sources["nats.user"] == "block"
    assert config.storage.batch_rows == 500 and sources["storage.batch_rows"] == "env"
    assert sources["storage.hot_backend"] == "default"
    with pytest.raises(ConfigError, match="MARKETPRISM_NATS__SERVRES"):
        load_platform_config(env={"MARKETPRISM_NATS__SERVRES": "nats://x:1"})
    assert asyncio.run(aload_platform_config(env=env)) == (config, sources)  # the same for async callers (flows)


def test_import_yaml_writes_blocks_and_a_bad_file_writes_none(clean: None, tmp_path: Path) -> None:
    from blocks import StorageBlock, VenueBlock, existing_blocks, import_yaml, load_platform_config

    migrated, _ = migrate_original(fixture_path("original-marketprism/unified_data_collection.yaml").parent, env={})
    good = tmp_path / "good.yaml"
    good.write_text(to_yaml(migrated, include_secrets=True))
    written = import_yaml(good)
    assert written == ["venue-binance-spot", "venue-binance-usdm", "venue-okx-spot", "venue-okx-swap", "nats",
                       "storage", "quality"]  # fmt: skip
    assert VenueBlock.load("venue-okx-swap").to_config() == migrated.venues["okx_swap"]
    url = StorageBlock.load("storage").clickhouse_url
    assert url is not None and url.get_secret_value() == "http://default@localhost:8123/marketprism_hot"
    assert load_platform_config(env={})[0] == migrated

    before = existing_blocks()
    bad = tmp_path / "bad.yaml"  # the first venue and nats are fine; the second venue is not
    bad.write_text("venues:\n  bybit_linear:\n    symbols: [SOL-USDT]\n  okx_spot:\n    symbols: [BTCUSDT]\n"
                   "nats:\n  servers: [nats://new:4222]\n")  # fmt: skip
    with pytest.raises(ConfigError, match=r"venues\.okx_spot\.symbols: .*'BTCUSDT'"):
        import_yaml(bad)
    assert existing_blocks() == before and "venue-bybit-linear" not in before
    assert load_platform_config(env={})[0].nats.servers == migrated.nats.servers


def test_cli_show_and_import_against_prefect(clean: None, tmp_path: Path) -> None:
    config, _ = resolve({"venues": {"okx_spot": {"symbols": ["SOL-USDT"]}},
                         "nats": {"user": "mp", "password": "cli-pw"}}, env={})  # fmt: skip
    file = tmp_path / "mp.yaml"
    file.write_text(to_yaml(config, include_secrets=True))
    result = runner.invoke(app, ["config", "import", str(file)])
    assert result.exit_code == 0, result.output
    assert "wrote block venue-okx-spot" in result.output and "wrote block nats" in result.output

    result = runner.invoke(app, ["config", "show", "--json"], env={"MARKETPRISM_NATS__SERVERS": "nats://e:4222"})
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["origin"].startswith("blocks from the Prefect API")
    assert payload["config"]["venues"]["okx_spot"]["symbols"] == ["SOL-USDT"]
    assert payload["sources"]["venues.okx_spot.symbols"] == "block"
    assert payload["sources"]["nats.servers"] == "env" and payload["sources"]["quality.enabled"] == "block"
    assert payload["config"]["nats"]["password"] == MASK and "cli-pw" not in result.output

    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 0, result.output
    assert "venues.okx_spot.symbols" in result.output and "block" in result.output and "cli-pw" not in result.output

    bad = tmp_path / "bad.yaml"
    bad.write_text("storage:\n  hot_retention_days: 0\n")
    result = runner.invoke(app, ["config", "import", str(bad)])
    assert result.exit_code == 1 and "storage.hot_retention_days" in result.output


def test_cli_show_falls_back_when_prefect_is_unreachable(prefect_server: None, tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    file = tmp_path / "mp.yaml"
    file.write_text("nats:\n  servers: []\n")
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        result = runner.invoke(app, ["config", "show", "--json"])
        assert result.exit_code == 0, result.output
        assert "not reachable" in result.output
        assert set(json.loads(result.stdout)["sources"].values()) == {"default"}
        result = runner.invoke(app, ["config", "import", str(file)])
        assert result.exit_code == 1 and "cannot import" in result.output and "not reachable" in result.output
