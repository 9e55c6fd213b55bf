"""A small certificate authority for the edge ↔ cloud link (``fieldgate pki ...``).

Why it exists: the edge uplink and the cloud's gRPC server speak mutual TLS when configured
(docs/security.md). A fleet needs a CA that signs one server certificate per cloud endpoint
and one client certificate per edge, can revoke an edge, and publishes what it revoked. This
module is that CA, kept as files in one directory, done with the ``cryptography`` library (no
``openssl`` shell-outs):

=================  ============================================================================
``ca.pem``         the CA certificate (EC P-256, self-signed): the edges' ``uplink.ca_file`` and
                   the cloud's ``tls.client_ca_file``
``ca.key``         its private key (mode 0600) — the only secret that matters; keep it offline
``server.pem/key`` the cloud's server certificate (DNS/IP SANs for the names edges dial)
``edges/<id>.*``   each edge's client certificate and key
``crl.pem``        the X.509 CRL signed by the CA (the cloud's ``tls.crl_file``)
``index.json``     every certificate issued: serial, kind, name, tenants, expiry, revocation
=================  ============================================================================

**Identity.** An edge certificate names its edge in the subject CN and, for each tenant the
edge may send events of, a SAN URI ``urn:fieldgate:edge:<tenant>:<edge_id>``. The cloud reads
the URIs (:func:`identity_of`): the edge id a ``Hello`` must carry and the tenants its events
may name. A URI is unambiguous because neither a tenant token nor an edge id may contain ``:``.

Every operation validates its input and the CA's state before it writes anything, and writes
each file atomically (a temporary file renamed over), so a bad call leaves the directory as it
was. Errors are :class:`PkiError` with a message for the operator.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fieldgate.errors import FieldgateError

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
CRL_FILE = "crl.pem"
INDEX_FILE = "index.json"
EDGES_DIR = "edges"

EDGE_URI_PREFIX = "urn:fieldgate:edge:"
# A tenant token, as the cloud's configuration accepts it (cloud/config.py TenantConfig).
TENANT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# Edge ids in certificates: no ':' (the URI separator), no '/', nothing a file name cannot hold.
EDGE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
MAX_DAYS = 36_500
# Certificates are back-dated a little, so a peer whose clock lags still accepts a fresh one.
_CLOCK_SKEW = dt.timedelta(minutes=5)


class PkiError(FieldgateError):
    """A PKI operation was refused (bad input, CA missing, unknown edge); nothing was written."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a client certificate names: an edge and the tenants it may send events of."""

    edge_id: str
    tenants: frozenset[str]


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate just written."""

    serial: str  # hexadecimal, as index.json and ``fieldgate pki revoke --serial`` use it
    cert_path: Path
    key_path: Path
    not_after: dt.datetime


def edge_uri(tenant: str, edge_id: str) -> str:
    return f"{EDGE_URI_PREFIX}{tenant}:{edge_id}"


def serial_hex(serial: int) -> str:
    return format(serial, "x")


def parse_serial(text: str) -> int:
    """A serial as printed by this module (hex; ``0x`` and ``:`` separators accepted)."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    if not cleaned or not re.fullmatch(r"[0-9a-f]{1,40}", cleaned):
        raise PkiError(f"serial {text[:50]!r} is not a hexadecimal certificate serial")
    return int(cleaned, 16)


