"""One serial Modbus RTU line, through pymodbus's AsyncModbusSerialClient.

The only module that imports pymodbus. It turns pymodbus's outcomes into fieldgate's own:
a list of words/bits, or :class:`RequestTimeout` (no valid answer after the retries),
:class:`ExceptionReply` (the device answered with a Modbus exception code),
:class:`BadResponse` (an answer that does not fit the request) or :class:`PortError` (the tty
is gone or cannot be opened — unplugged adapter). pymodbus drops responses with a bad CRC
without telling anyone, so the link inspects every received byte stream itself (pymodbus's
public ``trace_packet`` hook) and counts bad CRCs in :attr:`SerialLink.crc_errors`; the bus
coordinator attributes the increase to the device it was talking to.

pymodbus 3.16 API notes (checked against the installed source): the unit id keyword is
``device_id`` (it was ``slave`` before 3.10), ``framer=FramerType.RTU``, ``timeout`` bounds
connecting *and* each attempt of a request, ``retries`` is per request; ``reconnect_delay=0``
turns off pymodbus's own reconnect loop because the coordinator runs its own, visible policy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence

from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from fieldgate.edge.adapters.modbus.config import BusConfig
from fieldgate.edge.adapters.modbus.registers import FrameCheck, check_rtu_response
from fieldgate.edge.errors import EdgeError


class LinkError(EdgeError):
    """A Modbus request failed; ``kind`` is the error kind counted in link health."""

    kind = "other"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RequestTimeout(LinkError):
    kind = "timeout"


class BadResponse(LinkError):
    kind = "decode"


class ExceptionReply(LinkError):
    def __init__(self, code: int) -> None:
        super().__init__(f"exception response {code}")
        self.code = code
        self.kind = f"exception_{code}"


class PortError(LinkError):
    kind = "port"


class SerialLink:
    """See the module docstring. One request at a time is the caller's job (the coordinator)."""

    def __init__(self, config: BusConfig, *, port: str | None = None) -> None:
        self._config = config
        self.port = port or config.port
        self.crc_errors = 0
        self._client: AsyncModbusSerialClient | None = None
        # A request never holds the bus longer than its attempts plus slack, whatever pymodbus does.
        self._guard_s = config.timeout_s * (config.retries + 1) + 1.0

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending and check_rtu_response(data) is FrameCheck.BAD_CRC:
            self.crc_errors += 1
        return data

    async def open(self) -> None:
        """Open the tty; raises PortError if it is not there (yet)."""
        self.close()
        c = self._config
        client = AsyncModbusSerialClient(
            self.port,
            framer=FramerType.RTU,
            baudrate=c.baudrate,
            bytesize=c.bytesize,
            parity=c.parity,
            stopbits=c.stopbits,
            timeout=c.timeout_s,
            retries=c.retries,
            reconnect_delay=0,
            name=f"modbus {self.port}",
            trace_packet=self._trace,
        )
        try:
            ok = await client.connect()
        except (OSError, ModbusException) as err:
            client.close()
            raise PortError(f"cannot open {self.port}: {err}") from err
        if not ok or not client.connected:
            client.close()
            raise PortError(f"cannot open {self.port}")
        self._client = client

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def _run(self, client: AsyncModbusSerialClient, request: Awaitable[ModbusPDU]) -> ModbusPDU:
        try:
            async with asyncio.timeout(self._guard_s):
                response = await request
        except TimeoutError as err:
            raise RequestTimeout("no answer") from err
        except ConnectionException as err:
            raise PortError(f"{self.port}: {err}") from err
        except ModbusIOException as err:
            if not client.connected:
                raise PortError(f"{self.port} went away") from err
            if "No response" in str(err):
                raise RequestTimeout("no answer") from err
            raise BadResponse(str(err)) from err
        except ModbusException as err:
            raise BadResponse(str(err)) from err
        if not client.connected:
            raise PortError(f"{self.port} went away")
        if not isinstance(response, ModbusPDU):
            raise BadResponse("no response object")
        if response.isError():
            raise ExceptionReply(int(getattr(response, "exception_code", 0)))
        return response

    def _client_or_fail(self) -> AsyncModbusSerialClient:
        if self._client is None or not self._client.connected:
            raise PortError(f"{self.port} is not open")
        return self._client

    async def read(self, unit: int, kind: str, address: int, count: int) -> list[int] | list[bool]:
        """Read ``count`` registers (or bits) of type ``kind`` from ``address``."""
        client = self._client_or_fail()
        if kind == "coil":
            r = await self._run(client, client.read_coils(address, count=count, device_id=unit))
            return self._bits(r, count)
        if kind == "discrete":
            r = await self._run(client, client.read_discrete_inputs(address, count=count, device_id=unit))
            return self._bits(r, count)
        if kind == "holding":
            r = await self._run(client, client.read_holding_registers(address, count=count, device_id=unit))
        else:
            r = await self._run(client, client.read_input_registers(address, count=count, device_id=unit))
        words = [int(w) for w in r.registers]
        if len(words) != count:
            raise BadResponse(f"asked for {count} registers, got {len(words)}")
        return words

    @staticmethod
    def _bits(response: ModbusPDU, count: int) -> list[bool]:
        bits = [bool(b) for b in response.bits]
        if len(bits) < count:  # answers are padded to whole bytes, never shorter
            raise BadResponse(f"asked for {count} bits, got {len(bits)}")
        return bits[:count]

    async def write_coil(self, unit: int, address: int, value: bool) -> None:
        client = self._client_or_fail()
        await self._run(client, client.write_coil(address, value, device_id=unit))

    async def write_registers(self, unit: int, address: int, words: Sequence[int]) -> None:
        client = self._client_or_fail()
        if len(words) == 1:
            await self._run(client, client.write_register(address, words[0], device_id=unit))
        else:
            await self._run(client, client.write_registers(address, list(words), device_id=unit))
