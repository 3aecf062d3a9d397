"""The retry policy, exhaustively: every error class of SPEC §4, backoff, Retry-After."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.policy import (
    MAX_RETRY_AFTER,
    Verdict,
    backoff,
    classify,
    network_error,
    next_attempt,
    parse_graph_error,
    parse_retry_after,
)

NOW = 1_790_000_000.0


def graph(code: Any, subcode: Any = None, **extra: Any) -> dict[str, Any]:
    error: dict[str, Any] = {"message": f"error {code}", "type": "OAuthException", "code": code,
                             "fbtrace_id": "AbCdEf123", **extra}
    if subcode is not None:
        error["error_subcode"] = subcode
    return {"error": error}


TRANSIENT_CODES = [1, 2, 4, 17, 32, 341, 368, 613, 5000, *range(80000, 80015), -1, -2, -100]
CREDENTIAL_CODES = [190, 102, 104, 10, 3, 200, 201, 250, 299]


@pytest.mark.parametrize("code", TRANSIENT_CODES)
@pytest.mark.parametrize("status", [400, 403, 500])
def test_throttling_and_temporary_codes_are_transient(code: int, status: int) -> None:
    assert classify(status, graph(code)).verdict is Verdict.TRANSIENT


@pytest.mark.parametrize("code", [100, 190, 12345])
def test_any_error_marked_is_transient_is_transient(code: int) -> None:
    assert classify(400, graph(code, is_transient=True)).verdict is Verdict.TRANSIENT


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599])
@pytest.mark.parametrize("body", [None, {}, {"error": "text"}, "<html>bad gateway</html>"])
def test_a_server_error_without_a_graph_body_is_transient(status: int, body: Any) -> None:
    assert classify(status, body).verdict is Verdict.TRANSIENT


@pytest.mark.parametrize("body", [None, graph(100, 2804001), graph(190), graph(12345)])
def test_http_429_is_transient_whatever_the_body_says(body: Any) -> None:
    assert classify(429, body).verdict is Verdict.TRANSIENT


@pytest.mark.parametrize("status", [400, 401, 403, 404, 408, 413])
def test_a_client_error_without_a_graph_body_keeps_the_events(status: int) -> None:
    # A proxy in between said no; nothing says the events are bad.
    assert classify(status, None).verdict is Verdict.TRANSIENT


@pytest.mark.parametrize("kind", ["timeout", "network error: ClientConnectorError"])
def test_a_request_without_an_answer_is_transient(kind: str) -> None:
    result = network_error(kind)
    assert result.verdict is Verdict.TRANSIENT
    assert result.error is not None and result.error.message == kind


@pytest.mark.parametrize("subcode", [2804001, 2804003, 2804019, 2804050, None])
def test_code_100_is_an_invalid_payload(subcode: int | None) -> None:
    result = classify(400, graph(100, subcode))
    assert result.verdict is Verdict.INVALID
    assert result.error is not None
    assert (result.error.code, result.error.subcode) == (100, subcode)


@pytest.mark.parametrize("code", CREDENTIAL_CODES)
@pytest.mark.parametrize("status", [400, 401, 403])
def test_credential_and_permission_codes_pause_the_destination(code: int, status: int) -> None:
    assert classify(status, graph(code)).verdict is Verdict.CREDENTIALS


def test_code_100_subcode_33_means_the_pixel_is_unreachable_and_pauses() -> None:
    assert classify(400, graph(100, 33)).verdict is Verdict.CREDENTIALS


@pytest.mark.parametrize("code", [2500, 803, 2635, 99999])
def test_an_unknown_code_on_a_4xx_pauses_instead_of_dead_lettering(code: int) -> None:
    assert classify(400, graph(code)).verdict is Verdict.CREDENTIALS


@pytest.mark.parametrize("code", [2500, 803, 99999])
def test_an_unknown_code_on_a_5xx_is_transient(code: int) -> None:
    assert classify(500, graph(code)).verdict is Verdict.TRANSIENT


@pytest.mark.parametrize("status", [200, 201, 204])
def test_any_2xx_is_success(status: int) -> None:
    assert classify(status, {"events_received": 3}).verdict is Verdict.SUCCESS


def test_the_graph_error_keeps_code_subcode_message_and_fbtrace_id() -> None:
    body = graph("190", "463", error_user_msg="The session has expired.")
    error = parse_graph_error(401, body)
    assert error.as_dict() == {"code": 190, "subcode": 463, "message": "The session has expired.",
                               "fbtrace_id": "AbCdEf123", "http_status": 401}


def test_a_boolean_code_is_not_taken_for_a_number() -> None:
    assert parse_graph_error(400, graph(True)).code is None


# ------------------------------------------------------------------ backoff
@given(attempts=st.integers(-3, 200), base=st.floats(0.001, 10), cap=st.floats(0.001, 600),
       seed=st.integers(0, 2**32))
def test_backoff_stays_within_full_jitter_bounds_and_the_cap(
    attempts: int, base: float, cap: float, seed: int
) -> None:
    delay = backoff(attempts, base=base, cap=cap, rand=random.Random(seed))
    ceiling = min(cap, base * 2 ** max(attempts - 1, 0))
    assert 0 <= delay <= ceiling + 1e-9


@pytest.mark.parametrize("attempts", [1, 4, 12])
def test_backoff_jitter_spreads_over_the_whole_interval(attempts: int) -> None:
    rand = random.Random(7)
    ceiling = min(30.0, 0.5 * 2 ** (attempts - 1))
    delays = [backoff(attempts, base=0.5, cap=30.0, rand=rand) for _ in range(2000)]
    assert min(delays) < 0.05 * ceiling
    assert max(delays) > 0.95 * ceiling
    assert 0.4 * ceiling < sum(delays) / len(delays) < 0.6 * ceiling


def test_backoff_grows_exponentially_until_the_cap() -> None:
    class Top(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b

    got = [backoff(n, base=1.0, cap=300.0, rand=Top()) for n in range(1, 12)]
    assert got == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]


# -------------------------------------------------------------- Retry-After
@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("86400", MAX_RETRY_AFTER),
        ("-5", None),
        ("soon", None),
        ("nan", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_in_seconds(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == expected


def test_retry_after_as_an_http_date_is_the_time_left_until_it() -> None:
    from tests.invariants import http_date

    assert parse_retry_after(http_date(NOW + 90), now=NOW) == pytest.approx(90.0)


def test_retry_after_as_a_date_without_zone_is_read_as_utc() -> None:
    from tests.invariants import http_date

    naive = http_date(NOW + 30).removesuffix(" GMT")
    assert parse_retry_after(naive, now=NOW) == pytest.approx(30.0)


def test_retry_after_in_the_past_means_now_and_far_future_is_capped() -> None:
    from tests.invariants import http_date

    assert parse_retry_after(http_date(NOW - 600), now=NOW) == 0.0
    assert parse_retry_after(http_date(NOW + 10 * 86400), now=NOW) == MAX_RETRY_AFTER


@given(attempts=st.integers(1, 50), retry_after=st.floats(0, 3600), seed=st.integers(0, 99))
def test_the_next_attempt_is_never_before_retry_after(
    attempts: int, retry_after: float, seed: int
) -> None:
    due = next_attempt(attempts, now=NOW, base=1.0, cap=300.0, rand=random.Random(seed),
                       retry_after=retry_after)
    assert NOW + retry_after <= due <= NOW + max(retry_after, 300.0)
