from pathlib import Path

import pytest

from gd_provider.operators._common import StoragePathError, resolve_home_path, safe_name


def test_relative_paths_resolve_under_the_storage_root(gd_home):
    assert resolve_home_path("feature_repo/data/transactions") == gd_home.resolve() / "feature_repo/data/transactions"
    assert resolve_home_path(str(gd_home / "runs" / "x")) == gd_home.resolve() / "runs" / "x"


@pytest.mark.parametrize("bad", ["../etc/passwd", "feature_repo/../../x", "/etc/passwd", "s3://bucket/key",
                                 "file:///etc/passwd", "http://evil/x"])
def test_paths_cannot_escape_the_storage_root(gd_home, bad):
    with pytest.raises(StoragePathError, match=r"storage root|URI schemes"):
        resolve_home_path(bad)


def test_symlink_out_of_the_root_is_refused(gd_home, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (gd_home / "link").symlink_to(outside)
    with pytest.raises(StoragePathError, match="outside the storage root"):
        resolve_home_path("link/data.parquet")


def test_safe_name_keeps_run_ids_filesystem_safe():
    assert safe_name("manual__2026-03-01T00:00:00+00:00") == "manual__2026-03-01T00_00_00_00_00"
    assert "/" not in safe_name("../../etc") and safe_name("") == "run" and safe_name("..") == "run"
    assert Path(safe_name("a/../b")).name == safe_name("a/../b")
