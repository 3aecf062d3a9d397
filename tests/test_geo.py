"""Geo lookup on a real (tiny) MaxMind City database built in tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet  # type: ignore[import-untyped]
from pydantic import SecretStr

from sidecar.config import DestinationSettings
from sidecar.errors import ConfigError
from sidecar.geo import GeoResult, MaxMindGeo, open_geo
from sidecar.mapping import Mapped, Mapper
from sidecar.normalize import sha256_hex

NOW = 1_772_366_400.0


def city_record(city: str | None, region: str | None, country: str) -> dict[str, Any]:
    record: dict[str, Any] = {"country": {"iso_code": country, "names": {"en": country}}}
    if city is not None:
        record["city"] = {"names": {"en": city, "de": f"{city} (de)"}}
    if region is not None:
        record["subdivisions"] = [
            {"iso_code": region, "names": {"en": region}},
            {"iso_code": "ZZZ", "names": {"en": "second level"}},
        ]
    return record


def write_db(path: Path, networks: dict[str, dict[str, Any]], kind: str) -> Path:
    writer = MMDBWriter(
        ip_version=6, database_type=kind, languages=["en", "de"], ipv4_compatible=True
    )
    for network, record in networks.items():
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path


@pytest.fixture
def city_db(tmp_path: Path) -> Path:
    return write_db(
        tmp_path / "city.mmdb",
        {
            "203.0.113.0/24": city_record("Seattle", "WA", "US"),
            "198.51.100.0/24": city_record(None, None, "GB"),
            "2001:db8:1::/48": city_record("Dublin", "L", "IE"),
        },
        "GeoLite2-City",
    )


@pytest.fixture
def geo(city_db: Path) -> Iterator[MaxMindGeo]:
    lookup = open_geo(city_db)
    yield lookup
    lookup.close()


def dest() -> DestinationSettings:
    return DestinationSettings(pixel_id="1", access_token=SecretStr("t"))


def user_data_of(geo: MaxMindGeo, message: dict[str, Any]) -> dict[str, Any]:
    """The user_data the default destination's mapper makes of ``message`` with ``geo``."""
    outcome = Mapper(dest(), geo=geo).map(message, received_at=NOW, now=NOW)
    assert isinstance(outcome, Mapped)
    user_data: dict[str, Any] = outcome.payload["user_data"]
    return user_data


def test_ipv4_address_is_placed(geo: MaxMindGeo) -> None:
    assert geo.lookup("203.0.113.9") == GeoResult(city="Seattle", region="WA", country="US")


def test_ipv6_address_is_placed(geo: MaxMindGeo) -> None:
    assert geo.lookup("2001:db8:1::42") == GeoResult(city="Dublin", region="L", country="IE")


def test_record_with_country_only(geo: MaxMindGeo) -> None:
    assert geo.lookup("198.51.100.1") == GeoResult(city=None, region=None, country="GB")


@pytest.mark.parametrize("ip", ["192.0.2.1", "2001:db8:2::1"])
def test_unknown_address_gives_none(geo: MaxMindGeo, ip: str) -> None:
    assert geo.lookup(ip) is None


@pytest.mark.parametrize("ip", ["not-an-ip", "", "999.1.1.1"])
def test_invalid_address_gives_none(geo: MaxMindGeo, ip: str) -> None:
    assert geo.lookup(ip) is None


def test_repeated_lookups_are_cached(geo: MaxMindGeo) -> None:
    assert geo.lookup("203.0.113.9") is geo.lookup("203.0.113.9")


def test_geo_fills_location_for_an_event_without_one(geo: MaxMindGeo) -> None:
    message = {"type": "page", "messageId": "m", "context": {"ip": "2001:db8:1::42"}}
    assert user_data_of(geo, message) == {
        "ct": sha256_hex("dublin"),
        "st": sha256_hex("l"),
        "country": sha256_hex("ie"),
        "client_ip_address": "2001:db8:1::42",
    }


def test_event_data_wins_over_geo(geo: MaxMindGeo) -> None:
    message = {
        "type": "track",
        "event": "Order Completed",
        "messageId": "m",
        "properties": {"shipping": {"city": "Tacoma", "state": "Oregon"}},
        "context": {"ip": "203.0.113.9", "traits": {"address": {"country": "Canada"}}},
    }
    user_data = user_data_of(geo, message)
    assert user_data["ct"] == sha256_hex("tacoma")
    assert user_data["st"] == sha256_hex("or")
    assert user_data["country"] == sha256_hex("ca")


def test_geo_fills_each_missing_field_on_its_own(geo: MaxMindGeo) -> None:
    message = {
        "type": "page",
        "messageId": "m",
        "context": {"ip": "203.0.113.9", "traits": {"address": {"city": "Bellevue"}}},
    }
    user_data = user_data_of(geo, message)
    assert user_data["ct"] == sha256_hex("bellevue")
    assert user_data["st"] == sha256_hex("wa")
    assert user_data["country"] == sha256_hex("us")


def test_missing_database_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.mmdb"
    with pytest.raises(ConfigError) as caught:
        open_geo(path)
    [line] = caught.value.problems
    assert line.startswith(f"geoip_db: cannot open {path}")


def test_file_that_is_not_a_database_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.mmdb"
    path.write_bytes(b"this is not a maxmind database" * 10)
    with pytest.raises(ConfigError, match="geoip_db: cannot open"):
        open_geo(path)


def test_country_database_is_refused(tmp_path: Path) -> None:
    path = write_db(
        tmp_path / "country.mmdb",
        {"203.0.113.0/24": {"country": {"iso_code": "US"}}},
        "GeoLite2-Country",
    )
    with pytest.raises(ConfigError, match="a City database is needed"):
        open_geo(path)
