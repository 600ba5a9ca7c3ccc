"""One frozen, validated `Config`, loaded from flags > environment (`FERRY_*`) > TOML file > defaults.

Every setting is declared once in `SETTINGS`; its environment variable is `FERRY_<NAME>` and its
flag `--<name-with-dashes>`. Unknown keys (in the TOML file or as `FERRY_*` variables) and bad
values are startup errors that name the key and the source.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


class ConfigError(Exception):
    """A setting is unknown or has a bad value; the message names it and where it came from."""


@dataclass(frozen=True, slots=True)
class Config:
    # network
    host: str = "0.0.0.0"
    port: int = 8080
    allowed_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()  # addresses/CIDRs whose X-Forwarded-For is believed
    handshake_timeout: float = 5.0  # seconds for a client to finish its HTTP upgrade request
    max_handshakes: int = 1024  # unfinished upgrade requests at once (all clients)
    max_handshakes_per_ip: int = 32  # unfinished upgrade requests at once from one address
    # storage
    log: str = "wal"  # wal | memory (memory keeps nothing across restarts)
    wal_dir: str = "./data/wal"
    wal_sync: str = "fsync"  # fsync | write (page cache only: unsafe on power loss)
    wal_segment_bytes: int = 64 * 1024 * 1024
    wal_max_batch_delay_ms: float = 0.0
    history_size: int = 1000
    history_channel_bytes: int = 1024 * 1024  # history bytes per channel
    history_total_bytes: int = 256 * 1024 * 1024  # history bytes over all channels
    db_url: str = "sqlite:///./data/ferry.db"
    replayer: bool = True
    node_id: str = field(default_factory=socket.gethostname)
    # auth
    auth: str = "none"  # none | jwt
    jwt_secret: str = ""
    admin_token: str = ""
    jwt_max_ttl: float = 86400.0  # longest token lifetime accepted (exp - now); 0: any
    # limits
    max_frame_bytes: int = 64 * 1024
    max_outbox_bytes: int = 4 * 1024 * 1024
    max_connections: int = 20_000
    max_connections_per_user: int = 1000  # 0: no limit
    max_connections_per_ip: int = 1000  # 0: no limit
    max_subscriptions: int = 1000
    max_channels: int = 100_000  # channels held in memory (idle ones are forgotten first)
    max_channels_per_user: int = 10_000  # channels one user may have created and held
    max_data_depth: int = 32  # nesting of arrays/maps inside a published value
    publish_rate: float = 1000.0  # sustained publishes/s per connection
    publish_burst: int = 2000
    rate_abuse_limit: int = 100  # rate_limited errors within one window before close 4429
    idle_timeout: float = 60.0  # seconds without any frame from the client before a ping
    ping_timeout: float = 20.0  # seconds to answer that ping before the connection is closed
    # observability
    stats_interval: float = 1.0
    tail_rate: int = 50  # $sys.tail messages per second at most
    log_level: str = "info"
    log_format: str = "text"  # text | json
    dashboard_dir: str = ""  # default: dashboard/dist next to the package
    dashboard_max_bytes: int = 32 * 1024 * 1024  # the dashboard's files are served from memory
    webhook_url: str = ""
    alert_backlog_records: int = 1_000_000
    alert_fsync_ms: float = 500.0
    # lifecycle
    shutdown_timeout: float = 10.0
    build_commit: str = ""  # the commit this build came from (the image sets it); /healthz

    @property
    def auth_enabled(self) -> bool:
        return self.auth == "jwt"


def _choice(*allowed: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in allowed else f"must be one of {', '.join(allowed)}"

    check.choices = allowed  # type: ignore[attr-defined]
    return check


def _positive(value: Any) -> str | None:
    return None if value > 0 else "must be > 0"


def _non_negative(value: Any) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _networks(value: Any) -> str | None:
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            return f"{item!r} is not an IP address or CIDR"
    return None


def _port(value: Any) -> str | None:
    return None if 0 <= value <= 65535 else "must be a port number 0..65535"


CHECKS: dict[str, Callable[[Any], str | None]] = {
    "port": _port,
    "log": _choice("wal", "memory"),
    "wal_sync": _choice("fsync", "write"),
    "wal_segment_bytes": lambda v: None if v >= 4096 else "must be >= 4096",
    "wal_max_batch_delay_ms": _non_negative,
    "history_size": _non_negative,
    "history_channel_bytes": _non_negative,
    "history_total_bytes": _non_negative,
    "trusted_proxies": _networks,
    "handshake_timeout": _positive,
    "max_handshakes": _positive,
    "max_handshakes_per_ip": _positive,
    "jwt_max_ttl": _non_negative,
    "max_connections_per_user": _non_negative,
    "max_connections_per_ip": _non_negative,
    "max_channels": _positive,
    "max_channels_per_user": _positive,
    "max_data_depth": lambda v: None if 1 <= v <= 256 else "must be 1..256",
    "auth": _choice("none", "jwt"),
    # A WAL record holds at most 4 MiB of payload: keep every accepted frame below that.
    "max_frame_bytes": lambda v: None if 256 <= v <= 4_000_000 else "must be 256..4000000",
    "max_outbox_bytes": lambda v: None if v >= 1024 else "must be >= 1024",
    "max_connections": _positive,
    "max_subscriptions": _positive,
    "publish_rate": _positive,
    "publish_burst": _positive,
    "rate_abuse_limit": _positive,
    "idle_timeout": _positive,
    "ping_timeout": _positive,
    "stats_interval": _positive,
    "tail_rate": _non_negative,
    "dashboard_max_bytes": _non_negative,
    "log_level": _choice("debug", "info", "warning", "error"),
    "log_format": _choice("text", "json"),
    "shutdown_timeout": _positive,
    "alert_backlog_records": _positive,
    "alert_fsync_ms": _positive,
    "node_id": lambda v: None if 0 < len(v) <= 64 else "must be 1..64 characters",
}

HELP: dict[str, str] = {
    "host": "address to listen on",
    "port": "port for /ws, /metrics, /healthz, /readyz and the dashboard",
    "allowed_origins": "comma-separated Origin allow-list for /ws (empty: any origin)",
    "trusted_proxies": "comma-separated proxy addresses/CIDRs whose X-Forwarded-For is trusted",
    "handshake_timeout": "seconds a client has to send its whole upgrade request",
    "max_handshakes": "unfinished upgrade requests at once (more are dropped)",
    "max_handshakes_per_ip": "unfinished upgrade requests at once from one address",
    "log": "durability log: wal (default) or memory (nothing survives a restart)",
    "wal_dir": "write-ahead log directory",
    "wal_sync": "fsync (default) or write (page cache only, unsafe on power loss)",
    "wal_segment_bytes": "WAL segment size in bytes",
    "wal_max_batch_delay_ms": "extra time a WAL batch may wait to grow (ms)",
    "history_size": "messages per channel kept for `sub` with `since`",
    "history_channel_bytes": "history bytes kept per channel (oldest dropped first)",
    "history_total_bytes": "history bytes kept over all channels (oldest dropped first)",
    "db_url": "sqlite:///path or mysql://user:pass@host:port/db",
    "replayer": "run the WAL -> database replayer inside serve",
    "node_id": "this node's id in the WAL and the database (default: hostname)",
    "auth": "none or jwt",
    "jwt_secret": "HS256 secret for client tokens (>= 32 bytes)",
    "admin_token": "token that grants everything, $sys.* included (>= 32 bytes)",
    "jwt_max_ttl": "longest accepted token lifetime in seconds (exp - now); 0: any",
    "max_frame_bytes": "largest frame a client may send (close 1009 past it)",
    "max_outbox_bytes": "unsent bytes per connection before close 4408 (slow consumer)",
    "max_connections": "connections at once (HTTP 503 past it)",
    "max_connections_per_user": "connections at once per user (HTTP 429 past it; 0: no limit)",
    "max_connections_per_ip": "connections at once per client address (HTTP 429 past it; 0: no limit)",
    "max_subscriptions": "channels per connection",
    "max_channels": "channels held in memory; idle ones are forgotten first",
    "max_channels_per_user": "channels one user may have created and the node still holds",
    "max_data_depth": "deepest nesting of arrays/maps accepted in a published value",
    "publish_rate": "publishes per second per connection (token bucket rate)",
    "publish_burst": "publish token bucket size",
    "rate_abuse_limit": "rate_limited errors in 10 s before close 4429",
    "idle_timeout": "seconds of client silence before the server pings",
    "ping_timeout": "seconds to answer the ping before the connection is dropped",
    "stats_interval": "seconds between $sys.stats snapshots",
    "tail_rate": "$sys.tail messages per second at most",
    "log_level": "debug, info, warning or error",
    "log_format": "text or json",
    "dashboard_dir": "directory served at / (default: dashboard/dist)",
    "dashboard_max_bytes": "bytes of dashboard files held in memory and served (more are left out)",
    "webhook_url": "Discord-compatible webhook for operational notifications",
    "alert_backlog_records": "notify when the replay backlog passes this many records",
    "alert_fsync_ms": "notify when the WAL's fsync p99 passes this (ms)",
    "shutdown_timeout": "seconds a graceful shutdown may take",
    "build_commit": "commit this build came from (set by the image; /healthz reports it)",
}

# HS256 keys and the admin token: shorter ones can be brute-forced offline from one token.
MIN_SECRET_BYTES = 32
GENERATE_SECRET = "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`"

FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(Config)}
ENV_PREFIX = "FERRY_"


def _kind(name: str) -> type:
    annotation = str(FIELDS[name].type)
    if annotation.startswith("tuple"):
        return tuple
    return {"int": int, "float": float, "bool": bool, "str": str}[annotation]


def _coerce(name: str, value: Any, source: str) -> Any:
    """Turn a raw value (string from env/flags, or a TOML value) into the field's type."""
    kind = _kind(name)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind is tuple:
            items = value if isinstance(value, list) else str(value).split(",")
            return tuple(str(item).strip() for item in items if str(item).strip())
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(str(value).replace("_", ""))
        if kind is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if not isinstance(value, str):
            raise ValueError(value)
        return value
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {name} must be {kind.__name__}, got {value!r}") from None


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


