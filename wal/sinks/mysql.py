"""MySQL/MariaDB sink through aiomysql.

One connection, re-established after any error (a writer needs no more: batches are
serial by design). Every statement runs under a deadline, because a paused or
half-dead server otherwise hangs a query forever; after a timeout the connection's
state is unknown, so it is dropped and the batch retried — safe, since inserts are
idempotent on (node, lsn) and the checkpoint only moves forward.

Bulk paths, measured here (docs/benchmarks.md): a large batch of messages goes through
`LOAD DATA LOCAL INFILE ... IGNORE` from a TSV file (fastest); smaller batches, events,
and servers that refuse LOCAL INFILE get large multi-row `INSERT IGNORE` statements with
the payload as a hex literal — both well ahead of aiomysql's `executemany`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import tempfile
import warnings
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import aiomysql
import pymysql
from pymysql.converters import escape_string

from wal.errors import SinkError
from wal.sinks.base import SCHEMA_VERSION, EventRow, MessageRow, RowBatch, redact_url

log = logging.getLogger("ferry.sink.mysql")

STATEMENT_BYTES = 4 * 1024 * 1024  # well under MariaDB's default max_allowed_packet (16 MiB)

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS ferry_messages (
        node VARCHAR(64) NOT NULL, lsn BIGINT UNSIGNED NOT NULL, channel VARCHAR(200) NOT NULL,
        seq BIGINT UNSIGNED NOT NULL, ts_ms BIGINT NOT NULL, sender VARCHAR(200) NOT NULL,
        client_msg_id VARCHAR(255) NULL, encoding TINYINT UNSIGNED NOT NULL, payload MEDIUMBLOB NOT NULL,
        PRIMARY KEY (node, lsn), KEY channel_seq (channel, seq)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
    """CREATE TABLE IF NOT EXISTS ferry_events (
        node VARCHAR(64) NOT NULL, lsn BIGINT UNSIGNED NOT NULL, ts_ms BIGINT NOT NULL,
        kind VARCHAR(16) NOT NULL, conn_id VARCHAR(128) NOT NULL, user VARCHAR(200) NOT NULL,
        remote VARCHAR(128) NOT NULL, close_code INT NULL, duration_ms BIGINT NULL,
        PRIMARY KEY (node, lsn), KEY user_ts (user, ts_ms)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
    """CREATE TABLE IF NOT EXISTS ferry_checkpoints (
        node VARCHAR(64) NOT NULL PRIMARY KEY, lsn BIGINT UNSIGNED NOT NULL,
        updated_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)
    ) ENGINE=InnoDB""",
    # One row (id = 1). Every table has a primary key: managed MySQL (sql_require_primary_key)
    # and MariaDB with innodb_force_primary_key refuse to create one without.
    """CREATE TABLE IF NOT EXISTS ferry_schema (
        id TINYINT UNSIGNED NOT NULL PRIMARY KEY, version INT NOT NULL
    ) ENGINE=InnoDB""",
]
# Schema v1 had `ferry_schema (version INT NOT NULL)` without a key: detected by the missing
# `id` column and rebuilt in place (the other tables are the same in v1 and v2).
HAS_SCHEMA_ID = (
    "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
    "AND TABLE_NAME = 'ferry_schema' AND COLUMN_NAME = 'id'"
)
DUPLICATE_COLUMN = 1060  # ER_DUP_FIELDNAME: another node migrated ferry_schema first

# ?ssl-mode= values, as the MySQL client names them. DISABLED: plain TCP. REQUIRED: TLS,
# certificate not checked (unless ssl-ca is given, which makes it VERIFY_CA). VERIFY_CA:
# the server's certificate must chain to ssl-ca (or the system CAs). VERIFY_IDENTITY: that,
# and its name must match the host in the URL.
SSL_MODES = ("disabled", "required", "verify_ca", "verify_identity")


