"""Re-export of :mod:`fieldgate.devservers.kafka` (the servers moved into the fieldgate package)."""

from __future__ import annotations

from fieldgate.devservers.kafka import KafkaServer, kafka_server, server_properties, start_kafka

__all__ = ["KafkaServer", "kafka_server", "server_properties", "start_kafka"]
