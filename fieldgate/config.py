"""Typed configuration loading shared by the edge agent and the cloud.

Models are frozen pydantic models that forbid unknown keys. They load from a YAML/JSON file,
overridden by environment variables (``<PREFIX>__SECTION__KEY=value``), and — in the distributed
mode — from ZooKeeper, always through :func:`validate`, so a bad value fails at load with a
message that names the key and the reason.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from fieldgate.errors import ConfigError


class Frozen(BaseModel):
    """Base for every configuration model: immutable, unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


M = TypeVar("M", bound=BaseModel)


def _format(err: ValidationError, origin: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"{origin}: {key}: {e['msg']}")
    return "; ".join(lines)


def validate(model: type[M], data: Mapping[str, Any], origin: str = "configuration") -> M:
    try:
        return model.model_validate(dict(data))
    except ValidationError as err:
        raise ConfigError(_format(err, origin)) from err


def _env_overrides(prefix: str, environ: Mapping[str, str]) -> dict[str, Any]:
    """``FIELDGATE_EDGE__MQTT__PORT=1884`` → ``{"mqtt": {"port": "1884"}}``."""
    out: dict[str, Any] = {}
    head = prefix + "__"
    for name, value in environ.items():
        if not name.startswith(head):
            continue
        path = [p.lower() for p in name[len(head) :].split("__") if p]
        if not path:
            continue
        node = out
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"environment {name}: {part} is both a value and a section")
            node = nxt
        node[path[-1]] = value
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load(
    model: type[M],
    path: Path | None = None,
    *,
    env_prefix: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> M:
    """Load ``model`` from ``path`` (YAML or JSON), then environment, then explicit overrides."""
    data: dict[str, Any] = {}
    origin = "configuration"
    if path is not None:
        origin = str(path)
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise ConfigError(f"{path}: cannot read: {err.strerror}") from err
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: (top level): expected a mapping, got {type(loaded).__name__}")
        data = loaded
    if env_prefix:
        data = _merge(data, _env_overrides(env_prefix, os.environ if environ is None else environ))
    if overrides:
        data = _merge(data, overrides)
    return validate(model, data, origin)
