"""Run a paho-mqtt client's network I/O on the asyncio event loop (no paho thread).

paho exposes its socket through ``on_socket_open/close/register_write/unregister_write``;
this bridge registers it with the loop (``add_reader``/``add_writer``), calls
``loop_read``/``loop_write`` when it is ready and ``loop_misc`` once a second for keepalives —
the scheme aiomqtt uses. Every paho callback (``on_message``, ``on_connect``, ...) therefore runs
on the event loop thread: messages need no thread hop or lock to reach asyncio code, and
acknowledging a message later (``client.ack``) is a plain call.

The one blocking paho call, ``connect`` (DNS and TCP connect), runs in an executor thread; the
socket callbacks it triggers there are forwarded to the loop with ``call_soon_threadsafe``.

``pause_reading``/``resume_reading`` stop and restart reading the socket: the adapter's
backpressure signal when too many messages are being handed over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

log = logging.getLogger(__name__)

MISC_INTERVAL_S = 1.0


class PahoAsyncioBridge:
    """Owns the event-loop registrations of one paho client's socket."""

    def __init__(self, client: mqtt.Client, loop: asyncio.AbstractEventLoop) -> None:
        self._client = client
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._fd: int | None = None
        self._writing = False
        self._paused = False
        self._misc_task: asyncio.Task[None] | None = None
        self._shut = False
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write

    async def connect(self, host: str, port: int, keepalive: int) -> None:
        """TCP-connect and send CONNECT; the CONNACK arrives later through ``on_connect``."""
        await self._loop.run_in_executor(None, self._client.connect, host, port, keepalive)

    def pause_reading(self) -> None:
        if not self._paused:
            self._paused = True
            if self._fd is not None:
                self._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            if self._fd is not None:
                self._loop.add_reader(self._fd, self._read)

    def shutdown(self) -> None:
        """Drop every loop registration; a connect still running in the executor is undone."""
        self._shut = True
        self._closed(self._fd)

    # paho socket callbacks: may run on the executor thread during connect -------------------

    def _on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._opened, sock.fileno())

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._closed, sock.fileno())

    def _on_socket_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._want_write, True)

    def _on_socket_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._want_write, False)

    # on the loop --------------------------------------------------------------------------

    def _opened(self, fd: int) -> None:
        if self._shut:
            # The adapter stopped while connect() ran in the executor: say goodbye right away
            # (DISCONNECT is a few bytes on a fresh socket; paho closes the socket after it).
            with contextlib.suppress(OSError):
                self._client.disconnect()
                self._client.loop_write()
            return
        self._closed(self._fd)
        self._fd = fd
        if not self._paused:
            self._loop.add_reader(fd, self._read)
        if self._writing:
            self._loop.add_writer(fd, self._write)
        self._misc_task = self._loop.create_task(self._misc())

    def _closed(self, fd: int | None) -> None:
        if fd is None or fd != self._fd:
            return
        self._loop.remove_reader(fd)
        self._loop.remove_writer(fd)
        self._fd = None
        self._writing = False
        if self._misc_task is not None:
            self._misc_task.cancel()
            self._misc_task = None

    def _want_write(self, on: bool) -> None:
        self._writing = on
        if self._fd is None or self._shut:
            return
        if on:
            self._loop.add_writer(self._fd, self._write)
        else:
            self._loop.remove_writer(self._fd)

    def _read(self) -> None:
        self._client.loop_read()

    def _write(self) -> None:
        self._client.loop_write()

    async def _misc(self) -> None:
        while True:
            await asyncio.sleep(MISC_INTERVAL_S)
            if self._client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
