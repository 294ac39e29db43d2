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
        ("FEEDGRID_API_KEY_REFRESH_SECONDS", "2"),
        ("FEEDGRID_NOTIFY_MAX_ATTEMPTS", "0"),
        ("FEEDGRID_NOTIFY_POLL_SECONDS", "-1"),
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


@pytest.mark.parametrize(
    "provider",
    [
        {"FEEDGRID_IDP_ISSUER": "https://sso.city.example"},
        {"FEEDGRID_IDP_JWKS_URL": "https://sso.city.example/jwks"},
        {
            "FEEDGRID_IDP_ISSUER": "https://sso.city.example",
            "FEEDGRID_IDP_JWKS_URL": "https://sso.city.example/jwks",
        },
    ],
)
def test_an_identity_provider_without_an_audience_fails_at_start_naming_it(
    monkeypatch: pytest.MonkeyPatch, provider: dict[str, str]
) -> None:
    """Without an expected audience, a provider token issued for any other application of the
    city would be accepted here."""
    monkeypatch.delenv("FEEDGRID_IDP_AUDIENCE", raising=False)
    for variable, value in provider.items():
        monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert "FEEDGRID_IDP_AUDIENCE" in str(raised.value)
    monkeypatch.setenv("FEEDGRID_IDP_AUDIENCE", "feedgrid")
    if len(provider) == 2:
        assert load_settings().idp_audience == "feedgrid"


def test_identity_provider_tokens_refuse_settings_built_without_an_audience() -> None:
    """Settings copied in code skip validation: the provider itself still refuses to start."""
    from registry_api.identity.idp import IdentityProviderTokens
    from schemas.settings import Settings

    settings = Settings().model_copy(
        update={"idp_issuer": "https://sso", "idp_jwks_url": "https://sso/jwks"}
    )
    with pytest.raises(SettingsError) as raised:
        IdentityProviderTokens.from_settings(settings)
    assert "FEEDGRID_IDP_AUDIENCE" in str(raised.value)