def parse_mysql_url(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    if not parts.hostname or not parts.path.strip("/"):
        raise ValueError(
            f"MySQL URL must look like mysql://user:pass@host:3306/db, got {redact_url(url)!r}"
        )
    options = {k.replace("-", "_").lower(): v[-1] for k, v in parse_qs(parts.query).items()}
    params: dict[str, Any] = {
        "host": parts.hostname,
        "port": parts.port or 3306,
        "user": unquote(parts.username or "root"),
        "password": unquote(parts.password or ""),
        "db": parts.path.strip("/"),
        "connect_timeout": float(options.get("connect_timeout", 5)),
        "statement_timeout": float(options.get("statement_timeout", 10)),
    }
    tls = tls_context(options.get("ssl_mode", options.get("ssl", "")), options.get("ssl_ca"))
    if tls is not None:
        params["ssl"] = tls
    return params


def ssl_mode(mode: str, ca_file: str | None) -> str:
    """The effective ssl-mode: one of SSL_MODES (a CA file turns REQUIRED into VERIFY_CA)."""
    mode = mode.strip().lower()
    if mode in ("", "0", "false", "disabled"):
        mode = "verify_ca" if ca_file else "disabled"
    elif mode in ("1", "true", "required"):
        mode = "verify_ca" if ca_file else "required"
    if mode not in SSL_MODES:
        raise ValueError(
            f"ssl-mode={mode!r} is not one of {', '.join(m.upper() for m in SSL_MODES)}"
        )
    return mode


def tls_context(mode: str, ca_file: str | None) -> ssl.SSLContext | None:
    """The client's TLS context for an ssl-mode (None: no TLS)."""
    effective = ssl_mode(mode, ca_file)
    if effective == "disabled":
        return None
    try:
        context = ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"ssl-ca={ca_file!r}: cannot load the CA certificate ({exc})") from None
    if effective == "required":
        # Encrypted, but anyone in the middle can present a certificate: say so in the log.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif effective == "verify_ca":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _text(value: str) -> str:
    if "'" in value or "\\" in value:
        value = escape_string(value)
    return "'" + value + "'"


def _message_values(row: MessageRow) -> str:
    mid = "NULL" if row.client_msg_id is None else _text(row.client_msg_id[:255])
    payload = "X'" + row.payload.hex() + "'" if row.payload else "''"
    return (
        f"({_text(row.node)},{row.lsn},{_text(row.channel)},{row.seq},{row.ts_ms},"
        f"{_text(row.sender)},{mid},{row.encoding},{payload})"
    )


def _event_values(row: EventRow) -> str:
    code = "NULL" if row.close_code is None else str(int(row.close_code))
    duration = "NULL" if row.duration_ms is None else str(int(row.duration_ms))
    return (
        f"({_text(row.node)},{row.lsn},{row.ts_ms},{_text(row.kind)},{_text(row.conn_id[:128])},"
        f"{_text(row.user)},{_text(row.remote[:128])},{code},{duration})"
    )


def _tsv(value: str) -> bytes:
    """A string field for LOAD DATA's default format (tab-separated, backslash escapes)."""
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value or "\0" in value:
        value = value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
        value = value.replace("\r", "\\r").replace("\0", "\\0")
    return value.encode()


def render_tsv(rows: list[MessageRow]) -> bytes:
    """Message rows as LOAD DATA input; the payload as hex (UNHEX on the server)."""
    lines = []
    for row in rows:
        mid = b"\\N" if row.client_msg_id is None else _tsv(row.client_msg_id[:255])
        lines.append(
            b"%s\t%d\t%s\t%d\t%d\t%s\t%s\t%d\t%s\n"
            % (_tsv(row.node), row.lsn, _tsv(row.channel), row.seq, row.ts_ms, _tsv(row.sender), mid,
               row.encoding, row.payload.hex().encode())
        )  # fmt: skip
    return b"".join(lines)


LOAD_DATA = (
    "LOAD DATA LOCAL INFILE %s IGNORE INTO TABLE ferry_messages "
    "(node, lsn, channel, seq, ts_ms, sender, client_msg_id, encoding, @payload) SET payload = UNHEX(@payload)"
)
# LOCAL INFILE refused: MySQL, the client library, MySQL 8, MariaDB.
INFILE_REFUSED = frozenset({1148, 2068, 3948, 4166})
LOAD_DATA_MIN_ROWS = 2000  # below this a multi-row INSERT is as fast and needs no file


