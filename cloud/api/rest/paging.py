"""The one way a REST list is paged: ``?page=`` (1-based) and ``?page_size=``.

Every paged route takes :data:`PageQuery`, so the bounds are the same everywhere and checked
before any store sees them: ``page`` at most :data:`MAX_PAGE` (``(page - 1) * page_size`` stays
inside a 64-bit integer, so no store can overflow), ``page_size`` at most
:data:`MAX_PAGE_SIZE`; anything else is a 422 naming the parameter, and both bounds are in the
OpenAPI document. No ``from __future__ import annotations``: FastAPI reads the signature.
"""

from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, Query

from fieldgate.cloud.services.management import DEFAULT_PAGE_SIZE, MAX_PAGE, MAX_PAGE_SIZE

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Paging:
    page: int
    page_size: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.page_size

    def slice(self, items: list[T]) -> list[T]:
        """This page of an in-memory list."""
        return items[self.offset : self.offset + self.page_size]


def paging(
    page: Annotated[int, Query(ge=1, le=MAX_PAGE, description="1-based page number")] = 1,
    page_size: Annotated[
        int, Query(ge=1, le=MAX_PAGE_SIZE, description=f"items per page (at most {MAX_PAGE_SIZE})")
    ] = DEFAULT_PAGE_SIZE,
) -> Paging:
    return Paging(page, page_size)


PageQuery = Annotated[Paging, Depends(paging)]
