"""Typed configuration of the cloud (see docs/configuration.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from fieldgate.config import Frozen


class TenantConfig(Frozen):
    token: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    name: str = ""
    # Unknown devices that send events are registered automatically (with a registration
    # state change event) when true; otherwise their events are kept in [unregistered].
    auto_register: bool = True
    default_device_type: str = "default"


class AuthConfig(Frozen):
    # Secret for signing bearer tokens; generated and kept in data_dir when not set.
    secret_key: SecretStr | None = None
    token_ttl_s: int = Field(3600, ge=60)


class BusConfig(Frozen):
    kind: Literal["embedded"] = "embedded"
    topic_prefix: str = "fieldgate"


class StoreConfig(Frozen):
    kind: Literal["sqlite"] = "sqlite"


class CloudConfig(Frozen):
    data_dir: Path = Path(".fieldgate/cloud")
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(50051, ge=0, le=65535)
    rest_host: str = "127.0.0.1"
    rest_port: int = Field(8080, ge=0, le=65535)
    tenants: tuple[TenantConfig, ...] = (TenantConfig(token="default", name="Default tenant"),)
    auth: AuthConfig = AuthConfig()
    bus: BusConfig = BusConfig()
    store: StoreConfig = StoreConfig()
    # Default time-to-live of a command invocation when the request gives none.
    default_command_ttl_s: int = Field(3600, ge=1)
