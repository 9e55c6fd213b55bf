"""Number and boolean types of request bodies: what JSON (and JSON Schema) says they are.

Pydantic's lax mode turns ``"5"`` into 5 and ``"true"`` into True; its strict mode refuses
``5.0`` for an integer, which JSON Schema counts as one (an ``integer`` is a number without a
fraction). :data:`JsonInt` is neither: an int, or a float with no fraction, never a string or a
boolean. Use it (and pydantic's ``StrictFloat``, which takes ints, and ``StrictBool``) for every
integer of a request body, so the server takes exactly what its OpenAPI document describes
(tests/integration/test_api_contract.py walks every body to check).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BeforeValidator, Strict


def integral(value: Any) -> Any:
    """A float without a fraction as the int it is; anything else unchanged (for the strict
    int check to accept or refuse)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: An integer without bounds. With bounds, write them first so that the OpenAPI document shows
#: them (pydantic writes bounds given after a before-validator as unknown keywords):
#: ``Annotated[int, Field(ge=1, le=9), BeforeValidator(integral), Strict()]``.
JsonInt = Annotated[int, BeforeValidator(integral), Strict()]


def one_of_fields(*names: str, at_least: bool = False) -> Callable[[dict[str, Any]], None]:
    """``json_schema_extra`` of a model where exactly one (``at_least``: at least one) of the
    optional fields ``names`` is given (present and not null): the document says so, as a
    ``oneOf`` (``anyOf``) of one branch per field, so that a client, or a fuzzer, knows."""

    def extra(schema: dict[str, Any]) -> None:
        branches = [{"required": [name], "properties": {name: {"not": {"type": "null"}}}} for name in names]
        schema["anyOf" if at_least else "oneOf"] = branches

    return extra
