"""TLS to MySQL: the URL's ssl-mode / ssl-ca turn into a client context that verifies the
server's certificate, and against a private MariaDB whose user may only connect over TLS the sink
connects with the right CA and refuses a server whose certificate the CA did not sign (or,
with VERIFY_IDENTITY, one issued for another name)."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path
from typing import cast

import pytest

from tests.mariadb import require_mariadb
from wal.sinks import MessageRow, RowBatch, SinkError, make_sink
from wal.sinks.mysql import parse_mysql_url

BASE = "mysql://ferry:pw@db.internal:25060/ferry"
# What ssl's getpeercert / get_ca_certs give as a "subject": RDNs of (name, value) pairs.
RDNs = tuple[tuple[tuple[str, str], ...], ...]


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", key,
             "-out", cert, "-subj", f"/CN={name}")  # fmt: skip
    return key, cert


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A cluster CA, a server certificate it signed for `db.internal` only, another CA."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key, ca = _ca(folder, "cluster-ca")
    _, other_ca = _ca(folder, "other-ca")
    key, csr, cert = folder / "server.key", folder / "server.csr", folder / "server.pem"
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
             "-subj", "/CN=db.internal")  # fmt: skip
    ext = folder / "san.ext"
    ext.write_text("subjectAltName=DNS:db.internal\n")
    _openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
             "-days", "2", "-out", cert, "-extfile", ext)  # fmt: skip
    return {"ca": ca, "other_ca": other_ca, "key": key, "cert": cert}


def test_url_without_ssl_mode_is_plain() -> None:
    assert "ssl" not in parse_mysql_url(BASE)
    assert "ssl" not in parse_mysql_url(BASE + "?ssl-mode=DISABLED")


def test_required_encrypts_without_verifying() -> None:
    tls = parse_mysql_url(BASE + "?ssl-mode=REQUIRED")["ssl"]
    assert tls.verify_mode == ssl.CERT_NONE and not tls.check_hostname


@pytest.mark.parametrize(
    ("query", "check_hostname"),
    [
        ("ssl-mode=VERIFY_CA&ssl-ca={ca}", False),
        ("ssl_mode=verify_ca&ssl_ca={ca}", False),
        # A CA file means "check against it", whatever else the URL says.
        ("ssl-mode=REQUIRED&ssl-ca={ca}", False),
        ("ssl-ca={ca}", False),
        ("ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}", True),
    ],
)
def test_verify_modes_build_a_verifying_context(
    pki: dict[str, Path], query: str, check_hostname: bool
) -> None:
    tls = parse_mysql_url(BASE + "?" + query.format(ca=pki["ca"]))["ssl"]
    assert isinstance(tls, ssl.SSLContext)
    assert tls.verify_mode == ssl.CERT_REQUIRED
    assert tls.check_hostname is check_hostname
    names = [cast(RDNs, c["subject"]) for c in tls.get_ca_certs()]
    subjects = [dict(rdn[0] for rdn in subject) for subject in names]
    assert subjects == [{"commonName": "cluster-ca"}]  # the cluster's CA, and only it


def test_verify_identity_without_a_ca_uses_the_system_store() -> None:
    tls = parse_mysql_url(BASE + "?ssl-mode=VERIFY_IDENTITY")["ssl"]
    assert tls.verify_mode == ssl.CERT_REQUIRED and tls.check_hostname


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("ssl-mode=SOMETIMES", "not one of DISABLED, REQUIRED, VERIFY_CA, VERIFY_IDENTITY"),
        ("ssl-mode=VERIFY_CA&ssl-ca=/nonexistent/ca.pem", "cannot load the CA certificate"),
    ],
)
def test_bad_tls_options_are_refused(query: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        make_sink(BASE + "?" + query)


async def test_sink_verifies_a_tls_only_server(tmp_path: Path, pki: dict[str, Path]) -> None:
    db = require_mariadb(
        tmp_path / "db",
        f"--ssl-ca={pki['ca']}",
        f"--ssl-cert={pki['cert']}",
        f"--ssl-key={pki['key']}",
    )
    try:
        conn = db.connect()
        with conn.cursor() as cur:
            cur.execute("CREATE USER 'tls'@'%' IDENTIFIED BY 'pw' REQUIRE SSL")
            cur.execute("GRANT ALL ON ferry.* TO 'tls'@'%'")
        conn.close()
        url = db.url_for("tls", "pw")

        plain = make_sink(url)  # this user may only connect over TLS
        with pytest.raises(SinkError, match="Access denied"):
            await plain.open()
        await plain.close()

        verified = make_sink(f"{url}?ssl-mode=VERIFY_CA&ssl-ca={pki['ca']}")
        await verified.open()
        row = MessageRow("tls", 1, "c", 1, 1, "u", None, 0, b"x")
        await verified.write(RowBatch("tls", [row], [], 1))
        assert await verified.checkpoint("tls") == 1
        await verified.close()

        for query, why in (
            (f"ssl-mode=VERIFY_CA&ssl-ca={pki['other_ca']}", "certificate verify failed"),
            # Signed by the right CA, but for db.internal, not 127.0.0.1.
            (f"ssl-mode=VERIFY_IDENTITY&ssl-ca={pki['ca']}", "certificate verify failed"),
        ):
            refused = make_sink(f"{url}?{query}&connect_timeout=3")
            with pytest.raises(SinkError, match=why):
                await refused.open()
            await refused.close()
    finally:
        db.stop()
