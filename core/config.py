"""One frozen, validated `Config`, loaded from flags > environment (`FERRY_*`) > TOML file > defaults.

Every setting is declared once, as a field of `Config` made by `setting()`: its type (a
`Literal` lists the choices), default, check and help. The environment variable
(`FERRY_<NAME>`), the flag (`--<name-with-dashes>`), the TOML key, the checks and `--help`
are all derived from that one declaration. Unknown keys (in the TOML file or as `FERRY_*`
variables) and bad values, defaults included, are startup errors that name the key and the
source. Renamed settings keep their old names working for a while (`RENAMED`), with a warning.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import ipaddress
import logging
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints, overload
from urllib.parse import urlsplit

from common.errors import FerryError

T = TypeVar("T")
Check = Callable[[Any], str | None]

log = logging.getLogger("ferry.config")


class ConfigError(FerryError):
    """A setting is unknown or has a bad value; the message names it and where it came from."""


@dataclass(frozen=True, slots=True)
class Spec:
    """What a setting declares besides its type and default (a field's `metadata["ferry"]`)."""

    help: str
    check: Check | None = None
    shown_default: str | None = None  # for --help, when the default is not a constant


@overload
def setting(
    default: T, *, help: str, shown: str | None = None, check: Check | None = None
) -> T: ...
@overload
def setting(
    *, factory: Callable[[], T], help: str, shown: str, check: Check | None = None
) -> T: ...
def setting(
    default: Any = dataclasses.MISSING,
    *,
    factory: Callable[[], Any] | None = None,
    help: str,
    shown: str | None = None,
    check: Check | None = None,
) -> Any:
    """A `Config` field declaring one setting: its default (or a factory), help and check."""
    metadata = {"ferry": Spec(help, check, shown)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _positive(value: Any) -> str | None:
    return None if value > 0 else "must be > 0"


def _non_negative(value: Any) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _at_least(low: int) -> Check:
    return lambda value: None if value >= low else f"must be >= {low}"


def _between(low: int, high: int) -> Check:
    return lambda value: None if low <= value <= high else f"must be {low}..{high}"


def _networks(value: Any) -> str | None:
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            return f"{item!r} is not an IP address or CIDR"
    return None


# The WAL's segment header holds the node id in 64 bytes of UTF-8 (wal/segment.py).
NODE_ID_MAX_BYTES = 64


def _hostname() -> str:
    return socket.gethostname()


def _api_keys(value: Any) -> str | None:
    names = set()
    for item in value:
        name, sep, secret = item.partition(":")
        if not sep or not name:
            return "each key must be name:secret"
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name) or name in ("admin", "ferry"):
            return f"key name {name!r} must be 1-64 of A-Z a-z 0-9 _ . - (not admin or ferry)"
        if len(secret.encode()) < MIN_SECRET_BYTES:
            return f"the secret of key {name!r} must be at least {MIN_SECRET_BYTES} bytes"
        if name in names:
            return f"key name {name!r} is given twice"
        names.add(name)
    return None


def _node_id(value: Any) -> str | None:
    size = len(value.encode())
    return None if 0 < size <= NODE_ID_MAX_BYTES else f"must be 1..{NODE_ID_MAX_BYTES} UTF-8 bytes"


# A NATS subject token: the cluster id and node ids are parts of subjects (docs/cluster.md).
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _subject_token(value: Any) -> str | None:
    return None if _TOKEN.fullmatch(value) else "must be 1-64 of A-Z a-z 0-9 _ -"


def _cluster_nodes(value: Any) -> str | None:
    for node in value:
        if not _TOKEN.fullmatch(node):
            return f"node id {node!r} must be 1-64 of A-Z a-z 0-9 _ -"
    if len(set(value)) != len(value):
        return "a node id is given twice"
    return None


@dataclass(frozen=True, slots=True)
class Config:
    # network
    host: str = setting("0.0.0.0", help="address to listen on")
    port: int = setting(
        8080,
        help="port for /ws, /metrics, /healthz, /readyz and the dashboard",
        check=_between(0, 65535),
    )
    allowed_origins: tuple[str, ...] = setting(
        (), help="comma-separated Origin allow-list for /ws (empty: any origin)"
    )
    trusted_proxies: tuple[str, ...] = setting(
        (),
        help="comma-separated proxy addresses/CIDRs whose X-Forwarded-For is trusted",
        check=_networks,
    )
    handshake_timeout: float = setting(
        5.0, help="seconds a client has to send its whole upgrade request", check=_positive
    )
    auth_timeout: float = setting(
        10.0,
        help="seconds a connection without a token has to send its `auth` frame (close 4401)",
        check=_positive,
    )
    max_handshakes: int = setting(
        1024, help="unfinished upgrade requests at once (more are dropped)", check=_positive
    )
    max_handshakes_per_ip: int = setting(
        32, help="unfinished upgrade requests at once from one address", check=_positive
    )
    # HTTP API (core/api.py), on when at least one key is configured
    api_host: str = setting("127.0.0.1", help="address of the HTTP API listener")
    api_port: int = setting(8081, help="port of the HTTP API listener", check=_between(0, 65535))
    api_keys: tuple[str, ...] = setting(
        (),
        help="comma-separated name:secret API keys (secrets >= 32 bytes); the name is the "
        "`from` of what the key publishes; none: the API is off",
    )
    api_max_body_bytes: int = setting(
        8 * 1024 * 1024, help="largest HTTP API request body (413 past it)", check=_at_least(1024)
    )
    api_idle_timeout: float = setting(
        60.0, help="seconds an idle HTTP API keep-alive connection is kept", check=_positive
    )
    api_max_connections: int = setting(
        1024, help="HTTP API connections at once (more are closed at once)", check=_positive
    )
    api_rate: float = setting(
        0.0,
        help="messages per second per API key (token bucket, burst 2x; 429 past it); 0: no limit",
        check=_non_negative,
    )
    # storage
    durability: Literal["wal", "memory"] = setting(
        "wal", help="where acks are made durable: wal, or memory (nothing survives a restart)"
    )
    wal_dir: str = setting("./data/wal", help="write-ahead log directory")
    wal_sync: Literal["fsync", "write"] = setting(
        "fsync", help="fsync, or write (page cache only, unsafe on power loss)"
    )
    wal_segment_bytes: int = setting(
        64 * 1024 * 1024, help="WAL segment size in bytes", check=_at_least(4096)
    )
    wal_preallocate: Literal["fallocate", "zero", "off"] = setting(
        "fallocate",
        help="how new WAL segments reserve their size ahead of time, off the ack path: "
        "fallocate, zero (zeros written), or off",
    )
    wal_max_batch_delay_ms: float = setting(
        0.0, help="extra time a WAL batch may wait to grow (ms)", check=_non_negative
    )
    history_size: int = setting(
        1000, help="messages per channel kept for `sub` with `since`", check=_non_negative
    )
    history_channel_bytes: int = setting(
        1024 * 1024,
        help="history bytes kept per channel (oldest dropped first)",
        check=_non_negative,
    )
    history_total_bytes: int = setting(
        256 * 1024 * 1024,
        help="history bytes kept over all channels (oldest dropped first)",
        check=_non_negative,
    )
    db_url: str = setting(
        "sqlite:///./data/ferry.db", help="sqlite:///path or mysql://user:pass@host:port/db"
    )
    replayer: bool = setting(True, help="run the WAL -> database replayer inside serve")
    node_id: str = setting(
        factory=_hostname,
        help="this node's id in the WAL and the database",
        shown="the hostname",
        check=_node_id,
    )
    dedupe_window_s: float = setting(
        120.0,
        help="seconds a publish `mid` is remembered (a retry within it is a duplicate); 0: off",
        check=_non_negative,
    )
    dedupe_max_entries: int = setting(
        100_000,
        help="publish `mid`s remembered at most (the oldest are forgotten early past it)",
        check=_non_negative,
    )
    # auth
    auth: Literal["none", "jwt"] = setting("none", help="none or jwt")
    jwt_secret: str = setting("", help="HS256 secret for client tokens (>= 32 bytes)")
    admin_token: str = setting(
        "", help="token that grants everything, $sys.* included (>= 32 bytes)"
    )
    jwt_max_ttl: float = setting(
        86400.0,
        help="longest accepted token lifetime in seconds (exp - now); 0: any",
        check=_non_negative,
    )
    # limits
    # A WAL record holds at most 4 MiB of payload: keep every accepted frame below that.
    max_frame_bytes: int = setting(
        64 * 1024,
        help="largest frame a client may send (close 1009 past it)",
        check=_between(256, 4_000_000),
    )
    max_data_bytes: int = setting(
        0,
        help="largest `data` one publish may carry (error too_large past it); "
        "0: max_frame_bytes - 1024, room for the frame's other fields",
        check=_non_negative,
    )
    max_outbox_bytes: int = setting(
        4 * 1024 * 1024,
        help="unsent bytes per connection before close 4408 (slow consumer)",
        check=_at_least(1024),
    )
    max_connections: int = setting(
        20_000, help="connections at once (HTTP 503 past it)", check=_positive
    )
    max_connections_per_user: int = setting(
        1000,
        help="connections at once per user (HTTP 429 past it; 0: no limit)",
        check=_non_negative,
    )
    max_connections_per_ip: int = setting(
        1000,
        help="connections at once per client address (HTTP 429 past it; 0: no limit)",
        check=_non_negative,
    )
    max_subscriptions: int = setting(1000, help="channels per connection", check=_positive)
    max_channels: int = setting(
        100_000, help="channels held in memory; idle ones are forgotten first", check=_positive
    )
    max_channels_per_user: int = setting(
        10_000,
        help="channels one user may have created and the node still holds",
        check=_positive,
    )
    max_data_depth: int = setting(
        32,
        help="deepest nesting of arrays/maps accepted in a published value",
        check=_between(1, 256),
    )
    publish_rate: float = setting(
        1000.0, help="publishes per second per connection (token bucket rate)", check=_positive
    )
    publish_burst: int = setting(2000, help="publish token bucket size", check=_positive)
    rate_abuse_limit: int = setting(
        100, help="rate_limited errors in 10 s before close 4429", check=_positive
    )
    idle_timeout: float = setting(
        60.0, help="seconds of client silence before the server pings", check=_positive
    )
    ping_timeout: float = setting(
        20.0, help="seconds to answer the ping before the connection is dropped", check=_positive
    )
    # observability
    stats_interval: float = setting(
        1.0, help="seconds between $sys.stats snapshots", check=_positive
    )
    tail_rate: int = setting(50, help="$sys.tail messages per second at most", check=_non_negative)
    log_level: Literal["debug", "info", "warning", "error"] = setting(
        "info", help="debug, info, warning or error"
    )
    log_format: Literal["text", "json"] = setting("text", help="text or json")
    dashboard_dir: str = setting("", help="directory served at /", shown="dashboard/dist")
    dashboard_max_bytes: int = setting(
        32 * 1024 * 1024,
        help="bytes of dashboard files held in memory and served (more are left out)",
        check=_non_negative,
    )
    webhook_url: str = setting("", help="Discord-compatible webhook for operational notifications")
    alert_backlog_records: int = setting(
        1_000_000,
        help="notify when the replay backlog passes this many records",
        check=_positive,
    )
    alert_fsync_ms: float = setting(
        500.0, help="notify when the WAL's fsync p99 passes this (ms)", check=_positive
    )
    # application webhooks (docs/webhooks.md)
    hooks_url: str = setting(
        "",
        help="application webhooks: channel.occupied/vacated, user.online/offline and "
        "ferry.started are POSTed here in signed batches (docs/webhooks.md)",
    )
    hooks_secret: str = setting(
        "",
        help="the webhooks' signing key (Standard Webhooks): whsec_<base64 of >= 24 bytes>, "
        "or a plain secret of >= 32 bytes",
    )
    hooks_hold_s: float = setting(
        5.0,
        help="seconds channel.vacated and user.offline are held back; a return within "
        "them cancels the event",
        check=_non_negative,
    )
    hooks_queue_size: int = setting(
        10_000,
        help="webhook events waiting to be sent at most (more are dropped and counted)",
        check=_positive,
    )
    hooks_batch_max: int = setting(
        100, help="webhook events in one POST at most", check=_between(1, 10_000)
    )
    hooks_retry_s: float = setting(
        300.0,
        help="seconds a webhook batch is retried (exponential backoff) before it is dropped",
        check=_non_negative,
    )
    hooks_timeout_s: float = setting(
        10.0, help="seconds one webhook POST may take", check=_positive
    )
    # cluster (docs/cluster.md): off unless a node list is given
    cluster_nodes: tuple[str, ...] = setting(
        (),
        help="the cluster's node ids, e.g. n1,n2,n3 (empty: one node, no NATS)",
        check=_cluster_nodes,
    )
    nats_url: str = setting(
        "nats://127.0.0.1:4222", help="the NATS server the cluster's nodes talk through"
    )
    cluster_id: str = setting(
        "ferry",
        help="the cluster's NATS subject prefix (clusters sharing a NATS server differ in it)",
        check=_subject_token,
    )
    workers: int = setting(
        1,
        help="processes sharing the ports (SO_REUSEPORT), each a cluster node <node_id>-w<i> "
        "with its WAL in <wal_dir>/w<i>, talking through NATS; 1: this process serves",
        check=_between(1, 64),
    )
    reuse_port: bool = setting(
        False,
        help="share the listening ports with other processes (SO_REUSEPORT; workers > 1 sets it)",
    )
    # lifecycle
    shutdown_timeout: float = setting(
        10.0, help="seconds a graceful shutdown may take", check=_positive
    )
    build_commit: str = setting(
        "", help="commit this build came from (set by the image; /healthz reports it)"
    )

    @property
    def auth_enabled(self) -> bool:
        return self.auth == "jwt"

    @property
    def data_limit(self) -> int:
        """The largest `data` of one publish: max_data_bytes, or (0) what a frame of
        max_frame_bytes leaves after the publish's other fields."""
        frame = self.max_frame_bytes
        return self.max_data_bytes or max(frame - DATA_ROOM_BYTES, frame // 2)


# Old name -> new name. The old one still works (flag, environment, TOML) and logs a warning.
RENAMED: dict[str, str] = {"log": "durability"}

# What the default data limit leaves of a frame for op, ch (<= 200 bytes), id and the rest.
DATA_ROOM_BYTES = 1024

# HS256 keys and the admin token: shorter ones can be brute-forced offline from one token.
MIN_SECRET_BYTES = 32
GENERATE_SECRET = "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`"

FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(Config)}
SPECS: dict[str, Spec] = {name: f.metadata["ferry"] for name, f in FIELDS.items()}
_HINTS: dict[str, Any] = get_type_hints(Config)
ENV_PREFIX = "FERRY_"


def choices(name: str) -> tuple[str, ...]:
    """The values a `Literal` setting allows; () for any other setting."""
    hint = _HINTS[name]
    return get_args(hint) if get_origin(hint) is Literal else ()


def _kind(name: str) -> type:
    hint = _HINTS[name]
    if get_origin(hint) is tuple:
        return tuple
    if get_origin(hint) is Literal:
        return str
    kind: type = hint
    return kind


def default(name: str) -> Any:
    """A setting's declared default (its factory called)."""
    f = FIELDS[name]
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _problem(name: str, value: Any) -> str | None:
    allowed = choices(name)
    if allowed and value not in allowed:
        return f"must be one of {', '.join(allowed)}"
    check = SPECS[name].check
    return check(value) if check else None


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


# A whsec_ key's least length, as the Standard Webhooks spec has it (24 bytes, 192 bits).
MIN_WHSEC_BYTES = 24
GENERATE_WHSEC = (
    "`python3 -c 'import base64, secrets; "
    'print("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())\'`'
)


def hooks_problem(url: str, secret: str) -> str | None:
    """What is wrong with FERRY_HOOKS_URL and FERRY_HOOKS_SECRET together, or None."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"hooks_url ({env_name('hooks_url')}) must be http:// or https:// with a host"
    where = f"hooks_secret ({env_name('hooks_secret')})"
    if not secret:
        return f"hooks_url needs {where} to sign the webhooks: generate one with {GENERATE_WHSEC}"
    if secret.startswith("whsec_"):
        try:
            key = base64.b64decode(secret[len("whsec_") :], validate=True)
        except binascii.Error:
            return f"{where} starts with whsec_ but the rest is not base64"
        if len(key) < MIN_WHSEC_BYTES:
            return f"{where} holds a {len(key)}-byte key; it must be at least {MIN_WHSEC_BYTES}"
        return None
    if len(secret.encode()) < MIN_SECRET_BYTES:
        return (
            f"{where} is {len(secret.encode())} bytes; it must be at least {MIN_SECRET_BYTES} "
            f"bytes, or a whsec_ key: generate one with {GENERATE_WHSEC}"
        )
    return None


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def from_environment(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """One setting as `ferry serve` takes it from the environment (`FERRY_<NAME>`), checked;
    None when the variable is not set. For tools that share a setting with serve."""
    environ = os.environ if environ is None else environ
    key = env_name(name)
    if key not in environ:
        return None
    value = _coerce(name, environ[key], f"environment {key}")
    problem = _problem(name, value)
    if problem:
        raise ConfigError(f"environment {key}: {name} = {value!r}: {problem}")
    return value


_METAVARS = {bool: "{true,false}", tuple: "A,B,...", int: "N", float: "X"}


def _metavar(name: str) -> str:
    allowed = choices(name)
    if allowed:
        return "{" + ",".join(allowed) + "}"
    kind = _kind(name)
    return _METAVARS.get(kind) or ("URL" if name.endswith("_url") else name.split("_")[-1].upper())


def shown_default(name: str) -> str:
    """A setting's default as --help shows it."""
    spec = SPECS[name]
    if spec.shown_default is not None:
        return spec.shown_default
    value = FIELDS[name].default
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
    for name, spec in SPECS.items():
        parser.add_argument(
            flag_name(name),
            dest=name,
            default=None,
            metavar=_metavar(name),
            help=f"{spec.help} (default: {shown_default(name)}; env {env_name(name)})",
        )
    for old in RENAMED:
        parser.add_argument(flag_name(old), dest=old, default=None, help=argparse.SUPPRESS)


Warn = Callable[[str], None]


def _renamed(old: str, new: str, warn: Warn) -> None:
    warn(f"{old} is deprecated: use {new} (the old name will stop working)")


def _layer(
    items: Mapping[str, Any], source: str, spell: Callable[[str], str], warn: Warn
) -> dict[str, tuple[Any, str]]:
    """One source's values and where each came from, by setting name; `spell` writes a name
    as this source does. A renamed setting's old name counts unless the new one is given here
    too."""
    layer: dict[str, tuple[Any, str]] = {}
    for name, value in items.items():
        if name in RENAMED:
            new = RENAMED[name]
            _renamed(spell(name), spell(new), warn)
            if new not in items:
                where = f"{source} {spell(name)}"
                layer[new] = (_coerce(new, value, where), where)
        elif name in FIELDS:
            where = f"{source} {spell(name)}"
            layer[name] = (_coerce(name, value, where), where)
        else:
            raise ConfigError(f"{source}: unknown setting {spell(name)}")
    return layer


def _file_items(config_file: str) -> dict[str, Any]:
    try:
        with open(config_file, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {config_file}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{config_file}: not valid TOML: {exc}") from None
    return {key.replace("-", "_"): value for key, value in data.items()}


def load(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
    warn: Warn = log.warning,
) -> Config:
    """Build the Config: flags > env > file > defaults; raise ConfigError on anything wrong.

    `warn` gets the notes about deprecated names (`ferry serve` logs them once logging is
    set up from the very config being loaded)."""
    environ = os.environ if environ is None else environ
    layers = []  # lowest precedence first
    if config_file:
        layers.append(_layer(_file_items(config_file), config_file, repr, warn))
    env_items = {
        key[len(ENV_PREFIX) :].lower(): value
        for key, value in environ.items()
        if key.startswith(ENV_PREFIX)
    }
    layers.append(_layer(env_items, "environment", env_name, warn))
    flag_items = {
        name: value
        for name, value in (flags or {}).items()
        if value is not None and (name in FIELDS or name in RENAMED)
    }
    layers.append(_layer(flag_items, "flag", flag_name, warn))
    chosen: dict[str, tuple[Any, str]] = {}
    for layer in layers:
        chosen.update(layer)

    config = Config(**{name: value for name, (value, _) in chosen.items()})
    for name in FIELDS:  # defaults too: the hostname may not fit as a node id
        value = getattr(config, name)
        problem = _problem(name, value)
        if problem:
            where = chosen[name][1] if name in chosen else f"default (set {env_name(name)})"
            raise ConfigError(f"{where}: {name} = {value!r}: {problem}")

    if config.auth_enabled and not config.jwt_secret:
        raise ConfigError(
            f"auth = 'jwt' needs jwt_secret ({env_name('jwt_secret')}); "
            f"generate one with {GENERATE_SECRET}"
        )
    for name in ("jwt_secret", "admin_token"):
        secret: str = getattr(config, name)
        if secret and len(secret.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"{name} ({env_name(name)}) is {len(secret.encode())} bytes; it must be at least "
                f"{MIN_SECRET_BYTES} bytes: generate one with {GENERATE_SECRET}"
            )
    problem = _api_keys(config.api_keys)  # checked here: a value error must not echo secrets
    if problem:
        raise ConfigError(f"api_keys ({env_name('api_keys')}): {problem}")
    if config.hooks_url:
        problem = hooks_problem(config.hooks_url, config.hooks_secret)
        if problem:
            raise ConfigError(problem)
    if config.workers > 1 and (config.port == 0 or (config.api_keys and config.api_port == 0)):
        raise ConfigError(
            f"workers ({env_name('workers')}) = {config.workers} share one port: "
            "port (and api_port) must not be 0"
        )
    if config.cluster_nodes and config.node_id not in config.cluster_nodes:
        raise ConfigError(
            f"node_id ({env_name('node_id')}) = {config.node_id!r} is not one of cluster_nodes "
            f"({env_name('cluster_nodes')}) = {','.join(config.cluster_nodes)}"
        )
    if config.max_data_bytes >= config.max_frame_bytes:
        raise ConfigError(
            f"max_data_bytes ({env_name('max_data_bytes')}) = {config.max_data_bytes} must be "
            f"less than max_frame_bytes ({config.max_frame_bytes}): a frame over max_frame_bytes "
            "is closed with 1009 before its data is measured, so too_large could never be sent"
        )
    if config.max_outbox_bytes < config.max_frame_bytes:
        raise ConfigError("max_outbox_bytes must be >= max_frame_bytes")
    return config
