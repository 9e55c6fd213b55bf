"""Pure parts of the connectors: definitions validate (and keep secrets out of responses),
filters decide as documented, the webhook's wire format (signature golden vector, keys), the
MQTT topic template (the back-off schedule: tests/unit/test_retry.py)."""

from __future__ import annotations

import hashlib
import hmac

import orjson
import pytest
from pydantic import ValidationError

from fieldgate.cloud.domain.connectors.events import EventContext, FieldFilter, event_document
from fieldgate.cloud.domain.connectors.models import ConnectorIn, ConnectorOut, ConnectorSpec, FilterSpec
from fieldgate.cloud.pipeline.connectors.mqtt import render_topic
from fieldgate.cloud.pipeline.connectors.webhook import WebhookSink, idempotency_key, sign
from tests.helpers.connectors import make_event

HOOK = {"id": "h", "kind": "webhook", "webhook": {"url": "http://x/y", "secret": "s" * 20}}


def test_signature_golden_vector() -> None:
    # echo -n '{"a":1}' | openssl dgst -sha256 -hmac key
    assert sign("key", b'{"a":1}') == "sha256=" + hmac.new(b"key", b'{"a":1}', hashlib.sha256).hexdigest()
    assert sign("key", b"") == "sha256=5d5d139563c95b5967b9bd9a8c9b233a9dedb45072794cd232dc1b74832607d0"


def test_webhook_request_is_signed_over_the_exact_body() -> None:
    spec = ConnectorSpec.model_validate(HOOK)
    assert spec.webhook is not None
    sink = WebhookSink("default", "h", spec.webhook, spec.delivery)
    ev = make_event(1)
    body, headers = sink.request([ev], attempt=3)
    assert headers["X-Fieldgate-Signature"] == sign("s" * 20, body)
    assert headers["Idempotency-Key"] == ev.id and headers["X-Fieldgate-Attempt"] == "3"
    doc = orjson.loads(body)
    assert doc == event_document(ev) and doc["measurement"] == {"values": {"n": 1.0}}
    a, b = make_event(1), make_event(2)
    assert idempotency_key([a, b]) == idempotency_key([a, b]) != idempotency_key([b, a])


def test_secrets_never_in_the_output_and_kept_by_a_put() -> None:
    spec = ConnectorSpec.model_validate(HOOK)
    out = ConnectorOut.from_spec(spec).model_dump_json()
    assert "sssss" not in out and '"secret_set":true' in out
    assert ConnectorSpec.from_json(spec.to_json()) == spec  # stored with the secret
    put = ConnectorIn.model_validate({**HOOK, "webhook": {"url": "http://x/z"}})
    kept = ConnectorSpec.model_validate(put.model_dump()).with_secrets_of(spec)
    assert kept.webhook is not None and kept.webhook.secret is not None
    assert kept.webhook.secret.get_secret_value() == "s" * 20 and str(kept.webhook.url) == "http://x/z"


@pytest.mark.parametrize(
    "bad",
    [
        {**HOOK, "kind": "kafka"},
        {**HOOK, "mqtt": {"host": "h"}},
        {**HOOK, "filter": {"event_types": ["nope"]}},
        {"id": "m", "kind": "mqtt", "mqtt": {"host": "h", "topic": "a/#"}},
        {"id": "m", "kind": "mqtt", "mqtt": {"host": "h", "topic": "a/{device!r}"}},
        {
            "id": "k",
            "kind": "kafka",
            "kafka": {"bootstrap": "h:1", "topic": "t", "config": {"bootstrap.servers": "x"}},
        },
    ],
)
def test_bad_definitions_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ConnectorSpec.model_validate(bad)


def test_filters() -> None:
    ev = make_event(1, device="pump-7", kind="alert")
    ev.assignment = "a1"
    ctx = EventContext(device_type="pump", area="north", customer="acme")

    def ok(**f: object) -> bool:
        return FieldFilter(FilterSpec.model_validate(f)).matches(ev, ctx)

    assert ok()
    assert ok(event_types=["alert", "location"]) and not ok(event_types=["measurement"])
    assert ok(devices=["pump-*"]) and ok(devices=["x", "pump-?"]) and not ok(devices=["pump"])
    assert ok(device_types=["pump"]) and not ok(device_types=["valve"])
    assert ok(areas=["north"], customers=["acme"]) and not ok(areas=["north"], customers=["other"])
    assert not FieldFilter(FilterSpec(areas=("north",))).matches(ev, EventContext())
    f = FieldFilter(FilterSpec(devices=("p*",)))
    assert not f.needs_device and not f.needs_assignment
    assert FieldFilter(FilterSpec(customers=("c",))).needs_assignment


def test_topic_template() -> None:
    ev = make_event(1, device="d1", kind="location")
    assert (
        render_topic("out/{tenant}/{device}/{type}/{assignment}", ev, "c") == "out/default/d1/location/none"
    )