_METAVARS = {bool: "{true,false}", tuple: "A,B,...", int: "N", float: "X"}
# Defaults that are not a constant, or not worth printing, as --help shows them.
_SHOWN_DEFAULTS = {"node_id": "the hostname", "dashboard_dir": "dashboard/dist"}


def _metavar(name: str) -> str:
    choices = getattr(CHECKS.get(name), "choices", None)
    if choices:
        return "{" + ",".join(choices) + "}"
    kind = _kind(name)
    return _METAVARS.get(kind) or ("URL" if name.endswith("_url") else name.split("_")[-1].upper())


def _shown_default(name: str) -> str:
    if name in _SHOWN_DEFAULTS:
        return _SHOWN_DEFAULTS[name]
    field = FIELDS[name]
    value = field.default
    if value in ("", ()):
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One `--name` flag per setting; absent flags stay None so lower sources show through."""
    parser.add_argument("--config", metavar="FILE", help="TOML file with settings")
    for name in FIELDS:
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            metavar=_metavar(name),
            help=f"{HELP.get(name, name)} (default: {_shown_default(name)}; env {env_name(name)})",
        )


def load(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Config:
    """Build the Config: flags > env > file > defaults; raise ConfigError on anything wrong."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}

    if config_file:
        try:
            with open(config_file, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_file}: not valid TOML: {exc}") from None
        for key, value in data.items():
            name = key.replace("-", "_")
            if name not in FIELDS:
                raise ConfigError(f"{config_file}: unknown setting {key!r}")
            values[name] = _coerce(name, value, config_file)

    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name not in FIELDS:
            raise ConfigError(f"environment: unknown setting {key}")
        values[name] = _coerce(name, value, f"environment {key}")

    for name, value in (flags or {}).items():
        if value is None or name not in FIELDS:
            continue
        values[name] = _coerce(name, value, f"flag --{name.replace('_', '-')}")

    for name, value in values.items():
        check = CHECKS.get(name)
        problem = check(value) if check else None
        if problem:
            raise ConfigError(f"{name} = {value!r}: {problem}")

    config = Config(**values)
    if config.auth_enabled and not config.jwt_secret:
        raise ConfigError(
            f"auth = 'jwt' needs jwt_secret (FERRY_JWT_SECRET); generate one with {GENERATE_SECRET}"
        )
    for name in ("jwt_secret", "admin_token"):
        secret: str = getattr(config, name)
        if secret and len(secret.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"{name} ({env_name(name)}) is {len(secret.encode())} bytes; it must be at least "
                f"{MIN_SECRET_BYTES} bytes: generate one with {GENERATE_SECRET}"
            )
    if config.max_outbox_bytes < config.max_frame_bytes:
        raise ConfigError("max_outbox_bytes must be >= max_frame_bytes")
    return config
