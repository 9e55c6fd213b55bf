"""TLS of the cloud's gRPC server, and who a client certificate says its peer is.

The TLS stack (gRPC's) verifies the chain against ``tls.client_ca_file`` during the handshake;
it has no hook for revocation, and it knows nothing of fieldgate's identities. This module does
the rest, in one place that ingest (the edge uplink) and the gRPC APIs both ask
(:meth:`ServerTls.peer`):

- reads the peer's certificate from the call's auth context (``x509_pem_cert``);
- refuses it (UNAUTHENTICATED) when its serial is on the CRL (``tls.crl_file``, an X.509 CRL
  signed by the client CA: ``fieldgate pki revoke`` writes it). The file is stat'ed on every
  call and re-read when it changed, so a revocation applies from the certificate's next
  stream or API call, without a restart. A CRL that cannot be read or is not signed by the
  client CA is refused at start (ConfigError); at run time the previous list stays in force
  and the error is logged;
- maps it to an :class:`~fieldgate.pki.Identity` (edge id + tenants, from the SAN URIs
  ``urn:fieldgate:edge:<tenant>:<edge_id>``), or None for a certificate that names no edge
  (the uplink refuses those; the APIs then need a bearer token).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509

from fieldgate.cloud.config import TlsConfig
from fieldgate.cloud.errors import CloudError
from fieldgate.errors import ConfigError
from fieldgate.pki import Identity, PkiError, identity_of, load_certificates, load_crl_serials, serial_hex

log = logging.getLogger(__name__)


class PeerRefused(CloudError):
    """The peer's certificate is not acceptable; ``code`` is the gRPC status to end the call with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Peer:
    """A verified, unrevoked client certificate and the identity it names (None: no edge)."""

    identity: Identity | None
    serial: int


def _read(path: Path, key: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"tls.{key}: cannot read {path}: {err.strerror}") from err
    if not data.strip():
        raise ConfigError(f"tls.{key}: {path} is empty")
    return data


class _RevocationList:
    """The CRL's serials, re-read whenever the file's (mtime, size, inode) changes."""

    def __init__(self, path: Path, cas: list[x509.Certificate]) -> None:
        self._path = path
        self._cas = cas
        self._stamp: tuple[int, int, int] | None = None
        self._serials: frozenset[int] = frozenset()
        try:
            self._reload(self._stat())
        except (OSError, PkiError) as err:
            raise ConfigError(f"tls.crl_file: {err}") from err

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self._path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _reload(self, stamp: tuple[int, int, int]) -> None:
        self._serials = load_crl_serials(self._path, self._cas)
        self._stamp = stamp
        log.info("tls: %s loaded: %d revoked certificate(s)", self._path, len(self._serials))

    def serials(self) -> frozenset[int]:
        try:
            stamp = self._stat()
            if stamp != self._stamp:
                self._reload(stamp)
        except (OSError, PkiError) as err:  # keep what we had: revocations only ever grow
            log.error(
                "tls: cannot re-read the CRL %s (%s); the previous list stays in force", self._path, err
            )
        return self._serials


class ServerTls:
    """The server's credentials and the client-certificate checks of ``config``."""

    def __init__(self, config: TlsConfig) -> None:
        self.config = config
        self._cert = _read(config.cert_file, "cert_file")
        self._key = _read(config.key_file, "key_file")
        self._client_ca: bytes | None = None
        self._crl: _RevocationList | None = None
        if config.client_ca_file is not None:
            self._client_ca = _read(config.client_ca_file, "client_ca_file")
            try:
                cas = load_certificates(config.client_ca_file)
            except PkiError as err:
                raise ConfigError(f"tls.client_ca_file: {err}") from err
            if config.crl_file is not None:
                self._crl = _RevocationList(config.crl_file, cas)

    @property
    def client_auth(self) -> bool:
        """Whether every client presents a certificate of the client CA (mutual TLS)."""
        return self.config.require_client_cert

    def credentials(self) -> grpc.ServerCredentials:
        try:
            return grpc.ssl_server_credentials(
                [(self._key, self._cert)],
                root_certificates=self._client_ca,
                require_client_auth=self.config.require_client_cert,
            )
        except (ValueError, TypeError, RuntimeError) as err:
            raise ConfigError(f"tls: cannot use cert_file/key_file: {err}") from err

    def peer(self, context: grpc.aio.ServicerContext[Any, Any]) -> Peer | None:
        """The caller's verified identity; None without client authentication (nothing to
        check). Raises :class:`PeerRefused` for no certificate or a revoked one."""
        if not self.client_auth:
            return None
        pems = context.auth_context().get("x509_pem_cert") or []
        pem = next(iter(pems), None)
        if not pem:
            raise PeerRefused(grpc.StatusCode.UNAUTHENTICATED, "no client certificate")
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError as err:
            raise PeerRefused(grpc.StatusCode.UNAUTHENTICATED, "unreadable client certificate") from err
        if self._crl is not None and cert.serial_number in self._crl.serials():
            raise PeerRefused(
                grpc.StatusCode.UNAUTHENTICATED,
                f"client certificate {serial_hex(cert.serial_number)} is revoked",
            )
        return Peer(identity_of(cert), cert.serial_number)