def render_inserts(table: str, values: list[str]) -> list[str]:
    """Multi-row INSERT IGNORE statements of at most ~STATEMENT_BYTES each."""
    statements: list[str] = []
    head = f"INSERT IGNORE INTO {table} VALUES "
    chunk: list[str] = []
    size = 0
    for v in values:
        if chunk and size + len(v) > STATEMENT_BYTES:
            statements.append(head + ",".join(chunk))
            chunk, size = [], 0
        chunk.append(v)
        size += len(v) + 1
    if chunk:
        statements.append(head + ",".join(chunk))
    return statements


class MysqlSink:
    def __init__(self, url: str) -> None:
        self.url = url
        self.params = parse_mysql_url(url)
        self.statement_timeout: float = self.params.pop("statement_timeout")
        tls = self.params.get("ssl")
        if tls is not None and tls.verify_mode == ssl.CERT_NONE:
            log.warning(
                "%s: TLS without checking the server's certificate; add "
                "ssl-mode=VERIFY_CA&ssl-ca=/path/ca.pem (or VERIFY_IDENTITY)",
                redact_url(url),
            )
        self.fault: Callable[[str], None] = lambda point: None
        self._conn: aiomysql.Connection | None = None
        self._local_infile: bool | None = None  # None: not tried yet; False: refused

    async def _connection(self) -> aiomysql.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = await aiomysql.connect(
                autocommit=False,
                charset="utf8mb4",
                local_infile=self._local_infile is not False,
                **self.params,
            )
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()  # no goodbye: the connection may be wedged
            self._conn = None

    async def _guard(self, work: Any) -> Any:
        """Run `work(conn)` under the deadline; map every failure to SinkError."""
        try:
            conn = await asyncio.wait_for(self._connection(), self.params["connect_timeout"] + 1)
            return await asyncio.wait_for(work(conn), self.statement_timeout)
        except TimeoutError:
            self._drop()
            raise SinkError(f"mysql: no answer within {self.statement_timeout:g}s") from None
        except (pymysql.MySQLError, OSError) as exc:
            self._drop()
            raise SinkError(f"mysql: {_describe(exc)}") from exc

    async def open(self) -> None:
        async def work(conn: aiomysql.Connection) -> None:
            async with conn.cursor() as cur:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "table already exists" on every start
                    for statement in SCHEMA:
                        await cur.execute(statement)
                    await _migrate_v1_schema_table(cur)
                await cur.execute("SELECT version FROM ferry_schema WHERE id = 1 FOR UPDATE")
                row = await cur.fetchone()
                if row is None:
                    await cur.execute(
                        "INSERT IGNORE INTO ferry_schema (id, version) VALUES (1, %s)",
                        (SCHEMA_VERSION,),
                    )
                elif row[0] > SCHEMA_VERSION:
                    await conn.rollback()
                    raise SinkError(
                        f"database schema v{row[0]} is newer than this ferry (v{SCHEMA_VERSION})"
                    )
                elif row[0] < SCHEMA_VERSION:
                    # v1 -> v2 was ferry_schema's key alone (done above); later steps go here.
                    log.info("database schema upgraded from v%d to v%d", row[0], SCHEMA_VERSION)
                    await cur.execute(
                        "UPDATE ferry_schema SET version = %s WHERE id = 1", (SCHEMA_VERSION,)
                    )
            await conn.commit()

        await self._guard(work)

    async def checkpoint(self, node: str) -> int:
        async def work(conn: aiomysql.Connection) -> int:
            async with conn.cursor() as cur:
                await cur.execute("SELECT lsn FROM ferry_checkpoints WHERE node = %s", (node,))
                row = await cur.fetchone()
            await conn.commit()
            return int(row[0]) if row else 0

        return int(await self._guard(work))

    async def write(self, batch: RowBatch) -> None:
        tsv_path: str | None = None
        if len(batch.messages) >= LOAD_DATA_MIN_ROWS and self._local_infile is not False:
            fd, tsv_path = tempfile.mkstemp(prefix="ferry-load-", suffix=".tsv")
            with os.fdopen(fd, "wb") as fh:
                fh.write(render_tsv(batch.messages))
            statements = []
        else:
            statements = render_inserts(
                "ferry_messages", [_message_values(r) for r in batch.messages]
            )
        statements += render_inserts("ferry_events", [_event_values(r) for r in batch.events])

        async def work(conn: aiomysql.Connection) -> None:
            try:
                async with conn.cursor() as cur:
                    with _quiet():
                        if tsv_path is not None:
                            await cur.execute(LOAD_DATA, (tsv_path,))
                            self._local_infile = True
                        for statement in statements:
                            await cur.execute(statement)
                    self.fault("before_commit")
                    await cur.execute(
                        "INSERT INTO ferry_checkpoints (node, lsn) VALUES (%s, %s) "
                        "ON DUPLICATE KEY UPDATE lsn = GREATEST(lsn, VALUES(lsn)), updated_at = CURRENT_TIMESTAMP(3)",
                        (batch.node, batch.last_lsn),
                    )
                await conn.commit()
            except BaseException:
                # Cancellation (deadline) or error mid-transaction: the connection is dropped
                # by _guard; the server rolls the transaction back when it sees it go.
                raise

        try:
            await self._guard(work)
        except SinkError as exc:
            cause = exc.__cause__
            refused = (
                isinstance(cause, pymysql.MySQLError)
                and bool(cause.args)
                and cause.args[0] in INFILE_REFUSED
            )
            if tsv_path is not None and refused:
                log.warning("the server refuses LOAD DATA LOCAL INFILE; using multi-row INSERTs")
                self._local_infile = False
                self._drop()
                await self.write(batch)  # once more, the INSERT way
                return
            raise
        finally:
            if tsv_path is not None:
                os.unlink(tsv_path)

    async def close(self) -> None:
        if self._conn is not None:
            try:
                await asyncio.wait_for(self._conn.ensure_closed(), 2)
            except Exception:
                pass
            self._drop()


