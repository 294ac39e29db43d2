from __future__ import annotations

import pytest

from schemas.settings import SettingsError, load_settings


def test_defaults_are_the_embedded_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "KAFKA_BOOTSTRAP", "CLICKHOUSE_URL"):
        monkeypatch.delenv(f"FEEDGRID_{name}", raising=False)
    settings = load_settings()
    assert settings.database_url.startswith("sqlite+aiosqlite:///")
    assert settings.kafka_bootstrap == "127.0.0.1:9092"
    assert settings.clickhouse_url.startswith("chdb://")


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEEDGRID_KAFKA_BOOTSTRAP", "broker-1:9092, broker-2:9093")
    monkeypatch.setenv("FEEDGRID_DATABASE_URL", "postgresql://u:p@db/feedgrid")
    settings = load_settings()
    assert settings.kafka_bootstrap == "broker-1:9092,broker-2:9093"
    assert settings.database_url == "postgresql+asyncpg://u:p@db/feedgrid"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("FEEDGRID_DATABASE_URL", "mysql://root@db/feedgrid"),
        ("FEEDGRID_KAFKA_BOOTSTRAP", "no-port-here"),
        ("FEEDGRID_CLICKHOUSE_URL", "tcp://clickhouse:9000"),
        ("FEEDGRID_TOPIC_PREFIX", "bad prefix/"),
        ("FEEDGRID_ADMIN_TOKEN", "short"),
        ("FEEDGRID_TOPIC_PARTITIONS", "0"),
        ("FEEDGRID_LOG_FORMAT", "xml"),
    ],
)
def test_invalid_setting_fails_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert variable in str(raised.value)


def test_cli_exits_2_with_the_variable_name_on_bad_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    from deploy.cli import app

    monkeypatch.setenv("FEEDGRID_KAFKA_BOOTSTRAP", "nonsense")
    result = CliRunner().invoke(app, ["migrate"])
    assert result.exit_code == 2
    assert "FEEDGRID_KAFKA_BOOTSTRAP" in result.output
