"""Micro-benchmark of Mapper.map on a typical Order Completed event.

Run: ``.venv/bin/python bench/mapping_bench.py`` (prints µs per event).

Each iteration maps a distinct message (a different e-mail, name, user id,
city and address per call), so nothing is served from a cache that a real
stream of different visitors would miss; the closed-set caches (countries,
states, currencies) stay warm, as they do in production.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from pydantic import SecretStr

from sidecar.config import DestinationSettings
from sidecar.mapping import Mapper

EVENTS = 20_000
ROUNDS = 7


def make_event(i: int) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Order Completed",
        "messageId": f"msg-{i}",
        "timestamp": "2026-03-01T12:00:00.000Z",
        "userId": f"user-{i}",
        "anonymousId": f"anon-{i}",
        "properties": {
            "order_id": f"order-{i}",
            "email": f"Shopper.{i}@Example.com",
            "first_name": "Mary",
            "last_name": f"Smith{i % 97}",
            "total": 129.95,
            "currency": "usd",
            "shipping": {
                "zipcode": f"{10000 + i % 89999}-1234",
                "city": f"Springfield {i % 50}",
                "state": "California",
            },
            "products": [
                {"sku": f"SKU-{i}", "price": 99.95, "quantity": 1, "name": "Coat", "category": "C"},
                {"sku": "SKU-2", "price": 15.0, "quantity": 2, "name": "Socks", "category": "S"},
            ],
        },
        "context": {
            "ip": f"203.0.{i % 250}.{i % 200}",
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0",
            "clientIds": {"fbp": f"fb.1.1596403881668.{i}"},
            "traits": {"address": {"country": "US"}},
            "page": {"url": "https://shop.example/checkout/complete"},
        },
    }


def main() -> None:
    dest = DestinationSettings(pixel_id="1", access_token=SecretStr("bench"))
    mapper = Mapper(dest)
    events = [make_event(i) for i in range(EVENTS)]
    for event in events[:1000]:  # warm the closed-set caches
        mapper.map(event, received_at=1772366400.0, now=1772366500.0)
    results = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for event in events:
            mapper.map(event, received_at=1772366400.0, now=1772366500.0)
        results.append((time.perf_counter() - start) / EVENTS * 1e6)
    print(
        f"Mapper.map, Order Completed (em, fn, ln, address, 2 products, ip, ua, fbp): "
        f"best {min(results):.1f} µs/event, median {statistics.median(results):.1f} µs/event"
    )


if __name__ == "__main__":
    main()
