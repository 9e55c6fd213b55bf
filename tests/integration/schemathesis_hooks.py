"""Schemathesis hooks for fuzzing the REST API (tests/integration/schemathesis.toml).

Positive data acceptance with one principled exception: a request that is valid by the schema
but names something that does not exist (a device of an unknown type, an assignment of an
unknown device) is a 422 that says which under ``reference`` (docs/api.md, "Errors"). No
schema can know what exists, so that answer is correct; every other refusal of schema-valid
data is still a failure (a schema that promises more than the server takes).
"""

from __future__ import annotations

import json
from typing import Any

import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance


def names_an_unknown_reference(response: Any) -> bool:
    if response.status_code != 422:
        return False
    try:
        body = json.loads(response.content)
    except ValueError:
        return False
    ref = body.get("reference") if isinstance(body, dict) else None
    return isinstance(ref, dict) and {"kind", "token"} <= ref.keys()


@schemathesis.check
def positive_data_acceptance_but_unknown_references(ctx: Any, response: Any, case: Any) -> bool | None:
    """The built-in ``positive_data_acceptance``, except for a 422 naming an unknown reference."""
    if names_an_unknown_reference(response):
        return None
    return positive_data_acceptance(ctx, response, case)
