"""Configuration: the settings model, its sources and its validation.

Owns everything the sidecar can be told: ``CAPI_*`` environment variables,
an optional YAML file (``--config`` or ``CAPI_CONFIG``) and ``*_FILE``
secrets. Nothing here runs at import time; the entry point calls
:func:`load_settings` once and hands the result to the app factory.

Precedence, highest first: environment variables, the YAML file, defaults.
A secret given both inline and as a file is a configuration error, so an
operator never wonders which one won.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from sidecar.errors import ConfigError

ActionSource = Literal[
    "email",
    "website",
    "app",
    "phone_call",
    "chat",
    "physical_store",
    "system_generated",
    "business_messaging",
    "other",
]
ContentIdField = Literal["sku", "product_id", "variant_id"]

DEFAULT_GRAPH_URL = "https://graph.facebook.com"
DEFAULT_API_VERSION = "v25.0"
SANDBOX_PIXEL_ID = "sandbox-pixel"
SANDBOX_TOKEN = "sandbox-token"  # noqa: S105 - the in-process sandbox's own, not a secret

# Settings that a destination may carry, shared by the flat single-destination
# variables and the YAML ``destinations`` list.
DESTINATION_KEYS = (
    "pixel_id",
    "access_token",
    "access_token_file",
    "app_secret",
    "app_secret_file",
    "graph_url",
    "graph_api_version",
    "action_source",
    "events_filter",
    "content_id_field",
    "phone_field",
    "phone_default_region",
    "default_currency",
    "test_event_code",
    "property_mappings",
)


def _read_secret_file(path: str, what: str) -> SecretStr:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ValueError(f"{what}: cannot read {path}: {err.strerror}") from err
    value = text.strip()
    if not value:
        raise ValueError(f"{what}: file {path} is empty")
    return SecretStr(value)


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class DestinationSettings(BaseModel):
    """One Meta pixel (dataset) that events are delivered to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(default="default", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    pixel_id: str = Field(min_length=1)
    access_token: SecretStr | None = None
    access_token_file: str | None = None
    app_secret: SecretStr | None = None
    app_secret_file: str | None = None
    graph_url: str = DEFAULT_GRAPH_URL
    graph_api_version: str = Field(default=DEFAULT_API_VERSION, pattern=r"^v\d+\.\d+$")
    action_source: ActionSource = "website"
    events_filter: tuple[str, ...] = ()
    content_id_field: ContentIdField = "sku"
    phone_field: str | None = None
    phone_default_region: str | None = None
    default_currency: str = Field(default="USD", pattern=r"^[A-Za-z]{3}$")
    test_event_code: str | None = None
    property_mappings: dict[str, str] = Field(default_factory=dict)
    sandbox: bool = False

    @field_validator("events_filter", mode="before")
    @classmethod
    def _filter_list(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("graph_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("graph_url must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("default_currency")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()

    @field_validator("phone_default_region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        import phonenumbers  # local: only needed when the option is set

        region = value.upper()
        if phonenumbers.country_code_for_region(region) == 0:
            raise ValueError(f"unknown phone region {value!r} (use an ISO 3166 code such as US)")
        return region

    @model_validator(mode="after")
    def _secrets(self) -> DestinationSettings:
        for key in ("access_token", "app_secret"):
            inline = getattr(self, key)
            path = getattr(self, f"{key}_file")
            if inline is not None and path:
                raise ValueError(f"{key} and {key}_file are both set; keep one")
            if path:
                object.__setattr__(self, key, _read_secret_file(path, f"{key}_file"))
        if self.access_token is None:
            raise ValueError("access_token (or access_token_file) is required")
        from sidecar.mapping import validate_property_mappings

        problems = validate_property_mappings(self.property_mappings)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def token(self) -> str:
        assert self.access_token is not None  # enforced by the validator
        return self.access_token.get_secret_value()


class _YamlSource(PydanticBaseSettingsSource):
    """Reads the YAML file named by ``config_file`` (init) or ``CAPI_CONFIG``."""

    def __init__(self, settings_cls: type[BaseSettings], path: str | None) -> None:
        super().__init__(settings_cls)
        self._path = path

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # pragma: no cover - __call__ does the work

    def __call__(self) -> dict[str, Any]:
        if not self._path:
            return {}
        try:
            text = Path(self._path).read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError([f"config file {self._path}: {err.strerror}"]) from err
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError([f"config file {self._path}: not valid YAML: {err}"]) from err
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ConfigError([f"config file {self._path}: top level must be a mapping"])
        return data


class Settings(BaseSettings):
    """Every setting of the sidecar. Environment prefix ``CAPI_``."""

    model_config = SettingsConfigDict(
        env_prefix="CAPI_", extra="forbid", frozen=True, env_ignore_empty=True
    )

    # --- service ---------------------------------------------------------
    db_path: Path = Path("capi-sidecar.db")
    listen: str = "127.0.0.1:8790"
    ops_listen: str = "127.0.0.1:9790"
    write_key: SecretStr | None = None
    write_key_file: str | None = None
    geoip_db: Path | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    # --- ingest limits ---------------------------------------------------
    max_message_bytes: int = Field(default=32 * 1024, ge=1024)
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=4096)
    max_batch_messages: int = Field(default=2000, ge=1)
    mapping_workers: int = Field(default=1, ge=0, le=16,
                                 description="processes that map large batch bodies")

    # --- outbox ----------------------------------------------------------
    outbox_cap: int = Field(default=1_000_000, ge=1, description="pending deliveries before 503")
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    retention_delivered_seconds: float = Field(default=24 * 3600, ge=0)
    retention_dead_seconds: float = Field(default=7 * 24 * 3600, ge=0)

    # --- delivery --------------------------------------------------------
    batch_size: int = Field(default=1000, ge=1, le=1000)
    concurrency: int = Field(default=4, ge=1, le=64)
    linger_ms: float = Field(default=25.0, ge=0)
    request_timeout_seconds: float = Field(default=15.0, gt=0)
    lease_seconds: float = Field(default=60.0, gt=0)
    backoff_base_seconds: float = Field(default=1.0, gt=0)
    backoff_cap_seconds: float = Field(default=300.0, gt=0)
    paused_retry_seconds: float = Field(default=60.0, gt=0)
    max_event_age_seconds: float = Field(default=7 * 24 * 3600 - 600, gt=0)
    drain_budget_seconds: float = Field(default=20.0, ge=0)

    # --- single destination (flat variables) ----------------------------
    pixel_id: str | None = None
    access_token: SecretStr | None = None
    access_token_file: str | None = None
    app_secret: SecretStr | None = None
    app_secret_file: str | None = None
    graph_url: str = DEFAULT_GRAPH_URL
    graph_api_version: str = DEFAULT_API_VERSION
    action_source: ActionSource = "website"
    events_filter: Annotated[tuple[str, ...], NoDecode] = ()
    content_id_field: ContentIdField = "sku"
    phone_field: str | None = None
    phone_default_region: str | None = None
    default_currency: str = "USD"
    test_event_code: str | None = None
    property_mappings: dict[str, str] = Field(default_factory=dict)

    # --- several destinations (YAML) -------------------------------------
    destinations: tuple[DestinationSettings, ...] = ()

    config_file: str | None = Field(default=None, exclude=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        init = init_settings()
        path = init.get("config_file") or os.environ.get("CAPI_CONFIG")
        return (init_settings, env_settings, _YamlSource(settings_cls, path))

    @field_validator("events_filter", mode="before")
    @classmethod
    def _filter_list(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("listen", "ops_listen")
    @classmethod
    def _address(cls, value: str) -> str:
        parse_address(value)
        return value

    @model_validator(mode="after")
    def _secrets(self) -> Settings:
        if self.write_key is not None and self.write_key_file:
            raise ValueError("write_key and write_key_file are both set; keep one")
        if self.write_key_file:
            object.__setattr__(
                self, "write_key", _read_secret_file(self.write_key_file, "write_key_file")
            )
        if self.backoff_cap_seconds < self.backoff_base_seconds:
            raise ValueError("backoff_cap_seconds must be at least backoff_base_seconds")
        if self.lease_seconds <= self.request_timeout_seconds:
            raise ValueError("lease_seconds must be longer than request_timeout_seconds")
        if self.destinations and self.pixel_id:
            raise ValueError("set either pixel_id (one destination) or destinations, not both")
        names = [d.name for d in self.destinations]
        if len(set(names)) != len(names):
            raise ValueError("destination names must be unique")
        return self

    def resolved_destinations(
        self, sandbox_url: str | None = None
    ) -> tuple[DestinationSettings, ...]:
        """The destinations to deliver to.

        With neither ``pixel_id`` nor ``destinations`` configured, the one
        destination is the in-process sandbox at ``sandbox_url``.
        """
        if self.destinations:
            return self.destinations
        flat = {key: getattr(self, key) for key in DESTINATION_KEYS}
        flat = {k: v for k, v in flat.items() if v is not None}
        if self.pixel_id:
            return (DestinationSettings(name="default", **flat),)
        if sandbox_url is None:
            return ()
        flat.update(
            pixel_id=SANDBOX_PIXEL_ID,
            access_token=SecretStr(SANDBOX_TOKEN),
            graph_url=sandbox_url,
            sandbox=True,
        )
        flat.pop("access_token_file", None)
        return (DestinationSettings(name="sandbox", **flat),)

    @property
    def needs_sandbox(self) -> bool:
        return not self.destinations and not self.pixel_id


def parse_address(value: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) into its parts."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not host:port")
    return host.strip("[]") or "127.0.0.1", int(port)


def _format_error(err: ValidationError) -> list[str]:
    lines = []
    for item in err.errors():
        parts = [str(part) for part in item["loc"] if part != "__root__"]
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            msg = "unknown setting (check the spelling)"
        if not parts:
            lines.append(msg)
        elif len(parts) == 1:
            lines.append(f"{parts[0]} (CAPI_{parts[0].upper()}): {msg}")
        else:
            lines.append(f"{'.'.join(parts)}: {msg}")
    return lines


def unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """``CAPI_*`` variables that no setting reads (likely typos).

    A warning, not an error: Kubernetes injects ``<SERVICE>_PORT``-style
    variables that may share the prefix.
    """
    known = {f"CAPI_{name.upper()}" for name in Settings.model_fields} | {"CAPI_CONFIG"}
    return sorted(k for k in environ if k.startswith("CAPI_") and k not in known)


def load_settings(config_file: str | None = None, **overrides: Any) -> Settings:
    """Build the settings from the environment and the YAML file.

    Raises :class:`ConfigError` holding one line per problem.
    """
    try:
        settings = Settings(config_file=config_file, **overrides)
        # The flat single-destination variables become a destination here, so
        # their problems stop start-up too.
        settings.resolved_destinations()
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None
    return settings
