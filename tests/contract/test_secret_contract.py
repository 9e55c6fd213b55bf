"""The token-signing secret on every backend (StorageBackend.token_secret): ``auth.secret_key``
wins, then ``auth.secret_file``, then the key the store generated once — the same for every
process that asks on the same store."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from fieldgate.cloud.config import AuthConfig, CloudConfig
from fieldgate.cloud.store.backend import storage_backend
from fieldgate.errors import ConfigError
from tests.contract.conftest import Backend


def with_auth(backend: Backend, auth: AuthConfig) -> Backend:
    return Backend(backend.kind, backend.config.model_copy(update={"auth": auth}))


async def test_the_generated_key_is_kept_and_shared(backend: Backend) -> None:
    first = await backend.storage().token_secret()
    assert len(first) >= 32
    assert await backend.storage().token_secret() == first  # another process, later


async def test_configured_keys_win_over_the_generated_one(backend: Backend, tmp_path: Path) -> None:
    generated = await backend.storage().token_secret()
    path = tmp_path / "mounted" / "token-key"
    path.parent.mkdir()
    path.write_text("  key-from-a-kubernetes-secret\n")
    assert (
        await with_auth(backend, AuthConfig(secret_file=path)).storage().token_secret()
        == "key-from-a-kubernetes-secret"
    )
    both = with_auth(backend, AuthConfig(secret_file=path, secret_key=SecretStr("explicit-key")))
    assert await both.storage().token_secret() == "explicit-key"
    assert await backend.storage().token_secret() == generated  # untouched by the others


@pytest.mark.parametrize("content", [None, "", " \n\t"])
async def test_a_missing_or_empty_secret_file_is_a_config_error(tmp_path: Path, content: str | None) -> None:
    """Backend-independent (the file is read before the store is asked), so SQLite only."""
    path = tmp_path / "token-key"
    if content is not None:
        path.write_text(content)
    config = CloudConfig(data_dir=tmp_path / "cloud", auth=AuthConfig(secret_file=path))
    with pytest.raises(ConfigError, match=r"auth\.secret_file"):
        await storage_backend(config).token_secret()
    assert not (tmp_path / "cloud" / "secret.key").exists()  # no silent fallback to a generated key
