"""The small CA (fieldgate.pki) and ``fieldgate pki``: certificates, identities, the CRL, and
bad input that must exit 2 and leave the CA directory exactly as it was."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from fieldgate.cli import main
from fieldgate.cloud.config import TlsConfig
from fieldgate.config import validate
from fieldgate.edge.config import UplinkConfig
from fieldgate.errors import ConfigError
from fieldgate.pki import (
    CertificateAuthority,
    PkiError,
    edge_uri,
    identity_of,
    load_crl_serials,
    parse_serial,
)


def _snapshot(root: Path) -> dict[str, bytes]:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    authority = CertificateAuthority(tmp_path / "ca")
    authority.init(days=30)
    return authority


def test_ca_certificates_identities_and_key_modes(ca: CertificateAuthority, tmp_path: Path) -> None:
    ca_cert = x509.load_pem_x509_certificate(ca.cert_path.read_bytes())
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(ca_cert.public_key(), ec.EllipticCurvePublicKey)
    assert ca_cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert _mode(ca.key_path) == 0o600

    edge = ca.issue_edge("edge-7", ["acme", "beta", "acme"], days=10)
    cert = x509.load_pem_x509_certificate(edge.cert_path.read_bytes())
    cert.verify_directly_issued_by(ca_cert)
    assert _mode(edge.key_path) == 0o600
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "edge-7"
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert uris.get_values_for_type(x509.UniformResourceIdentifier) == [
        edge_uri("acme", "edge-7"),
        edge_uri("beta", "edge-7"),
    ]
    identity = identity_of(cert)
    assert identity is not None
    assert identity.edge_id == "edge-7" and identity.tenants == {"acme", "beta"}
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 10

    server = ca.issue_server(["127.0.0.1", "cloud.example.org"], out=tmp_path / "srv")
    scert = x509.load_pem_x509_certificate(server.cert_path.read_bytes())
    san = scert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["cloud.example.org"]
    assert identity_of(scert) is None  # a server certificate is no edge
    assert _mode(server.key_path) == 0o600
    # Never valid beyond the CA.
    long = ca.issue_edge("edge-8", ["acme"], days=3650)
    assert long.not_after <= ca_cert.not_valid_after_utc


def test_revocation_is_in_the_signed_crl(ca: CertificateAuthority, tmp_path: Path) -> None:
    a = ca.issue_edge("edge-a", ["acme"])
    b1 = ca.issue_edge("edge-b", ["acme"])
    b2 = ca.issue_edge("edge-b", ["acme"])  # re-issued: both of edge-b's are revoked by id
    ca_cert = x509.load_pem_x509_certificate(ca.cert_path.read_bytes())
    assert load_crl_serials(ca.crl_path, [ca_cert]) == frozenset()

    assert sorted(ca.revoke(edge_id="edge-b")) == sorted([b1.serial, b2.serial])
    assert ca.revoke(serial=a.serial.upper()) == [a.serial]
    revoked = load_crl_serials(ca.crl_path, [ca_cert])
    assert revoked == {int(s, 16) for s in (a.serial, b1.serial, b2.serial)}
    with pytest.raises(PkiError, match="already revoked"):
        ca.revoke(edge_id="edge-b")

    # A CRL signed by another CA is not believed (it could un-revoke anything).
    other = CertificateAuthority(tmp_path / "other")
    other.init()
    with pytest.raises(PkiError, match="not signed by the client CA"):
        load_crl_serials(other.crl_path, [ca_cert])
    path, count = ca.write_crl(days=2, out=tmp_path / "copy.pem")
    assert count == 3 and load_crl_serials(path, [ca_cert]) == revoked


def test_identity_refuses_malformed_or_ambiguous_uris(ca: CertificateAuthority) -> None:
    ca_cert = x509.load_pem_x509_certificate(ca.cert_path.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    ca_key = ca._load()[1]

    def cert_with(uris: list[str]) -> x509.Certificate:
        import datetime as dt

        from cryptography.hazmat.primitives import hashes

        now = dt.datetime.now(dt.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "x")]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )

    assert identity_of(cert_with(["urn:fieldgate:edge:acme:e1", "urn:fieldgate:edge:beta:e2"])) is None
    assert identity_of(cert_with(["urn:fieldgate:edge:ACME:e1"])) is None
    assert identity_of(cert_with(["urn:fieldgate:edge:acme"])) is None
    assert identity_of(cert_with(["urn:fieldgate:edge:acme:e1", "urn:fieldgate:edge:acme:bad/id"])) is None
    assert identity_of(cert_with(["https://example.org/"])) is None
    ok = identity_of(cert_with(["https://example.org/", "urn:fieldgate:edge:acme:e1"]))
    assert ok is not None and ok.edge_id == "e1"


def test_parse_serial() -> None:
    assert parse_serial("0x1F") == 31 == parse_serial("1f") == parse_serial("1:f")
    for bad in ("", "xyz", "12 34", "g1"):
        with pytest.raises(PkiError):
            parse_serial(bad)


def test_cli_happy_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path / "ca")
    assert main(["pki", "init-ca", "--dir", d, "--days", "100"]) == 0
    assert main(["pki", "issue-server", "--dir", d, "--host", "127.0.0.1", "localhost"]) == 0
    assert main(["pki", "issue-edge", "--dir", d, "--edge-id", "e1", "--tenant", "default"]) == 0
    out = capsys.readouterr().out
    serial = out.split("serial ")[-1].split(",")[0]
    assert (tmp_path / "ca" / "edges" / "e1.pem").exists()
    assert main(["pki", "revoke", "--dir", d, "--serial", serial]) == 0
    assert main(["pki", "crl", "--dir", d]) == 0
    assert "1 revoked certificate(s)" in capsys.readouterr().out
    ca_cert = x509.load_pem_x509_certificate((tmp_path / "ca" / "ca.pem").read_bytes())
    assert load_crl_serials(tmp_path / "ca" / "crl.pem", [ca_cert]) == {int(serial, 16)}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["issue-edge", "--edge-id", "bad:id", "--tenant", "default"], "edge id"),
        (["issue-edge", "--edge-id", "../../etc", "--tenant", "default"], "edge id"),
        (["issue-edge", "--edge-id", "e1", "--tenant", "Not A Tenant"], "tenant"),
        (["issue-edge", "--edge-id", "e1", "--tenant", "default", "--days", "0"], "out of range"),
        (["issue-server", "--host", "bad_host!"], "neither an IP address"),
        (["issue-server", "--host=-x.example.org"], "neither an IP address"),
        (["revoke", "--edge-id", "never-issued"], "unknown edge"),
        (["revoke", "--serial", "abc123"], "no certificate with serial"),
        (["revoke", "--serial", "not-hex"], "not a hexadecimal"),
        (["init-ca"], "already exists"),
    ],
)
def test_cli_bad_input_exits_2_and_writes_nothing(
    ca: CertificateAuthority, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(ca.directory)
    assert main(["pki", args[0], "--dir", str(ca.directory), *args[1:]]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("fieldgate: pki: ")
    assert _snapshot(ca.directory) == before


def test_cli_without_a_ca_exits_2_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere"
    for args in (
        ["issue-edge", "--edge-id", "e1", "--tenant", "default"],
        ["issue-server", "--host", "localhost"],
        ["revoke", "--edge-id", "e1"],
        ["crl"],
    ):
        assert main(["pki", args[0], "--dir", str(missing), *args[1:]]) == 2
        assert "no CA in" in capsys.readouterr().err
    assert not missing.exists()
    # A CA whose key is not its certificate's is refused too.
    a, b = CertificateAuthority(tmp_path / "a"), CertificateAuthority(tmp_path / "b")
    a.init()
    b.init()
    a.key_path.write_bytes(b.key_path.read_bytes())
    assert main(["pki", "issue-edge", "--dir", str(a.directory), "--edge-id", "e1", "--tenant", "t"]) == 2
    assert "is not the key of" in capsys.readouterr().err
    assert not (a.directory / "edges").exists()


def test_tls_config_validation(tmp_path: Path) -> None:
    base = {"cert_file": "s.pem", "key_file": "s.key"}
    with pytest.raises(ConfigError, match="require_client_cert needs client_ca_file"):
        validate(TlsConfig, base)
    assert not validate(TlsConfig, {**base, "require_client_cert": False}).require_client_cert
    with pytest.raises(ConfigError, match="optional client certificate"):
        validate(TlsConfig, {**base, "require_client_cert": False, "client_ca_file": "ca.pem"})
    with pytest.raises(ConfigError, match="cert_file"):
        validate(TlsConfig, {"key_file": "s.key", "client_ca_file": "ca.pem"})
    with pytest.raises(ConfigError, match="cert_file and key_file go together"):
        validate(UplinkConfig, {"cert_file": "e.pem"})
    with pytest.raises(ConfigError, match="server_name needs TLS"):
        validate(UplinkConfig, {"server_name": "cloud"})
    assert validate(UplinkConfig, {"ca_file": "ca.pem"}).uses_tls
    assert not UplinkConfig().uses_tls
