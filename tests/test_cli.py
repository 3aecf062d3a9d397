"""The operator's verbs: migrate, status, event, dead-letters, test-event."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import pytest

from sidecar.cli import main
from sidecar.sandbox import Fault
from tests.conftest import PIXEL, TOKEN, Sandbox
from tests.invariants import (
    assert_no_loss,
    batch,
    eventually,
    post_batch,
    running_sidecar,
    wait_until_settled,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    import os

    for key in list(os.environ):
        if key.startswith("CAPI_"):
            monkeypatch.delenv(key)
    db = tmp_path / "outbox.db"
    monkeypatch.setenv("CAPI_DB_PATH", str(db))
    return db


async def cli(*argv: str) -> int:
    """Run the command line as an operator would, off the test's event loop."""
    return await asyncio.to_thread(main, list(argv))


async def test_migrate_creates_a_private_database_and_is_idempotent(
    clean_env: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    assert await cli("migrate") == 0
    assert await cli("migrate") == 0
    assert "is up to date" in capsys.readouterr().out
    assert stat.S_IMODE(clean_env.stat().st_mode) == 0o600


@pytest.mark.parametrize("verb", [("event", "m1"), ("dead-letters", "list")])
async def test_read_verbs_refuse_a_database_that_does_not_exist(
    clean_env: Path, capsys: pytest.CaptureFixture[str], verb: tuple[str, ...],
) -> None:
    assert await cli(*verb) == 1
    assert f"no outbox database at {clean_env}" in capsys.readouterr().err
    assert not clean_env.exists()


async def test_event_prints_one_events_delivery_status(
    sandbox: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    messages = batch(1)
    async with running_sidecar(tmp_path, sandbox) as sc:
        assert (await post_batch(sc.session, sc.url, messages)).status == 200
        await wait_until_settled(sc.runtime.settings.db_path)
        capsys.readouterr()
        assert await cli("event", messages[0]["messageId"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["destinations"]["default"]["state"] == "delivered"
        assert "203.0.113.9" not in json.dumps(shown)  # no raw personal data
        assert await cli("event", "no-such-id") == 1
        assert "no event with messageId" in capsys.readouterr().err


async def test_a_dead_letter_is_listed_retried_into_delivery_and_purged(
    sandbox: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    messages = batch(6)
    ids = [m["messageId"] for m in messages]
    poison, other = ids[2], ids[4]
    sandbox.state.inject(Fault(reject_event_ids={poison, other}, times=0))
    async with running_sidecar(tmp_path, sandbox) as sc:
        db = sc.runtime.settings.db_path
        assert (await post_batch(sc.session, sc.url, messages)).status == 200
        await wait_until_settled(db)
        capsys.readouterr()
        assert await cli("dead-letters", "list") == 0
        listed = {d["message_id"]: d for d in json.loads(capsys.readouterr().out)}
        assert set(listed) == {poison, other}
        error = listed[poison]["last_error"]
        assert error["code"] == 100 and error["subcode"] == 2804001 and error["fbtrace_id"]

        sandbox.state.clear_faults()  # the operator fixed the cause
        assert await cli("dead-letters", "retry", "--message-id", poison) == 0
        assert "1 dead letters queued" in capsys.readouterr().out
        await eventually(lambda: sandbox.state.events_with_id(poison), what="redelivery")
        await wait_until_settled(db)

        assert await cli("dead-letters", "purge", "--destination", "default") == 0
        assert "1 dead letters purged" in capsys.readouterr().out
        assert await cli("dead-letters", "list") == 0
        assert json.loads(capsys.readouterr().out) == []
        settled = assert_no_loss(db, set(ids) - {other}, {"default": sandbox.state})
    assert settled.delivered["default"] == set(ids) - {other}


async def test_status_prints_the_running_sidecars_summary(
    sandbox: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running_sidecar(tmp_path, sandbox) as sc:
        monkeypatch.setenv("CAPI_OPS_LISTEN", sc.ops_url.removeprefix("http://"))
        capsys.readouterr()
        assert await cli("status") == 0
        doc = json.loads(capsys.readouterr().out)
    assert doc["ready"] is True
    assert doc["destinations"]["default"]["paused"] is False
    assert TOKEN not in json.dumps(doc)


async def test_status_says_so_when_no_sidecar_answers(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.invariants import free_port

    monkeypatch.setenv("CAPI_OPS_LISTEN", f"127.0.0.1:{free_port()}")
    assert await cli("status") == 1
    assert "no sidecar answers" in capsys.readouterr().err


@pytest.fixture
def destination_env(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    monkeypatch.setenv("CAPI_PIXEL_ID", PIXEL)
    monkeypatch.setenv("CAPI_ACCESS_TOKEN", TOKEN)
    monkeypatch.setenv("CAPI_GRAPH_URL", sandbox.url)
    return sandbox


async def test_test_event_sends_one_event_with_the_code_and_prints_metas_answer(
    destination_env: Sandbox, capsys: pytest.CaptureFixture[str],
) -> None:
    assert await cli("test-event", "--code", "TEST4242") == 0
    out = capsys.readouterr().out
    assert out.startswith("default: HTTP 200") and '"events_received":1' in out
    (request,) = destination_env.state.requests
    assert request.test_event_code == "TEST4242"
    assert TOKEN not in out


async def test_test_event_fails_loudly_on_a_refused_token(
    destination_env: Sandbox, capsys: pytest.CaptureFixture[str],
) -> None:
    destination_env.state.access_token = "not-the-configured-one"
    assert await cli("test-event", "--code", "TEST4242") == 1
    out = capsys.readouterr().out
    assert "HTTP 401" in out and '"code":190' in out
    assert TOKEN not in out


async def test_test_event_needs_a_test_event_code(
    destination_env: Sandbox, capsys: pytest.CaptureFixture[str],
) -> None:
    assert await cli("test-event") == 1
    assert "no test_event_code" in capsys.readouterr().err
    assert destination_env.state.requests == []


async def test_test_event_reports_an_unreachable_graph_api_without_a_traceback(
    destination_env: Sandbox, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.invariants import free_port

    monkeypatch.setenv("CAPI_GRAPH_URL", f"http://127.0.0.1:{free_port()}")
    assert await cli("test-event", "--code", "T1") == 1
    err = capsys.readouterr().err
    assert "no answer from" in err and TOKEN not in err
