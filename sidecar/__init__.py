"""capi-sidecar: a durable edge forwarder of analytics events to Meta's Conversions API.

Read the package in the order an event travels:
``ingest`` (HTTP in) → ``outbox`` (SQLite) → ``mapping`` (Meta payload) →
``delivery`` (Graph API out) → ``telemetry`` (traces and metrics).
``app`` wires them together and ``cli`` is the entry point.
"""

__version__ = "0.1.0"
