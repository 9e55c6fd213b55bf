"""The registries' device cache: a found device is served from memory for ``device_cache_s``
(another process's change or deletion is seen after that), its owner's writes drop it at once,
and the bound holds."""

from __future__ import annotations

from fieldgate.cloud.store._registry_cache import RegistryCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_cached_device_expires_and_a_drop_is_immediate() -> None:
    clock = Clock()
    cache = RegistryCache(device_cache_size=10, clock=clock, device_cache_s=10.0)
    cache.put_device("t", "d", b"v1")
    assert cache.device("t", "d") == b"v1"
    clock.now += 9.9
    assert cache.device("t", "d") == b"v1"
    clock.now += 0.2  # another process may have changed or deleted it: ask the store again
    assert cache.device("t", "d") is None
    cache.put_device("t", "d", b"v2")
    cache.drop_device("t", "d")
    assert cache.device("t", "d") is None


def test_the_device_cache_is_bounded_and_can_be_off() -> None:
    clock = Clock()
    cache = RegistryCache(device_cache_size=2, clock=clock)
    for name in ("a", "b", "c"):
        cache.put_device("t", name, name.encode())
    assert [cache.device("t", n) for n in ("a", "b", "c")] == [None, b"b", b"c"]
    off = RegistryCache(clock=clock, device_cache_s=0)
    off.put_device("t", "a", b"a")
    assert off.device("t", "a") is None
