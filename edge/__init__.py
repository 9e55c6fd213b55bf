"""The fieldgate edge agent: southbound adapters, codecs, durable buffer, uplink, command router.

Layering (imports go one way, low to high):
``codec`` (pure, no I/O) → ``buffer`` / ``adapters`` (I/O, no knowledge of the cloud)
→ ``uplink`` / ``commands`` → ``agent`` (orchestration only).
"""
