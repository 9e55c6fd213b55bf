"""The fieldgate edge agent: southbound adapters, durable buffer, uplink, command router.

Layering (imports go one way, low to high):
:mod:`fieldgate.protocol` (topics, codecs: pure, no I/O) → ``buffer`` / ``adapters`` (I/O, no
knowledge of the cloud) → ``uplink`` / ``commands`` → ``agent`` (orchestration only).
"""
