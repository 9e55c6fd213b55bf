"""Registration: what happens to events of devices the registry does not know.

Consumes ``[unregistered]`` (consumer group ``registration``). Per tenant policy
(:class:`~fieldgate.cloud.config.TenantConfig`, falling back to the registry's tenant record
for tenants that are not in the configuration):

* ``auto_register`` on — the device is created with the tenant's default device type, or with
  the type a SiteWhere ``RegisterDevice`` message asked for (a StateChange of kind
  REGISTRATION whose ``current`` is a device type token) when that type exists. A
  registration state change event is emitted (alternate id ``registration:<device>``, so
  replays store it once) and the device's events are published back to ``[decoded]``, where
  inbound processing now finds the device. Creating a device that already exists (a replay,
  or a race with the REST API) is not an error.
* When a :class:`~fieldgate.cloud.zk.models.TenantSettingsRegistry` is given
  (``tenant_settings``, fed by the ZooKeeper watcher), it is consulted first for every batch,
  so a live change of a tenant's ``auto_register`` applies from the next batch on, without a
  restart and without touching other tenants.
* ``auto_register`` off — the records are committed and counted; the events stay in the
  ``[unregistered]`` topic for inspection or replay (reset the group's offset after
  registering the device). Each such device is logged once (bounded memory).

At start the tenant's default device type is created if missing: token ``default`` (or the
tenant's ``default_device_type``), name "Default device", commands ``ping()`` and
``set-interval(seconds: int, required)`` — what the simulators and the README's tour use.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fieldgate.cloud.bus import DECODED, UNREGISTERED, Bus, Record, topic_name
from fieldgate.cloud.config import TenantConfig
from fieldgate.cloud.errors import Conflict
from fieldgate.cloud.pipeline.stage import (
    ConsumerStage,
    LruSet,
    StageSettings,
    decode_batch,
    messages_by_device,
    tenant_of,
)
from fieldgate.cloud.store.registry import Registry, default_device_type
from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import model_pb2 as model

if TYPE_CHECKING:
    from fieldgate.cloud.zk.models import TenantSettingsRegistry

GROUP = "registration"

log = logging.getLogger(__name__)


def registration_alternate_id(device: str) -> str:
    return f"registration:{device}"


@dataclass(frozen=True, slots=True)
class _Policy:
    auto_register: bool
    default_device_type: str


@dataclass(slots=True)
class RegistrationStats:
    devices_registered: int = 0
    events_republished: int = 0  # sent back to [decoded] after registration
    events_kept_unregistered: int = 0  # auto-registration off (or tenant unknown)
    requested_type_missing: int = 0  # RegisterDevice named a type that does not exist


class Registration:
    """The registration stage (consumer group ``registration``)."""

    def __init__(
        self,
        bus: Bus,
        registry: Registry,
        tenants: Sequence[TenantConfig],
        *,
        topic_prefix: str = "fieldgate",
        settings: StageSettings | None = None,
        log_once_max_devices: int = 10_000,
        tenant_settings: TenantSettingsRegistry | None = None,
    ) -> None:
        self.stats = RegistrationStats()
        self._live = tenant_settings
        self._bus = bus
        self._registry = registry
        self._tenants = {t.token: t for t in tenants}
        self._prefix = topic_prefix
        self._logged: LruSet[tuple[str, str]] = LruSet(log_once_max_devices)
        self.stage = ConsumerStage(
            "registration",
            bus,
            group=GROUP,
            stage=UNREGISTERED,
            handler=self._handle,
            settings=settings,
            topic_prefix=topic_prefix,
        )

    async def start(self) -> None:
        # The live settings (file + ZooKeeper) when given: they include every file tenant.
        tenants = dict(self._tenants)
        if self._live is not None:
            for token in self._live.tenants():
                live = self._live.get(token)
                if live is not None:
                    tenants[token] = live.tenant_config()
        for cfg in tenants.values():
            await self._registry.ensure_tenant(
                model.Tenant(
                    token=cfg.token,
                    name=cfg.name or cfg.token,
                    auto_register=cfg.auto_register,
                    default_device_type=cfg.default_device_type,
                )
            )
            await self.ensure_default_device_type(cfg.token, cfg.default_device_type)
        await self.stage.start()

    async def stop(self) -> None:
        await self.stage.stop()

    async def ensure_default_device_type(self, tenant: str, token: str) -> None:
        if await self._registry.get_device_type(tenant, token) is not None:
            return
        try:
            await self._registry.create_device_type(tenant, default_device_type(token))
            log.info("tenant %s: created device type %r", tenant, token)
        except Conflict:
            pass  # created meanwhile by another process: that is what we wanted

    async def _policy(self, tenant: str) -> _Policy | None:
        live = self._live.get(tenant) if self._live is not None else None
        if live is not None:
            return _Policy(live.auto_register, live.default_device_type)
        cfg = self._tenants.get(tenant)
        if cfg is not None:
            return _Policy(cfg.auto_register, cfg.default_device_type)
        record = await self._registry.get_tenant(tenant)
        if record is None:
            return None
        return _Policy(record.auto_register, record.default_device_type or "default")

    async def _handle(self, records: Sequence[Record]) -> None:
        tenant = tenant_of(records[0], self._prefix)
        by_device: dict[str, list[pb.Event]] = {}
        for record in records:
            for ev in decode_batch(record, tenant).events:
                by_device.setdefault(ev.device, []).append(ev)

        policy = await self._policy(tenant)
        out: list[pb.Event] = []
        for device, events in by_device.items():
            if await self._registry.get_device(tenant, device) is not None:
                # Registered meanwhile (an earlier attempt, the REST API): just send them on.
                out.extend(events)
                continue
            if policy is None or not policy.auto_register:
                self._keep(tenant, device, len(events), policy is None)
                continue
            registration = await self._register(tenant, device, events, policy)
            if registration is not None:
                out.append(registration)
            out.extend(events)

        if out:
            await self._bus.publish(topic_name(tenant, DECODED, self._prefix), messages_by_device(out))
            self.stats.events_republished += len(out)

    def _keep(self, tenant: str, device: str, n: int, tenant_unknown: bool) -> None:
        self.stats.events_kept_unregistered += n
        if (tenant, device) in self._logged:
            return
        self._logged.add((tenant, device))
        why = "the tenant is unknown" if tenant_unknown else "auto-registration is off for the tenant"
        log.warning(
            "tenant %s: events of unknown device %r are kept in [unregistered] (%s); register the "
            "device and replay the topic to process them",
            tenant,
            device,
            why,
        )

    async def _register(
        self, tenant: str, device: str, events: list[pb.Event], policy: _Policy
    ) -> pb.Event | None:
        """Create the device; the registration state change to emit, or None when the
        device's own RegisterDevice event already records it."""
        requested = next(
            (
                ev.state_change.current
                for ev in events
                if ev.WhichOneof("payload") == "state_change"
                and ev.state_change.kind == pb.STATE_CHANGE_KIND_REGISTRATION
                and ev.state_change.current
            ),
            "",
        )
        type_token = policy.default_device_type
        if requested:
            if await self._registry.get_device_type(tenant, requested) is not None:
                type_token = requested
            else:
                self.stats.requested_type_missing += 1
                log.warning(
                    "tenant %s: device %r asked for device type %r, which does not exist; using %r",
                    tenant,
                    device,
                    requested,
                    type_token,
                )
        if type_token == policy.default_device_type:
            # A tenant created through the API after start has not had its type made yet.
            await self.ensure_default_device_type(tenant, type_token)
        now = now_ms()
        try:
            await self._registry.create_device(
                model.Device(
                    token=device,
                    tenant=tenant,
                    device_type=type_token,
                    comments="registered automatically on its first event",
                    created_ms=now,
                )
            )
            self.stats.devices_registered += 1
            log.info("tenant %s: registered device %r (type %r)", tenant, device, type_token)
        except Conflict:
            pass  # an earlier attempt (or the API) created it: registration is idempotent
        if requested and requested == type_token:
            return None
        return pb.Event(
            alternate_id=registration_alternate_id(device),
            tenant=tenant,
            device=device,
            event_time_ms=now,
            received_time_ms=now,
            state_change=pb.StateChange(kind=pb.STATE_CHANGE_KIND_REGISTRATION, current=type_token),
        )
