"""Publishing job results to a path or a pyarrow filesystem URI (file:// here)."""

from __future__ import annotations

import pytest

from evomerge.errors import ConfigError
from evomerge.storage_uri import fetch_dir, is_uri, join, list_files, mask_uri, publish_dir, read_bytes


def make_run(root):
    (root / "sub").mkdir(parents=True)
    (root / "result.json").write_text('{"best": 0.5}')
    (root / "sub" / "table.parquet").write_bytes(b"PAR1xyz")
    return root


def test_publish_and_fetch_round_trip_through_a_file_uri(tmp_path) -> None:
    run = make_run(tmp_path / "run")
    dest = f"file://{tmp_path}/bucket/prefix/run-1"
    assert publish_dir(run, dest) == dest
    assert list_files(dest) == ["result.json", "sub/table.parquet"]
    assert read_bytes(join(dest, "sub", "table.parquet")) == b"PAR1xyz"
    assert (tmp_path / "bucket/prefix/run-1/result.json").read_text() == '{"best": 0.5}'
    back = tmp_path / "fetched"
    assert fetch_dir(dest, back) is True
    assert (back / "sub" / "table.parquet").read_bytes() == b"PAR1xyz"
    assert fetch_dir(f"file://{tmp_path}/nothing-here", tmp_path / "x") is False


def test_plain_paths_and_helpers(tmp_path) -> None:
    run = make_run(tmp_path / "run")
    assert publish_dir(run, str(run)) == str(run)  # publishing in place copies nothing
    publish_dir(run, str(tmp_path / "copy"))
    assert list_files(str(tmp_path / "copy")) == ["result.json", "sub/table.parquet"]
    assert is_uri("s3://b/p") and not is_uri("/mnt/shared/runs")
    assert join("s3://b/p/", "x", "/y") == "s3://b/p/x/y"
    assert mask_uri("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert mask_uri("s3://bucket/key") == "s3://bucket/key"


def test_unknown_scheme_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="nosuch://x.*cannot open"):
        list_files("nosuch://x/y")
