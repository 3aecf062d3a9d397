"""The Graph request body is built by joining stored payload bytes."""

from __future__ import annotations

import hashlib
import hmac

import orjson
import pytest
from pydantic import SecretStr

from sidecar.config import DestinationSettings
from sidecar.delivery import PARTNER_AGENT, Target


@pytest.mark.parametrize("count", [1, 2, 1000])
def test_the_body_holds_every_payload_in_order_and_the_credentials(count: int) -> None:
    dest = DestinationSettings(pixel_id="42", access_token=SecretStr("tok"),
                               app_secret=SecretStr("shh"), test_event_code="TEST1")
    target = Target.build(dest)
    events = [{"event_id": f"e{i}", "event_name": "Purchase"} for i in range(count)]

    body = orjson.loads(target.body([orjson.dumps(e) for e in events]))

    assert body["data"] == events
    assert body["access_token"] == "tok"
    assert body["test_event_code"] == "TEST1"
    assert body["partner_agent"] == PARTNER_AGENT
    assert body["appsecret_proof"] == hmac.new(b"shh", b"tok", hashlib.sha256).hexdigest()
    assert "tok" not in target.url


def test_the_url_is_the_pixel_events_edge_without_the_token() -> None:
    dest = DestinationSettings(pixel_id="42", access_token=SecretStr("tok"),
                               graph_url="http://127.0.0.1:1/", graph_api_version="v26.0")
    assert Target.build(dest).url == "http://127.0.0.1:1/v26.0/42/events"
