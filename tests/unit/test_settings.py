"""Settings: environment prefix, validation, and the Prefect environment."""

import pytest
from pydantic import ValidationError

from mlstack.settings import Settings, prefect_environment


def test_settings_read_mlstack_prefixed_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MLSTACK_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("MLSTACK_CUSTOMERS", "123")
    settings = Settings()
    assert settings.state_dir == tmp_path
    assert settings.customers == 123
    assert settings.data_dir == tmp_path / "data"


def test_settings_reject_bad_values_naming_the_field(monkeypatch):
    monkeypatch.setenv("MLSTACK_MONTHS", "3")
    with pytest.raises(ValidationError, match="months"):
        Settings()


def test_prefect_environment_disables_telemetry_and_keeps_state_local(monkeypatch, tmp_path):
    monkeypatch.delenv("PREFECT_HOME", raising=False)
    env = prefect_environment(Settings(state_dir=tmp_path))
    assert env["PREFECT_HOME"] == str(tmp_path / "prefect")
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert env["DO_NOT_TRACK"] == "1"


def test_prefect_environment_keeps_an_explicit_server(monkeypatch, tmp_path):
    monkeypatch.setenv("PREFECT_HOME", "/elsewhere")
    assert prefect_environment(Settings(state_dir=tmp_path))["PREFECT_HOME"] == "/elsewhere"


def test_configuration_doc_lists_every_setting_as_the_code_does():
    from mlstack.settings import PROJECT_ROOT, SETTINGS_TABLE_MARKERS, settings_reference_markdown

    start, end = SETTINGS_TABLE_MARKERS
    doc = (PROJECT_ROOT / "docs" / "configuration.md").read_text()
    table = doc.split(start, 1)[1].split(end, 1)[0]
    assert table == settings_reference_markdown(), "docs/configuration.md is stale: run `make docs`"


def test_env_example_lists_every_setting():
    from mlstack.settings import PROJECT_ROOT, Settings

    text = (PROJECT_ROOT / ".env.example").read_text()
    missing = [f"MLSTACK_{name.upper()}" for name in Settings.model_fields if f"MLSTACK_{name.upper()}=" not in text]
    assert not missing, f".env.example lacks {missing}"
