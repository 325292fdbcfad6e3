"""Where job results go: local paths and pyarrow filesystem URIs, with their secrets masked."""

from __future__ import annotations

import pytest

from evomerge.errors import ConfigError
from evomerge.storage_uri import is_uri, mask_uri, resolve


def test_uris_and_masked_secrets() -> None:
    assert is_uri("s3://b/p") and is_uri("file:///tmp/x") and not is_uri("/mnt/shared/runs")
    assert mask_uri("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert mask_uri("s3://bucket/key") == "s3://bucket/key"


def test_a_local_path_resolves_to_the_local_filesystem(tmp_path) -> None:
    import pyarrow.fs as pafs

    fs, path = resolve(str(tmp_path / "runs" / ".." / "runs"))
    assert isinstance(fs, pafs.LocalFileSystem) and path == str((tmp_path / "runs").resolve())


def test_unknown_scheme_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="nosuch://x.*cannot open"):
        resolve("nosuch://x/y")
