"""Backend-neutral checks shared by the SQLite and Cassandra stores: tenant tokens (which name
files and keyspaces) and page numbers."""

from __future__ import annotations

import re

from fieldgate.cloud.errors import InvalidRequest

# Same rule as cloud.config.TenantConfig.token: safe as part of a file name.
_TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def valid_tenant(token: str) -> bool:
    """True when ``token`` may name a tenant (and hence a database file)."""
    return bool(_TENANT_RE.match(token))


def require_tenant(token: str) -> str:
    """``token`` if valid; InvalidRequest otherwise (guards file names against traversal)."""
    if not valid_tenant(token):
        raise InvalidRequest(f"invalid tenant token {token!r}: expected [a-z0-9][a-z0-9_-]{{0,62}}")
    return token


def check_page(page: int, page_size: int, max_page_size: int = 10_000) -> tuple[int, int]:
    """``(limit, offset)`` for a 1-based page; InvalidRequest for nonsense."""
    if page < 1:
        raise InvalidRequest(f"page must be >= 1, got {page}")
    if not 1 <= page_size <= max_page_size:
        raise InvalidRequest(f"page_size must be between 1 and {max_page_size}, got {page_size}")
    return page_size, (page - 1) * page_size
