"""The MQTT southbound adapter: devices publish events and receive commands over MQTT.

Two backends behind the :class:`~fieldgate.edge.adapters.Adapter` interface, chosen by
``mqtt.mode`` at construction:

- ``embedded`` (default): :class:`EmbeddedMqttAdapter` runs the amqtt broker in the agent and
  takes device messages from it in-process;
- ``external``: :class:`ExternalMqttAdapter` subscribes to another broker (Mosquitto) with a
  persistent session and manual acknowledgements.

Both share :class:`~fieldgate.edge.adapters.mqtt.dispatch.Dispatcher` (topic contract, tenant
check, size limit, codec, hand-over to the sink) and expose their counters as ``.stats``
(:class:`MqttStats`). A device's QoS 1 message is acknowledged only once its events are
durable. Topic contract: docs/protocols/mqtt.md; broker operations: docs/operations/mosquitto.md.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fieldgate.edge.adapters.mqtt.stats import MqttStats
from fieldgate.edge.config import MqttConfig

if TYPE_CHECKING:
    from fieldgate.edge.adapters.mqtt.embedded import EmbeddedMqttAdapter
    from fieldgate.edge.adapters.mqtt.external import ExternalMqttAdapter

__all__ = ["EmbeddedMqttAdapter", "ExternalMqttAdapter", "MqttStats", "build_mqtt_adapter"]


def build_mqtt_adapter(
    config: MqttConfig, *, tenants: Collection[str], data_dir: Path | None = None
) -> EmbeddedMqttAdapter | ExternalMqttAdapter:
    """The backend ``config.mode`` names, accepting devices of ``tenants`` only.

    Each backend's MQTT library is imported only when that backend is used (amqtt for
    embedded, paho for external): an edge agent loads what it runs, which keeps its memory low.
    ``data_dir``: where relative paths of ``mqtt.auth`` and ``mqtt.tls`` are (the agent's).
    """
    if config.mode == "embedded":
        from fieldgate.edge.adapters.mqtt.embedded import EmbeddedMqttAdapter

        return EmbeddedMqttAdapter(config, tenants=tenants, data_dir=data_dir)
    from fieldgate.edge.adapters.mqtt.external import ExternalMqttAdapter

    return ExternalMqttAdapter(config, tenants=tenants)


def __getattr__(name: str) -> Any:  # the backends' classes, imported on first use
    if name == "EmbeddedMqttAdapter":
        from fieldgate.edge.adapters.mqtt.embedded import EmbeddedMqttAdapter

        return EmbeddedMqttAdapter
    if name == "ExternalMqttAdapter":
        from fieldgate.edge.adapters.mqtt.external import ExternalMqttAdapter

        return ExternalMqttAdapter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
