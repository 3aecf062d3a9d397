"""Every golden mapping case through the real sidecar and the real sandbox.

The unit corpus (``test_mapping_golden``) checks ``Mapper`` alone; this runs
the same messages through HTTP ingest, the SQLite outbox and the drainer, and
compares what the sandbox (a strict Graph API stand-in) received with the
golden payload. Two adjustments keep the cases valid end to end: the
timestamp is set to now (Meta refuses events older than 7 days), and a
message with neither userId nor anonymousId (which ingest refuses, as
Segment's API does) gets an anonymousId, so its payload gains that
external_id.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Sandbox

GOLDEN = Path(__file__).parent / "data" / "golden"
# Geo cases use a table stand-in for the MaxMind reader; test_geo covers the real one.
CASES = [p for p in sorted(GOLDEN.glob("*.json")) if "geo" not in json.loads(p.read_text())]
ANON = "e2e-anonymous-id"


def prepared(case: dict[str, Any], now: int) -> tuple[dict[str, Any], dict[str, Any]]:
    message = copy.deepcopy(case["message"])
    expected = copy.deepcopy(case["expected"])
    message.pop("originalTimestamp", None)
    message["timestamp"] = datetime.fromtimestamp(now, UTC).isoformat()
    needs_id = message.get("type") in ("track", "page", "screen")
    if needs_id and not (message.get("userId") or message.get("anonymousId")):
        message["anonymousId"] = ANON
        if expected["outcome"] == "mapped":
            expected["payload"]["user_data"]["external_id"] = [
                hashlib.sha256(ANON.encode()).hexdigest()
            ]
    if expected["outcome"] == "mapped":
        expected["payload"]["event_time"] = now
    return message, expected


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
async def test_the_golden_case_arrives_at_the_sandbox_as_its_payload(
    path: Path, sandbox: Sandbox, make_sidecar: Any
) -> None:
    case = json.loads(path.read_text(encoding="utf-8"))
    sc = await make_sidecar(sandbox, **case["config"])
    now = int(time.time())
    message, expected = prepared(case, now)

    resp = await sc.post("/v1/batch", {"batch": [message]})
    assert resp.status == 200, await resp.text()

    mid = message["messageId"]
    if expected["outcome"] == "mapped":
        await sc.wait_for(lambda: sandbox.state.events_with_id(mid))
        (received,) = sandbox.state.events_with_id(mid)
        assert received == expected["payload"], case["description"]
        return
    status = await sc.event(mid)
    assert status is not None
    state = status["destinations"]["default"]
    assert state["state"] == expected["outcome"], case["description"]
    assert state["reason"] == expected["reason"]
    assert not sandbox.state.events_with_id(mid)
