"""One coordinator per Modbus bus: who talks on the line, and when.

RTU is half-duplex master/slave: one request may be outstanding on a line at a time. The
coordinator owns the line (a :class:`~fieldgate.edge.adapters.modbus.link.SerialLink`) and a
lock that every request takes — polls and command writes alike, in FIFO order — and runs one
task that polls each device when it is due (each device has its own interval).

Failure policy, the part the peers get wrong:

- a request is bounded: ``timeout_s`` * (``retries`` + 1) plus slack, then the coordinator
  moves on to the next due device, so one silent device never stalls the others;
- a device that does not answer is marked offline (health ``disconnected``, a PRESENCE change
  in the cloud) and from then on probed with a single request, after its poll interval and
  then doubling up to ``offline_backoff_max_s``: a dead meter costs the bus one bounded request
  per backoff period, not one per poll interval per register block. When it answers again it
  is marked online, ``on_online`` fires (waiting commands go out) and normal polling resumes;
- a port that disappears (USB adapter unplugged) marks every device on the bus offline and is
  reopened with capped exponential backoff;
- CRC errors, exception responses and undecodable points are counted per device by kind.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from fieldgate.edge.adapters.modbus.config import BusConfig, CommandConfig, DeviceConfig, RegisterConfig
from fieldgate.edge.adapters.modbus.link import LinkError, PortError, RequestTimeout, SerialLink
from fieldgate.edge.adapters.modbus.registers import ReadBlock, decode_block, plan_reads
from fieldgate.edge.adapters.modbus.stats import ModbusStats
from fieldgate.edge.health import HealthBoard
from fieldgate.retry import Backoff
from fieldgate.tasks import cancel_and_wait

log = logging.getLogger(__name__)

RECONNECT_INITIAL_S = 0.1
# After an unexpected failure of the bus task (a bug), wait this long before restarting it.
RESTART_DELAY_S = 1.0


@dataclass
class DeviceState:
    """Runtime state of one configured device (owned by its bus coordinator)."""

    config: DeviceConfig
    blocks: list[ReadBlock]
    registers: dict[str, RegisterConfig]
    commands: dict[str, CommandConfig]
    online: bool = False
    ever_online: bool = False
    next_due: float = 0.0
    # Offline: the probe's backoff, from the poll interval doubling up to the bus's
    # ``offline_backoff_max_s`` (set by the coordinator); None while online.
    offline_backoff: Backoff | None = None
    polls: int = 0
    probes: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    @classmethod
    def build(cls, config: DeviceConfig) -> DeviceState:
        return cls(
            config,
            plan_reads(config.registers),
            {r.name: r for r in config.registers},
            {c.name: c for c in config.commands},
        )

    @property
    def key(self) -> tuple[str, str]:
        return (self.config.tenant, self.config.device)


@dataclass(frozen=True, slots=True)
class WriteOp:
    """One write request: a coil's bit or holding register words at ``address``."""

    kind: str  # "coil" | "holding"
    address: int
    value: bool | list[int]


OnValues = Callable[[DeviceState, dict[str, float]], Awaitable[None]]
OnDeviceOnline = Callable[[DeviceState], Awaitable[None]]


