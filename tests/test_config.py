"""Configuration: environment, YAML, secret files, and one clear line per problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.cli import main
from sidecar.config import SANDBOX_PIXEL_ID, load_settings
from sidecar.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("CAPI_"):
            monkeypatch.delenv(key)


def test_defaults_listen_on_loopback_and_use_the_sandbox() -> None:
    s = load_settings()
    assert s.listen == "127.0.0.1:8790"
    assert s.ops_listen == "127.0.0.1:9790"
    assert s.needs_sandbox
    (dest,) = s.resolved_destinations("http://127.0.0.1:1")
    assert dest.sandbox and dest.pixel_id == SANDBOX_PIXEL_ID


def test_single_destination_variables_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CAPI_PIXEL_ID", "42")
    monkeypatch.setenv("CAPI_ACCESS_TOKEN", "tok")
    monkeypatch.setenv("CAPI_EVENTS_FILTER", "Purchase, AddToCart")
    monkeypatch.setenv("CAPI_PHONE_DEFAULT_REGION", "us")
    monkeypatch.setenv("CAPI_DEFAULT_CURRENCY", "eur")
    monkeypatch.setenv("CAPI_BATCH_SIZE", "500")
    s = load_settings()
    (dest,) = s.resolved_destinations()
    assert dest.pixel_id == "42" and dest.token == "tok"
    assert dest.events_filter == ("Purchase", "AddToCart")
    assert dest.phone_default_region == "US"
    assert dest.default_currency == "EUR"
    assert s.batch_size == 500


def test_the_access_token_can_come_from_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "token").write_text("from-file\n")
    monkeypatch.setenv("CAPI_PIXEL_ID", "42")
    monkeypatch.setenv("CAPI_ACCESS_TOKEN_FILE", str(tmp_path / "token"))
    (dest,) = load_settings().resolved_destinations()
    assert dest.token == "from-file"


def test_yaml_configures_several_destinations_with_property_mappings(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("tok-b")
    cfg = tmp_path / "capi.yaml"
    cfg.write_text(f"""
batch_size: 200
destinations:
  - name: shop
    pixel_id: "111"
    access_token: tok-a
    events_filter: [Purchase]
    property_mappings:
      properties.email: properties.customer.email
  - name: brand
    pixel_id: "222"
    access_token_file: {tmp_path / "t"}
    action_source: app
""")
    s = load_settings(str(cfg))
    assert s.batch_size == 200
    shop, brand = s.resolved_destinations()
    assert shop.property_mappings == {"properties.email": "properties.customer.email"}
    assert brand.token == "tok-b" and brand.action_source == "app"


def test_environment_wins_over_the_yaml_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cfg = tmp_path / "capi.yaml"
    cfg.write_text("batch_size: 200\n")
    monkeypatch.setenv("CAPI_CONFIG", str(cfg))
    monkeypatch.setenv("CAPI_BATCH_SIZE", "300")
    assert load_settings().batch_size == 300


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"CAPI_BATCH_SIZE": "5000"}, "CAPI_BATCH_SIZE"),
        ({"CAPI_LISTEN": "nowhere"}, "CAPI_LISTEN"),
        ({"CAPI_ACTION_SOURCE": "telepathy"}, "CAPI_ACTION_SOURCE"),
        ({"CAPI_PIXEL_ID": "1"}, "access_token"),
        ({"CAPI_PIXEL_ID": "1", "CAPI_ACCESS_TOKEN": "t", "CAPI_PHONE_DEFAULT_REGION": "XX"},
         "phone region"),
        ({"CAPI_PIXEL_ID": "1", "CAPI_ACCESS_TOKEN_FILE": "/nonexistent/token"}, "cannot read"),
        ({"CAPI_CONTENT_ID_FIELD": "barcode"}, "CAPI_CONTENT_ID_FIELD"),
    ],
)
def test_a_bad_setting_stops_start_up_with_a_clear_line(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], needle: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as err:
        load_settings().resolved_destinations()
    assert any(needle in line for line in err.value.problems), err.value.problems


def test_several_problems_give_one_line_each(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CAPI_BATCH_SIZE", "0")
    monkeypatch.setenv("CAPI_CONCURRENCY", "1000")
    monkeypatch.setenv("CAPI_BOGUS_SETTING", "1")
    assert main(["migrate"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    assert all(line.startswith("capi-sidecar: configuration error: ") for line in lines)
    assert "CAPI_BATCH_SIZE" in lines[0] or "CAPI_BATCH_SIZE" in lines[1]


def test_an_unknown_key_in_the_yaml_file_is_an_error(tmp_path: Path) -> None:
    cfg = tmp_path / "capi.yaml"
    cfg.write_text("batch_sise: 10\n")
    with pytest.raises(ConfigError) as err:
        load_settings(str(cfg))
    assert "batch_sise" in str(err.value)


def test_an_unknown_property_mapping_path_is_an_error(tmp_path: Path) -> None:
    cfg = tmp_path / "capi.yaml"
    cfg.write_text("destinations:\n  - pixel_id: '1'\n    access_token: t\n"
                   "    property_mappings:\n      properties.nonsense: properties.x\n")
    with pytest.raises(ConfigError) as err:
        load_settings(str(cfg))
    assert "properties.nonsense" in str(err.value)


def test_a_yaml_file_that_is_not_a_mapping_is_an_error(tmp_path: Path) -> None:
    cfg = tmp_path / "capi.yaml"
    cfg.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(str(cfg))


def test_the_token_is_never_shown_in_the_settings_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPI_PIXEL_ID", "1")
    monkeypatch.setenv("CAPI_ACCESS_TOKEN", "EAAB-very-secret")
    s = load_settings()
    assert "EAAB-very-secret" not in repr(s)
    assert "EAAB-very-secret" not in repr(s.resolved_destinations())


def test_unknown_capi_variables_are_reported_as_likely_typos() -> None:
    from sidecar.config import unknown_environment

    env = {"CAPI_PIXELID": "1", "CAPI_PIXEL_ID": "1", "CAPI_CONFIG": "x", "HOME": "/"}
    assert unknown_environment(env) == ["CAPI_PIXELID"]
