"""The Kafka dev server's cluster id: StorageTool reads an id starting with "-" as an option."""

from __future__ import annotations

import uuid

import pytest

from fieldgate.devservers import kafka


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x01" * 16)])
    monkeypatch.setattr(uuid, "uuid4", lambda: next(draws))
    cluster_id = kafka._cluster_id()
    assert cluster_id == "AQEBAQEBAQEBAQEBAQEBAQ"  # the first draw ("-AAA…") was refused
    assert len(cluster_id) == 22
