"""The golden corpus: every file in tests/data/golden is one event → payload pair.

Regenerate the files with ``tests/data/golden/generate.py`` after changing a
case there; that script states the expected payloads by hand.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from sidecar.config import DestinationSettings
from sidecar.geo import GeoResult
from sidecar.mapping import Dead, Mapped, Mapper, Outcome, Skipped

GOLDEN = Path(__file__).parent / "data" / "golden"
FILES = sorted(GOLDEN.glob("*.json"))


class TableGeo:
    """A GeoLookup answering from a fixed table."""

    def __init__(self, table: Mapping[str, Mapping[str, str | None]]) -> None:
        self._table = {ip: GeoResult(**row) for ip, row in table.items()}

    def lookup(self, ip: str) -> GeoResult | None:
        return self._table.get(ip)


def destination(**overrides: Any) -> DestinationSettings:
    return DestinationSettings(pixel_id="1234567890", access_token=SecretStr("t"), **overrides)


def as_expected(outcome: Outcome) -> dict[str, Any]:
    if isinstance(outcome, Mapped):
        return {"outcome": "mapped", "event_name": outcome.event_name, "payload": outcome.payload}
    kind = "skipped" if isinstance(outcome, Skipped) else "dead"
    assert isinstance(outcome, Skipped | Dead)
    return {"outcome": kind, "event_name": outcome.event_name, "reason": outcome.reason}


def test_corpus_has_at_least_forty_cases() -> None:
    assert len(FILES) >= 40


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_golden_event_maps_to_expected_payload(path: Path) -> None:
    case = json.loads(path.read_text(encoding="utf-8"))
    geo = TableGeo(case["geo"]) if "geo" in case else None
    mapper = Mapper(destination(**case["config"]), geo=geo)

    outcome = mapper.map(case["message"], received_at=case["received_at"], now=case["now"])

    assert as_expected(outcome) == case["expected"], case["description"]
    if isinstance(outcome, Mapped):
        # Plain JSON types only: a round trip through json gives the same thing.
        assert json.loads(json.dumps(outcome.payload, allow_nan=False)) == outcome.payload
        assert type(outcome.payload["event_time"]) is int


def test_golden_corpus_covers_every_event_name_row() -> None:
    names = set()
    for path in FILES:
        expected = json.loads(path.read_text(encoding="utf-8"))["expected"]
        names.add(expected["event_name"])
    assert {
        "PageView",
        "InitiateCheckout",
        "Purchase",
        "AddToCart",
        "ViewContent",
        "Search",
        "Subscribe",
        "identify",
        "group",
        "alias",
    } <= names


def test_golden_corpus_covers_every_user_data_field() -> None:
    fields: set[str] = set()
    for path in FILES:
        payload = json.loads(path.read_text(encoding="utf-8"))["expected"].get("payload", {})
        fields |= set(payload.get("user_data", {}))
    assert fields == {
        "em",
        "ph",
        "fn",
        "ln",
        "ct",
        "st",
        "zp",
        "country",
        "external_id",
        "client_ip_address",
        "client_user_agent",
        "fbc",
        "fbp",
    }
