"""The edge/cloud link's certificates for the container tests, made by ``fieldgate pki`` inside
fieldgate's image (the CLI a user runs), and an edge agent container that dials the cloud with
them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.containers.podman import HARDENED, Podman, owned_by_fieldgate, unique

TENANT = "default"


@dataclass(frozen=True)
class Pki:
    """A CA's directory as ``fieldgate pki`` lays it out (docs/security.md)."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def crl(self) -> Path:
        return self.directory / "crl.pem"

    def edge(self, edge_id: str) -> tuple[Path, Path]:
        return self.directory / "edges" / f"{edge_id}.pem", self.directory / "edges" / f"{edge_id}.key"


def make_pki(podman: Podman, directory: Path, edge_ids: tuple[str, ...]) -> Pki:
    """A CA, the cloud's server certificate for 127.0.0.1/localhost, one client certificate per
    edge (tenant ``default``) and an empty CRL, by ``fieldgate pki`` in a container."""
    directory.mkdir()
    owned_by_fieldgate(directory)
    steps = [
        "fieldgate pki init-ca --dir /pki --days 2 --name 'fieldgate container-test CA'",
        "fieldgate pki issue-server --dir /pki --host 127.0.0.1 localhost --days 2",
        *(f"fieldgate pki issue-edge --dir /pki --edge-id {e} --tenant {TENANT} --days 2" for e in edge_ids),
        "fieldgate pki crl --dir /pki --days 2",
    ]
    podman.run_once(
        [*HARDENED, "--network", "none", "--volume", f"{directory}:/pki", "--entrypoint", "sh"],
        ["-ec", " && ".join(steps)],
    )
    return Pki(directory)


def read_only_files(files: dict[Path, str]) -> list[str]:
    """``--volume`` options mounting each host file read-only at its path in the container."""
    out: list[str] = []
    for host, inside in files.items():
        out += ["--volume", f"{host}:{inside}:ro"]
    return out


def run_edge(podman: Podman, workdir: Path, pki: Pki, edge_id: str, *, target: str, mqtt_port: int) -> str:
    """An edge agent container (hardened, host network): its embedded MQTT broker on
    127.0.0.1:``mqtt_port``, its uplink to ``target`` over mutual TLS with ``edge_id``'s
    certificate, its buffer in a bind-mounted directory. Returns the container's name."""
    data = workdir / f"{edge_id}-data"
    data.mkdir()
    owned_by_fieldgate(data)
    conf = workdir / f"{edge_id}.yaml"
    conf.write_text(
        yaml.safe_dump(
            {
                "edge_id": edge_id,
                "data_dir": "/var/lib/fieldgate/data",
                "mqtt": {"mode": "embedded", "host": "127.0.0.1", "port": mqtt_port},
                "uplink": {
                    "target": target,
                    "ca_file": "/etc/fieldgate/tls/ca.pem",
                    "cert_file": "/etc/fieldgate/tls/edge.pem",
                    "key_file": "/etc/fieldgate/tls/edge.key",
                    "backoff_max_s": 2.0,
                },
            }
        )
    )
    cert, key = pki.edge(edge_id)
    name = unique(f"edge-{edge_id}")
    podman.run_detached(
        name,
        [
            *HARDENED,
            "--network", "host",
            "--volume", f"{data}:/var/lib/fieldgate/data",
            *read_only_files({
                conf: "/etc/fieldgate/edge.yaml",
                pki.ca: "/etc/fieldgate/tls/ca.pem",
                cert: "/etc/fieldgate/tls/edge.pem",
                key: "/etc/fieldgate/tls/edge.key",
            }),
        ],
        ["edge", "run", "--config", "/etc/fieldgate/edge.yaml"],
    )  # fmt: skip
    return name
