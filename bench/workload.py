"""The workload: one realistic ~1 KB ``Order Completed`` track call, made unique per request.

Every load generator (wrk's Lua script, the Python loader, the SDK sender and
the backlog prefill) builds its bodies from the same template, so the
ceiling, the sidecar and the SDK path all see the same bytes. The template is
cut at each ``__ID__`` into parts; a body is the parts joined with a fresh id
(``<tag>-<worker>-<counter>``), which makes every messageId, e-mail, user id
and order id distinct: nothing is deduplicated and nothing is served from a
per-person cache.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

PLACEHOLDER = "__ID__"
BATCH_SIZE = 100
TRACK_PATH = "/v1/track"
BATCH_PATH = "/v1/batch"


def template(timestamp: str | None = None) -> dict[str, Any]:
    """The message, with ``__ID__`` where the per-request id goes."""
    ts = timestamp or datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "type": "track",
        "event": "Order Completed",
        "messageId": f"bench-{PLACEHOLDER}",
        "timestamp": ts,
        "userId": f"user-{PLACEHOLDER}",
        "anonymousId": f"anon-{PLACEHOLDER}",
        "properties": {
            "order_id": f"order-{PLACEHOLDER}",
            "email": f"Shopper.{PLACEHOLDER}@Example.com",
            "first_name": "Mary",
            "last_name": "Smith",
            "total": 129.95,
            "currency": "usd",
            "shipping": {"zipcode": "94107-1234", "city": "San Francisco", "state": "California"},
            "products": [
                {"sku": "SKU-1001", "price": 99.95, "quantity": 1, "name": "Wool coat",
                 "category": "Outerwear"},
                {"sku": "SKU-2002", "price": 15.0, "quantity": 2, "name": "Socks",
                 "category": "Accessories"},
            ],
        },
        "context": {
            "ip": "203.0.113.9",
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                         "Chrome/126.0.0.0 Safari/537.36",
            "clientIds": {"fbp": "fb.1.1596403881668.1116446470"},
            "traits": {"address": {"country": "US"}},
            "page": {"url": "https://shop.example/checkout/complete", "path": "/checkout/complete",
                     "referrer": "https://shop.example/cart", "title": "Thank you"},
            "library": {"name": "analytics-python", "version": "2.3.2"},
            "locale": "en-US",
        },
        "integrations": {},
        "sentAt": ts,
    }


class Workload:
    """Bodies for single-event and 100-event batch requests, built from one template."""

    def __init__(self, timestamp: str | None = None, batch_size: int = BATCH_SIZE) -> None:
        self.message = template(timestamp)
        self.batch_size = batch_size
        text = orjson.dumps(self.message).decode()
        self.parts = text.split(PLACEHOLDER)
        self._parts_b = [p.encode() for p in self.parts]

    @property
    def message_bytes(self) -> int:
        return len(self.single("x"))

    def single(self, ident: str) -> bytes:
        return ident.encode().join(self._parts_b)

    def batch(self, prefix: str) -> bytes:
        messages = b",".join(self.single(f"{prefix}-{k}") for k in range(self.batch_size))
        return b'{"batch":[' + messages + b"]}"

    def message_for(self, ident: str) -> dict[str, Any]:
        loaded: dict[str, Any] = orjson.loads(self.single(ident))
        return loaded

    def lua_script(self, *, batch: bool) -> str:
        """A wrk script POSTing a fresh body per request; ``done`` prints one JSON line."""
        parts = ", ".join(f"[==[{p}]==]" for p in self.parts)
        path = BATCH_PATH if batch else TRACK_PATH
        return _LUA.replace("@PARTS@", parts).replace("@PATH@", path).replace(
            "@BATCH@", str(self.batch_size if batch else 0))


# wrk runs one Lua state per thread; setup() numbers them so ids stay unique,
# and the run tag comes as the script argument.
_LUA = r"""
local parts = {@PARTS@}
local batch = @BATCH@
local counter = 0
local tag = "t"
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  tag = (args[1] or "t") .. "-" .. tostring(tid or 0)
end

local function message(ident)
  local out = {}
  for i = 1, #parts do
    out[#out + 1] = parts[i]
    if i < #parts then out[#out + 1] = ident end
  end
  return table.concat(out)
end

local headers = {["Content-Type"] = "application/json"}

function request()
  counter = counter + 1
  local body
  if batch > 0 then
    local msgs = {}
    for k = 1, batch do
      msgs[k] = message(tag .. "-" .. counter .. "-" .. k)
    end
    body = '{"batch":[' .. table.concat(msgs, ",") .. ']}'
  else
    body = message(tag .. "-" .. counter)
  end
  return wrk.format("POST", "@PATH@", headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"non_2xx":%d,"errors":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean,
    latency.max))
end
"""
