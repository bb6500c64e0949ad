from pathlib import Path
from types import SimpleNamespace

import pytest

from gd_provider.operators._common import StoragePathError, resolve_home_path, safe_name, task_dir, task_key


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


def test_task_outputs_are_keyed_by_run_task_and_map_index(gd_home):
    run = SimpleNamespace(dag_id="gd_nightly", run_id="manual__2026-03-01T00:00:00+00:00")
    plain = {"dag_run": run, "ti": SimpleNamespace(map_index=-1)}
    mapped = {"dag_run": run, "ti": SimpleNamespace(map_index=3)}
    run_folder = gd_home / "runs" / "gd_nightly" / "manual__2026-03-01T00_00_00_00_00"
    assert task_dir(plain, "data.retrieve") == run_folder / "data.retrieve"
    assert task_dir(mapped, "retrieve") == run_folder / "retrieve.3"
    assert task_dir({"dag_run": run}, "retrieve", "x") == run_folder / "retrieve" / "x"  # no ti: not mapped
    assert (task_key(plain, "validate"), task_key(mapped, "validate")) == ("validate", "validate[3]")
    assert task_dir(plain, "../escape").parent == run_folder
