"""The comparison path: Meta's official ``facebook-business`` SDK, one event per request.

This is what a hosted CDP destination does with each Segment event: build the
SDK's ``UserData``/``CustomData``/``Event`` objects from the message (the SDK
normalises and hashes the personal fields), then ``EventRequest.execute()``:
one blocking HTTPS request (here plain HTTP to the loopback stand-in) per
event. The Graph URL is redirected by overriding the session's ``GRAPH``
attribute, so the SDK's own request path (``FacebookAdsApi.call`` →
``requests``, form-encoded body) is what is measured.

Run: ``python -m bench.sdk --graph-url URL --pixel P --token T --threads N --duration S``;
prints one JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.workload import Workload

MAX_EVENTS_PER_THREAD = 1_000_000


def _sha256(value: str) -> str:
    return hashlib.sha256(value.strip().encode()).hexdigest()


def sdk_event(message: dict[str, Any]) -> Any:
    """The SDK objects for one of the bench's track calls (Order Completed → Purchase)."""
    from facebook_business.adobjects.serverside.action_source import ActionSource
    from facebook_business.adobjects.serverside.content import Content
    from facebook_business.adobjects.serverside.custom_data import CustomData
    from facebook_business.adobjects.serverside.event import Event
    from facebook_business.adobjects.serverside.user_data import UserData

    props, ctx = message["properties"], message["context"]
    ship = props["shipping"]
    user = UserData(
        email=props["email"], first_name=props["first_name"], last_name=props["last_name"],
        city=ship["city"], state="ca", zip_code=ship["zipcode"][:5],
        country_code=ctx["traits"]["address"]["country"].lower(),
        # The SDK sends external_id as given; a CDP destination hashes it first.
        external_ids=[_sha256(message["userId"]), _sha256(message["anonymousId"])],
        client_ip_address=ctx["ip"], client_user_agent=ctx["userAgent"],
        fbp=ctx["clientIds"]["fbp"],
    )
    products = props["products"]
    custom = CustomData(
        value=props["total"], currency=props["currency"].upper(), order_id=props["order_id"],
        content_ids=[p["sku"] for p in products], content_type="product_group",
        contents=[Content(product_id=p["sku"], quantity=p["quantity"], item_price=p["price"],
                          title=p["name"], category=p["category"]) for p in products],
        num_items=len(products), content_name=products[0]["name"],
        content_category=products[0]["category"],
    )
    return Event(
        event_name="Purchase", event_time=int(time.time()), event_id=message["messageId"],
        action_source=ActionSource.WEBSITE, event_source_url=ctx["page"]["url"],
        user_data=user, custom_data=custom,
    )


def send(args: argparse.Namespace) -> dict[str, Any]:
    from facebook_business.adobjects.serverside.event_request import EventRequest
    from facebook_business.api import FacebookAdsApi

    api = FacebookAdsApi.init(access_token=args.token, api_version=args.api_version,
                              crash_log=False)
    api._session.GRAPH = args.graph_url.rstrip("/")
    workload = Workload(args.timestamp)
    counts = {"ok": 0, "errors": 0}
    lock = threading.Lock()
    started = time.time()
    deadline = time.monotonic() + args.duration

    def worker(wid: int) -> None:
        for n in range(min(MAX_EVENTS_PER_THREAD, args.max_events)):
            if time.monotonic() >= deadline:
                return
            event = sdk_event(workload.message_for(f"{args.tag}-{wid}-{n}"))
            try:
                response = EventRequest(pixel_id=args.pixel, events=[event]).execute()
                good = response.events_received == 1
            except Exception:  # the SDK raises its own request errors
                good = False
            with lock:
                counts["ok" if good else "errors"] += 1

    with ThreadPoolExecutor(args.threads) as pool:
        list(pool.map(worker, range(args.threads)))
    ended = time.time()
    api._session.requests.close()
    return {"ok": counts["ok"], "errors": counts["errors"], "threads": args.threads,
            "started_at": started, "ended_at": ended, "duration_s": ended - started,
            "events_per_s": counts["ok"] / (ended - started)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--graph-url", required=True)
    parser.add_argument("--pixel", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--api-version", default="v25.0")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--max-events", type=int, default=MAX_EVENTS_PER_THREAD)
    parser.add_argument("--tag", default="sdk")
    parser.add_argument("--timestamp", default=None)
    args = parser.parse_args()
    if not args.graph_url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        parser.error("the SDK path sends to the loopback stand-in only")
    print(json.dumps(send(args)))


if __name__ == "__main__":
    main()