async def _migrate_v1_schema_table(cur: Any) -> None:
    """Give a v1 `ferry_schema` (no key) its `id` primary key, keeping its version.

    DDL commits implicitly in MySQL, so this is written to be safe at any crash point: a
    table left keyed but empty reads as "no version yet" and gets the current one, which is
    right because v1 and v2 differ in this table only.
    """
    await cur.execute(HAS_SCHEMA_ID)
    row = await cur.fetchone()
    if row and row[0]:
        return
    await cur.execute("SELECT MAX(version) FROM ferry_schema")
    found = await cur.fetchone()
    version = int(found[0]) if found and found[0] is not None else None
    await cur.execute("DELETE FROM ferry_schema")
    try:
        await cur.execute(
            "ALTER TABLE ferry_schema ADD COLUMN id TINYINT UNSIGNED NOT NULL FIRST, "
            "ADD PRIMARY KEY (id)"
        )
    except pymysql.MySQLError as exc:
        if not (exc.args and exc.args[0] == DUPLICATE_COLUMN):
            raise
    if version is not None:
        await cur.execute(
            "INSERT IGNORE INTO ferry_schema (id, version) VALUES (1, %s)", (version,)
        )
    log.info("ferry_schema has a primary key now (schema v1 layout migrated)")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """INSERT IGNORE of a retried batch makes the server warn about every duplicate."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pymysql.Warning)
        yield


def _describe(exc: BaseException) -> str:
    if isinstance(exc, pymysql.MySQLError) and exc.args:
        text = f"({exc.args[0]}) {exc.args[1]}" if len(exc.args) >= 2 else str(exc.args[0])
        # aiomysql's "(2003) Can't connect" hides why (refused, TLS certificate not trusted...).
        cause = exc.__cause__
        if cause is not None and not isinstance(cause, pymysql.MySQLError):
            text += f": {_describe(cause)}"
        return text
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: {exc.verify_message or exc.reason} (certificate verify failed)"
    return str(exc) or type(exc).__name__