class BusCoordinator:
    def __init__(
        self,
        config: BusConfig,
        link: SerialLink,
        *,
        health: HealthBoard,
        stats: ModbusStats,
        on_values: OnValues,
        on_online: OnDeviceOnline,
    ) -> None:
        self.config = config
        self.link = link
        self.devices = [DeviceState.build(d) for d in config.devices]
        self._health = health
        self._stats = stats
        self._on_values = on_values
        self._on_online = on_online
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._opened_once = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._supervise(), name=f"modbus bus {self.config.port}"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        # pymodbus can swallow a cancel() (see fieldgate.tasks); the poll loop has no cleanup of
        # its own to protect (the link is closed below), so re-cancel quickly.
        await cancel_and_wait(task, grace_s=0.2)
        self.link.close()

    async def _supervise(self) -> None:
        while True:
            try:
                await self._run()
            except Exception:  # task top: log, count, restart the bus loop
                self._stats.task_restarts += 1
                log.exception("modbus bus %s: poll loop failed; restarting", self.config.port)
                self.link.close()
                await asyncio.sleep(RESTART_DELAY_S)

    # ------------------------------------------------------------------ polling

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.link.connected:
                if self._opened_once:
                    self._stats.port_errors += 1
                    log.warning("modbus bus %s: port lost; reopening", self.config.port)
                await self._connect()
            dev = min(self.devices, key=lambda d: d.next_due)
            delay = dev.next_due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            try:
                async with self._lock:
                    result = await self._poll(dev)
            except PortError as err:
                self._port_lost(err)
                continue
            if result is not None:
                went_online, values = result
                if went_online:
                    await self._announce(dev)
                if values:
                    await self._on_values(dev, values)

    def _port_lost(self, err: LinkError) -> None:
        """Close the line; the poll loop notices, counts it and reopens with backoff."""
        log.debug("modbus bus %s: %s", self.config.port, err.reason)
        self.link.close()

    async def _connect(self) -> None:
        """Open the port, retrying with capped exponential backoff; devices are offline meanwhile."""
        for dev in self.devices:
            self._mark_offline(dev, count=False)
        backoff = Backoff(RECONNECT_INITIAL_S, self.config.reconnect_backoff_max_s)
        failures = 0
        while True:
            try:
                async with self._lock:
                    await self.link.open()
                break
            except PortError as err:
                failures += 1
                self._stats.port_errors += 1
                if failures == 1:
                    log.warning("modbus bus %s: %s; retrying with backoff", self.config.port, err.reason)
            await backoff.sleep()
        if self._opened_once:
            self._stats.port_reconnects += 1
            log.info("modbus bus %s: port reopened after %d failed attempts", self.config.port, failures)
        self._opened_once = True
        now = asyncio.get_running_loop().time()
        for dev in self.devices:
            dev.next_due = now
            dev.offline_backoff = None

    def _count(self, dev: DeviceState, kind: str) -> None:
        self._stats.count_error(kind)
        dev.errors[kind] = dev.errors.get(kind, 0) + 1
        self._health.error(dev.config.tenant, dev.config.device, kind)

    def _mark_offline(self, dev: DeviceState, *, count: bool = True) -> None:
        self._health.disconnected(dev.config.tenant, dev.config.device)
        if dev.online:
            dev.online = False
            if count:
                self._stats.devices_lost += 1
            log.warning("modbus %s (unit %d) stopped answering: offline", dev.config.device, dev.config.unit)

    async def _poll(self, dev: DeviceState) -> tuple[bool, dict[str, float]] | None:
        """Read the device (one probe request if it is offline). Runs under the bus lock.

        Returns (came online, values), or None if it did not answer.
        """
        loop = asyncio.get_running_loop()
        probing = not dev.online
        blocks = dev.blocks[:1] if probing else dev.blocks
        if probing:
            dev.probes += 1
        values: dict[str, float] = {}
        answered = timed_out = False
        for block in blocks:
            crc_before = self.link.crc_errors
            self._stats.requests += 1
            try:
                data = await self.link.read(dev.config.unit, block.type, block.address, block.count)
            except RequestTimeout:
                timed_out = True
                self._count(dev, "timeout")
                break
            except PortError:
                raise
            except LinkError as err:
                # An exception reply is an answer: the device is there, this block is not readable.
                answered = answered or err.kind.startswith("exception_")
                self._count(dev, err.kind)
                log.debug("modbus %s: %s at %s %d", dev.config.device, err.reason, block.type, block.address)
            else:
                answered = True
                decoded = decode_block(block, data)
                values.update(decoded.values)
                for name, reason in decoded.errors:
                    self._count(dev, "decode")
                    log.debug("modbus %s: %s not decoded: %s", dev.config.device, name, reason)
            finally:
                for _ in range(self.link.crc_errors - crc_before):
                    self._count(dev, "crc")
        now = loop.time()
        interval = dev.config.poll_interval_s
        if timed_out and not answered:
            self._mark_offline(dev)
            if dev.offline_backoff is None:  # never probed more often than it is polled
                cap = max(interval, self.config.offline_backoff_max_s)
                dev.offline_backoff = Backoff(interval, cap)
            dev.next_due = now + dev.offline_backoff.next_delay()
            return None
        if not answered:
            dev.next_due = now + interval
            return None
        went_online = not dev.online
        if went_online:
            dev.online = True
            self._health.connected(dev.config.tenant, dev.config.device, reconnect=dev.ever_online)
            if dev.ever_online:
                self._stats.devices_recovered += 1
                log.info("modbus %s (unit %d) answers again: online", dev.config.device, dev.config.unit)
            dev.ever_online = True
        self._health.seen(dev.config.tenant, dev.config.device)
        dev.offline_backoff = None
        if probing and len(dev.blocks) > 1:
            dev.next_due = now  # the probe read one block: read them all right away
            return went_online, {}
        self._stats.polls += 1
        dev.polls += 1
        due = dev.next_due + interval
        dev.next_due = due if due > now else now + interval
        return went_online, values

    async def _announce(self, dev: DeviceState) -> None:
        try:
            await self._on_online(dev)
        except Exception:  # a callback's bug must not stop the bus
            self._stats.online_callback_errors += 1
            log.exception("on_online for %s failed", dev.config.device)

    # ------------------------------------------------------------------ writes

    async def write(self, dev: DeviceState, ops: list[WriteOp]) -> None:
        """Perform ``ops`` in order between two polls; raises LinkError on the first failure."""
        async with self._lock:
            for op in ops:
                crc_before = self.link.crc_errors
                self._stats.requests += 1
                try:
                    if isinstance(op.value, bool):
                        await self.link.write_coil(dev.config.unit, op.address, op.value)
                    else:
                        await self.link.write_registers(dev.config.unit, op.address, op.value)
                except PortError as err:
                    self._port_lost(err)
                    raise
                except LinkError as err:
                    self._count(dev, err.kind)
                    raise
                finally:
                    for _ in range(self.link.crc_errors - crc_before):
                        self._count(dev, "crc")
