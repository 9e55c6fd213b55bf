"""Creating and replacing connectors: what the API does beyond storing the definition.

* Every target is vetted against the operator's
  :class:`~fieldgate.cloud.domain.connectors.targets.TargetPolicy` (a webhook's URL, an MQTT host,
  Kafka's bootstrap brokers): a target that resolves inside is a 422 naming the field, so a
  tenant admin learns at once, not from a dead letter (the sinks check again at connect time).
* A new connector records its start on the bus — the end offsets of the tenant's
  ``[persisted]`` topic at creation — with the definition, so it delivers every event stored
  after its creation however late the connectors stage notices it (the stage goes back to
  that point for it alone; docs/connectors.md).

Transport-neutral: the REST routes call it (cloud/api/rest/routes/connectors.py).
"""

from __future__ import annotations

from fieldgate.cloud.bus import PERSISTED, Bus, topic_name
from fieldgate.cloud.domain.connectors.models import ConnectorSpec
from fieldgate.cloud.domain.connectors.targets import TargetPolicy, TargetRefused, kafka_hosts
from fieldgate.cloud.errors import InvalidRequest
from fieldgate.cloud.store.connectors import ConnectorStore


async def check_targets(spec: ConnectorSpec, policy: TargetPolicy) -> None:
    """InvalidRequest (naming the field) when a target of ``spec`` is refused by ``policy``."""
    targets: list[tuple[str, str, int]] = []  # (field, host, port)
    if spec.webhook is not None:
        url = spec.webhook.url
        host = (url.host or "").strip("[]")
        targets.append(("webhook.url", host, url.port or (443 if url.scheme == "https" else 80)))
    if spec.mqtt is not None:
        targets.append(("mqtt.host", spec.mqtt.host, spec.mqtt.port))
    if spec.kafka is not None:
        try:
            hosts = kafka_hosts(spec.kafka.bootstrap)
        except ValueError as err:
            raise InvalidRequest(f"kafka.bootstrap: {err}") from err
        targets.extend(("kafka.bootstrap", h, p) for h, p in hosts)
    for field, host, port in targets:
        try:
            await policy.vet(host, port)
        except TargetRefused as err:
            raise InvalidRequest(f"{field}: {err.reason}") from err


class ConnectorAdmin:
    """Create/replace with the checks above; reads and deletes go to :attr:`store` directly."""

    def __init__(
        self, store: ConnectorStore, bus: Bus, targets: TargetPolicy, *, topic_prefix: str = "fieldgate"
    ) -> None:
        self.store = store
        self.targets = targets
        self._bus = bus
        self._prefix = topic_prefix

    async def create(self, tenant: str, spec: ConnectorSpec) -> ConnectorSpec:
        """Conflict if the id is taken; InvalidRequest for a refused target."""
        await check_targets(spec, self.targets)
        start = await self._bus.topic_end_offsets(topic_name(tenant, PERSISTED, self._prefix))
        return await self.store.create(tenant, spec, start=start)

    async def replace(self, tenant: str, spec: ConnectorSpec) -> ConnectorSpec:
        """NotFound if there is no such connector; InvalidRequest for a refused target (checked
        again even when unchanged: the policy or the name's records may have changed)."""
        await check_targets(spec, self.targets)
        return await self.store.replace(tenant, spec)
