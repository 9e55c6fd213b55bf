"""Simulated devices (folder ``firmware-sims/``, imported as ``fieldgate.sims``).

They stand in for real firmware in tests, demos (``fieldgate up``), hardware-in-the-loop runs
without hardware, and load runs (``benchmarks/``). Each simulator speaks the same device-side
contract a real device would (docs/protocols/mqtt.md), so nothing on the gateway side can tell
the difference.

- :mod:`fieldgate.sims.device` — the device model itself (random-walk sensors, payloads,
  command handling); pure functions, no I/O, shared by every transport.
- :mod:`fieldgate.sims.mqtt` — N such devices over MQTT (paho-mqtt), plus ``fieldgate sim mqtt``.

See docs/simulators.md.
"""
