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

# One module, one name: the folder is part of the package through the link fieldgate/sims. From the
# repository's root (on sys.path under pytest) it would import a second time under another
# name, with its own copies of every class and registry, so that is refused.
if __name__ != "fieldgate.sims":
    raise ImportError(
        f"{__name__!r} is the repository's firmware-sims/ folder: import it as fieldgate.sims"
        " (fieldgate/sims links to it; README.md, Where things are)",
        name=__name__,
    )
