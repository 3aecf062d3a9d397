"""A mapping worker: a child process that parses, checks and maps batch bodies.

The server's event loop holds the GIL for everything it does, so on its own
it uses one core however many the pod has. Parsing, checking and mapping a
batch is about half of the CPU an ingested event costs, and it needs nothing
but the body and the mapping configuration, so the server hands large bodies
to worker processes (:mod:`sidecar.mapping_pool`) and keeps the rest (HTTP,
the SQLite commit, delivery) for itself.

Protocol, over the worker's stdin and stdout (private pipes to its parent):
each frame is a 4-byte big-endian length and a :mod:`marshal` payload. The
first frame configures the worker; every later one is a request
``(endpoint, body, now, traceparent)`` answered, in order, by one reply:
``(0, wire)`` with :func:`sidecar.messages.to_wire`'s tuple, ``(1, status,
message)`` for a body refused whole, ``(2, error)`` for a failure of the
worker itself (the server then maps that body in-process). End of input
ends the worker. ``marshal`` is safe here because both ends are this
program; it is several times faster than ``pickle`` for these tuples.

No access token or other secret crosses the pipe: only the settings that
shape mapping. The worker's stderr is the server's.

Run by the server as ``python -m sidecar.mapworker``; not a user command.
"""

from __future__ import annotations

import logging
import marshal
import struct
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from sidecar.mapping import Mapper
from sidecar.messages import BadRequest, Limits, prepare_body, to_wire

if TYPE_CHECKING:
    from sidecar.config import DestinationSettings
    from sidecar.geo import GeoLookup

log = logging.getLogger("sidecar.mapworker")

HEADER = struct.Struct(">I")
# The DestinationSettings fields that shape mapping: what the worker is sent.
MAPPING_FIELDS = (
    "name", "action_source", "events_filter", "content_id_field", "phone_field",
    "phone_default_region", "default_currency", "property_mappings",
)


@dataclass(frozen=True, slots=True)
class MappingSettings:
    """The mapping share of a destination's settings, as the worker receives it."""

    name: str
    action_source: str
    events_filter: tuple[str, ...]
    content_id_field: str
    phone_field: str | None
    phone_default_region: str | None
    default_currency: str
    property_mappings: dict[str, str]


def config_frame(
    destinations: list[DestinationSettings], geoip_db: Path | None, limits: Limits
) -> bytes:
    """The first frame a worker reads: everything it needs to build its mappers."""
    dests = [
        {name: (list(value) if isinstance(value, tuple) else value)
         for name in MAPPING_FIELDS for value in [getattr(d, name)]}
        for d in destinations
    ]
    return marshal.dumps({
        "destinations": dests,
        "geoip_db": str(geoip_db) if geoip_db is not None else None,
        "limits": (limits.max_message_bytes, limits.max_request_bytes, limits.max_batch_messages),
    })


def read_frame(stream: IO[bytes]) -> bytes | None:
    head = stream.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    (size,) = HEADER.unpack(head)
    data = stream.read(size)
    return data if len(data) == size else None


def write_frame(stream: IO[bytes], payload: bytes) -> None:
    stream.write(HEADER.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def serve(inp: IO[bytes], out: IO[bytes]) -> int:
    first = read_frame(inp)
    if first is None:
        return 0
    config: dict[str, Any] = marshal.loads(first)  # noqa: S302 - our parent, our pipe
    geo: GeoLookup | None = None
    if config["geoip_db"] is not None:
        from sidecar.geo import open_geo

        geo = open_geo(Path(config["geoip_db"]))
    mappers = {}
    for d in config["destinations"]:
        d["events_filter"] = tuple(d["events_filter"])
        settings = cast("DestinationSettings", MappingSettings(**d))
        mappers[d["name"]] = Mapper(settings, geo)
    limits = Limits(*config["limits"])
    while True:
        frame = read_frame(inp)
        if frame is None:
            return 0
        endpoint, body, now, traceparent = marshal.loads(frame)  # noqa: S302 - as above
        reply: tuple[Any, ...]
        try:
            prepared = prepare_body(endpoint, body, limits, mappers, now=now,
                                    traceparent=traceparent)
            reply = (0, to_wire(prepared))
        except BadRequest as err:
            reply = (1, err.status, err.message)
        except Exception as err:  # the server maps this body itself
            # The exception's type and where it was raised, not its message:
            # a message can quote a value of the event, personal data included.
            where = "".join(traceback.format_tb(err.__traceback__))
            log.error("mapping worker failed on a request (%s):\n%s", type(err).__name__, where)
            reply = (2, type(err).__name__)
        write_frame(out, marshal.dumps(reply))


def main() -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return serve(sys.stdin.buffer, sys.stdout.buffer)
    except (BrokenPipeError, KeyboardInterrupt):
        return 0


if __name__ == "__main__":
    sys.exit(main())