def identity_of(cert: x509.Certificate) -> Identity | None:
    """The edge identity in ``cert``'s SAN URIs; None when it names no edge (or names two)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    edge_ids: set[str] = set()
    tenants: set[str] = set()
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if not uri.startswith(EDGE_URI_PREFIX):
            continue
        tenant, sep, edge_id = uri[len(EDGE_URI_PREFIX) :].partition(":")
        if not sep or not TENANT_PATTERN.fullmatch(tenant) or not EDGE_ID_PATTERN.fullmatch(edge_id):
            return None  # malformed: trust nothing of it
        edge_ids.add(edge_id)
        tenants.add(tenant)
    if len(edge_ids) != 1:
        return None
    return Identity(edge_id=edge_ids.pop(), tenants=frozenset(tenants))


# -- validation -----------------------------------------------------------------------------


def check_edge_id(edge_id: str) -> str:
    if not EDGE_ID_PATTERN.fullmatch(edge_id):
        raise PkiError(
            f"edge id {edge_id[:70]!r} is not valid: letters, digits, '.', '_', '-', up to 128 "
            "characters, starting with a letter or digit"
        )
    return edge_id


def check_tenant(tenant: str) -> str:
    if not TENANT_PATTERN.fullmatch(tenant):
        raise PkiError(
            f"tenant {tenant[:70]!r} is not a valid tenant token (lower-case letters, digits, '_', '-')"
        )
    return tenant


def _check_days(days: int) -> int:
    if not 1 <= days <= MAX_DAYS:
        raise PkiError(f"validity of {days} days is out of range (1 to {MAX_DAYS})")
    return days


def _general_name(host: str) -> x509.GeneralName:
    """An IP address SAN for an address, a DNS SAN for a host name; PkiError otherwise."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host[2:] if host.startswith("*.") else host
    labels = name.rstrip(".").split(".")
    if len(name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise PkiError(f"host {host[:70]!r} is neither an IP address nor a valid DNS name")
    return x509.DNSName(host.rstrip("."))


# -- files ----------------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` whole or not at all, created with ``mode`` (never world-readable first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class CertificateAuthority:
    """The CA in ``directory`` (see the module docstring). ``init`` creates it; every other
    operation needs it to exist."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    @property
    def cert_path(self) -> Path:
        return self.directory / CA_CERT

    @property
    def key_path(self) -> Path:
        return self.directory / CA_KEY

    @property
    def crl_path(self) -> Path:
        return self.directory / CRL_FILE

    @property
    def index_path(self) -> Path:
        return self.directory / INDEX_FILE

    def exists(self) -> bool:
        return self.cert_path.exists() and self.key_path.exists()

    def edge_paths(self, edge_id: str, out: Path | None = None) -> tuple[Path, Path]:
        where = out if out is not None else self.directory / EDGES_DIR
        return where / f"{edge_id}.pem", where / f"{edge_id}.key"

    # -- creating the CA --------------------------------------------------------------------

    def init(self, *, days: int = 3650, common_name: str = "fieldgate CA") -> Issued:
        """Create the CA key and self-signed certificate; refuses to replace an existing CA
        (every certificate it signed would stop verifying)."""
        _check_days(days)
        if not common_name.strip() or len(common_name) > 64:
            raise PkiError("the CA's common name must be 1 to 64 characters")
        if self.cert_path.exists() or self.key_path.exists():
            raise PkiError(f"{self.directory}: a CA already exists here ({CA_CERT}/{CA_KEY}); not replaced")
        if self.directory.exists() and not self.directory.is_dir():
            raise PkiError(f"{self.directory} exists and is not a directory")
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _now()
        not_after = now + dt.timedelta(days=days)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        self.directory.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.key_path, _key_pem(key), 0o600)
        _write_atomic(self.cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        self._save_index([])
        self._write_crl(cert, key, [], days=30)
        return Issued(serial_hex(cert.serial_number), self.cert_path, self.key_path, not_after)

    # -- issuing ----------------------------------------------------------------------------

    def issue_edge(
        self, edge_id: str, tenants: Sequence[str], *, days: int = 365, out: Path | None = None
    ) -> Issued:
        """A client certificate for ``edge_id``, allowed the given tenants (SAN URIs)."""
        check_edge_id(edge_id)
        if not tenants:
            raise PkiError("an edge certificate needs at least one tenant")
        for tenant in tenants:
            check_tenant(tenant)
        _check_days(days)
        ca_cert, ca_key = self._load()
        index = self._load_index()
        uris = [x509.UniformResourceIdentifier(edge_uri(t, edge_id)) for t in dict.fromkeys(tenants)]
        cert_path, key_path = self.edge_paths(edge_id, out)
        return self._issue(
            ca_cert,
            ca_key,
            index,
            kind="edge",
            name=edge_id,
            tenants=list(dict.fromkeys(tenants)),
            sans=uris,
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            days=days,
            cert_path=cert_path,
            key_path=key_path,
        )

    def issue_server(self, hosts: Sequence[str], *, days: int = 365, out: Path | None = None) -> Issued:
        """The cloud's server certificate, valid for ``hosts`` (DNS names and IP addresses)."""
        if not hosts:
            raise PkiError("a server certificate needs at least one --host")
        sans = [_general_name(h) for h in dict.fromkeys(hosts)]
        _check_days(days)
        ca_cert, ca_key = self._load()
        index = self._load_index()
        where = out if out is not None else self.directory
        return self._issue(
            ca_cert,
            ca_key,
            index,
            kind="server",
            name=hosts[0],
            tenants=[],
            sans=sans,
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            days=days,
            cert_path=where / SERVER_CERT,
            key_path=where / SERVER_KEY,
        )

    def _issue(
        self,
        ca_cert: x509.Certificate,
        ca_key: ec.EllipticCurvePrivateKey,
        index: list[dict[str, Any]],
        *,
        kind: str,
        name: str,
        tenants: list[str],
        sans: Sequence[x509.GeneralName],
        usage: x509.ObjectIdentifier,
        days: int,
        cert_path: Path,
        key_path: Path,
    ) -> Issued:
        for path in (cert_path, key_path):
            if path.exists() and not path.is_file():
                raise PkiError(f"{path} exists and is not a file")
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write_atomic(key_path, _key_pem(key), 0o600)
        _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        serial = serial_hex(cert.serial_number)
        index.append(
            {
                "serial": serial,
                "kind": kind,
                "name": name,
                "tenants": tenants,
                "not_after": not_after.isoformat(),
                "revoked": None,
            }
        )
        self._save_index(index)
        return Issued(serial, cert_path, key_path, not_after)

    # -- revocation -------------------------------------------------------------------------

    def revoke(self, *, serial: str | None = None, edge_id: str | None = None) -> list[str]:
        """Mark a certificate (by serial) or every valid certificate of an edge as revoked and
        rewrite the CRL. Returns the serials revoked now; PkiError if nothing matches."""
        if (serial is None) == (edge_id is None):
            raise PkiError("give exactly one of --serial and --edge-id")
        ca_cert, ca_key = self._load()
        index = self._load_index()
        if serial is not None:
            wanted = serial_hex(parse_serial(serial))
            matches = [e for e in index if e["serial"] == wanted]
            if not matches:
                raise PkiError(
                    f"no certificate with serial {wanted} was issued by the CA in {self.directory}"
                )
        else:
            assert edge_id is not None
            check_edge_id(edge_id)
            matches = [e for e in index if e["kind"] == "edge" and e["name"] == edge_id]
            if not matches:
                raise PkiError(
                    f"unknown edge {edge_id!r}: the CA in {self.directory} issued it no certificate"
                )
        fresh = [e for e in matches if e["revoked"] is None]
        if not fresh:
            what = f"serial {matches[0]['serial']}" if serial is not None else f"edge {edge_id!r}"
            raise PkiError(f"{what}: already revoked")
        stamp = _now().isoformat()
        for entry in fresh:
            entry["revoked"] = stamp
        self._write_crl(ca_cert, ca_key, index, days=30)
        self._save_index(index)
        return [e["serial"] for e in fresh]

    def write_crl(self, *, days: int = 30, out: Path | None = None) -> tuple[Path, int]:
        """(Re)write the CRL (``next_update`` in ``days``); returns its path and entry count."""
        _check_days(days)
        ca_cert, ca_key = self._load()
        index = self._load_index()
        path = self._write_crl(ca_cert, ca_key, index, days=days, out=out)
        return path, sum(1 for e in index if e["revoked"] is not None)

    def _write_crl(
        self,
        ca_cert: x509.Certificate,
        ca_key: ec.EllipticCurvePrivateKey,
        index: Iterable[dict[str, Any]],
        *,
        days: int,
        out: Path | None = None,
    ) -> Path:
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_cert.subject)
            .last_update(now - _CLOCK_SKEW)
            .next_update(now + dt.timedelta(days=days))
        )
        for entry in index:
            if entry["revoked"] is None:
                continue
            revoked = (
                x509.RevokedCertificateBuilder()
                .serial_number(int(entry["serial"], 16))
                .revocation_date(dt.datetime.fromisoformat(entry["revoked"]))
                .build()
            )
            builder = builder.add_revoked_certificate(revoked)
        crl = builder.sign(ca_key, hashes.SHA256())
        path = out if out is not None else self.crl_path
        _write_atomic(path, crl.public_bytes(serialization.Encoding.PEM), 0o644)
        return path

    def issued(self) -> list[dict[str, Any]]:
        """The index: every certificate issued, with its revocation time (or None)."""
        self._load()
        return self._load_index()

    # -- loading ----------------------------------------------------------------------------

    def _load(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        if not self.cert_path.exists() or not self.key_path.exists():
            raise PkiError(
                f"no CA in {self.directory} ({CA_CERT} and {CA_KEY} missing): "
                f"run `fieldgate pki init-ca --dir {self.directory}` first"
            )
        try:
            cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
            key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as err:
            raise PkiError(f"{self.directory}: cannot read the CA: {err}") from err
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
            raise PkiError(f"{self.directory}: {CA_KEY} is not the key of {CA_CERT}")
        return cert, key

    def _load_index(self) -> list[dict[str, Any]]:
        if not self.index_path.exists():
            return []
        try:
            data = json.loads(self.index_path.read_text())
            certs = data["certificates"]
            if not isinstance(certs, list):
                raise TypeError("certificates is not a list")
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise PkiError(f"{self.index_path}: unreadable index: {err}") from err
        return certs

    def _save_index(self, certs: list[dict[str, Any]]) -> None:
        text = json.dumps({"certificates": certs}, indent=2) + "\n"
        _write_atomic(self.index_path, text.encode(), 0o644)


def load_crl_serials(path: Path, ca_certs: Sequence[x509.Certificate]) -> frozenset[int]:
    """The revoked serials of the CRL at ``path``, which must be signed by one of ``ca_certs``
    (a CRL anyone could write would let them un-revoke a certificate). PkiError otherwise."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise PkiError(f"{path}: cannot read the CRL: {err.strerror}") from err
    try:
        crl = x509.load_pem_x509_crl(data) if b"-----BEGIN" in data else x509.load_der_x509_crl(data)
    except ValueError as err:
        raise PkiError(f"{path}: not an X.509 CRL: {err}") from err
    for ca in ca_certs:
        if ca.subject != crl.issuer:
            continue
        try:
            if crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
                return frozenset(r.serial_number for r in crl)
        except (InvalidSignature, TypeError):
            continue
    raise PkiError(f"{path}: the CRL is not signed by the client CA")


def load_certificates(path: Path) -> list[x509.Certificate]:
    """Every PEM certificate in ``path`` (a CA bundle)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise PkiError(f"{path}: cannot read: {err.strerror}") from err
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as err:
        raise PkiError(f"{path}: no PEM certificate in it: {err}") from err
    return certs
