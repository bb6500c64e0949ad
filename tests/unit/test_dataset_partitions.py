"""Datasets written as one parquet file or as a directory of part files (core.data): layout, digest,
reruns, reading back, and tampering detection that names the part file."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gd_provider.core.data import (
    PARTITION_FORMAT,
    PARTITION_INDEX,
    DatasetError,
    DatasetManifest,
    dataset_sha256,
    read_dataset,
    verify_dataset,
    write_dataset,
)

N = 2_500


def frame(n: int = N, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "card_id": rng.integers(0, 50, n),
            "event_timestamp": pd.Timestamp("2026-01-01", tz="UTC")
            + pd.to_timedelta(rng.integers(0, 86_400 * 20, n), unit="s"),
            "amount": rng.lognormal(3, 1, n),
            "score": rng.normal(size=n).astype("float32"),
            "channel": rng.choice(["web", "pos", "app"], n),
            "is_fraud": (rng.random(n) < 0.1).astype("int64"),
        }
    )
    df.loc[rng.random(n) < 0.05, "amount"] = np.nan  # features may be null
    return df


def write(df: pd.DataFrame, uri, partition_rows=None) -> DatasetManifest:
    return write_dataset(
        df,
        str(uri),
        sort_by=["event_timestamp", "card_id"],
        entity_keys=["card_id"],
        timestamp_column="event_timestamp",
        label_column="is_fraud",
        partition_rows=partition_rows,
    )


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_large_dataset_is_written_as_ordered_parts_with_the_same_content(tmp_path):
    df = frame()
    single = write(df, tmp_path / "single.parquet")
    parts = write(df, tmp_path / "parts.parquet", partition_rows=1_000)

    assert single.partitions is None and not single.partitioned
    assert (tmp_path / "single.parquet").is_file()
    root = tmp_path / "parts.parquet"
    assert root.is_dir() and parts.uri == str(root)
    names = ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert sorted(p.name for p in root.iterdir()) == sorted([*names, PARTITION_INDEX])
    assert parts.partitions["parts"] == 3 and parts.partitions["rows_per_part"] == 1_000
    assert parts.partitions["format"] == PARTITION_FORMAT
    assert [f["name"] for f in parts.partitions["files"]] == names
    assert [f["rows"] for f in parts.partitions["files"]] == [1_000, 1_000, 500]
    assert [pq.read_metadata(root / n).num_rows for n in names] == [1_000, 1_000, 500]
    assert [f["sha256"] for f in parts.partitions["files"]] == [sha(root / n) for n in names]

    # the digest is the canonical part list, recomputable with nothing but hashlib
    canonical = f"{PARTITION_FORMAT}\n" + "".join(f"{n} {sha(root / n)}\n" for n in names)
    assert parts.sha256 == hashlib.sha256(canonical.encode()).hexdigest() == dataset_sha256(parts.uri)
    assert single.sha256 == sha(tmp_path / "single.parquet") == dataset_sha256(single.uri)
    index = json.loads((root / PARTITION_INDEX).read_text())
    assert index["sha256"] == parts.sha256 and index["files"] == parts.partitions["files"]
    assert index["rows"] == N

    # same rows, same order, same dtypes as the single file; the manifests agree except for layout
    a, b = read_dataset(single), read_dataset(parts)
    pd.testing.assert_frame_equal(a, b)
    assert a["event_timestamp"].is_monotonic_increasing
    for field in ("rows", "columns", "event_time_range", "entity_keys", "label_column"):
        assert getattr(single, field) == getattr(parts, field), field
    # the parts hold consecutive slices of the sorted rows
    pd.testing.assert_frame_equal(pd.read_parquet(root / names[1]), a.iloc[1_000:2_000].reset_index(drop=True))


def test_digest_is_deterministic_across_reruns_and_locations(tmp_path):
    df = frame()
    first = write(df, tmp_path / "a" / "ds.parquet", partition_rows=700)
    shuffled = df.sample(frac=1.0, random_state=3)  # the same rows in another order: sorted on write
    again = write(shuffled, tmp_path / "a" / "ds.parquet", partition_rows=700)
    elsewhere = write(df, tmp_path / "b" / "other.parquet", partition_rows=700)
    assert first.sha256 == again.sha256 == elsewhere.sha256
    assert first.partitions == elsewhere.partitions
    # the layout is part of the identity: another part size is another digest, same content
    other_size = write(df, tmp_path / "c" / "ds.parquet", partition_rows=1_000)
    assert other_size.sha256 != first.sha256
    pd.testing.assert_frame_equal(read_dataset(other_size), read_dataset(first))
    # different rows: different digest
    changed = df.copy()
    changed.loc[0, "amount"] = 1e6
    assert write(changed, tmp_path / "d" / "ds.parquet", partition_rows=700).sha256 != first.sha256


def test_threshold_boundary_and_parameter_check(tmp_path):
    df = frame(1_000)
    assert write(df, tmp_path / "eq.parquet", partition_rows=1_000).partitions is None
    assert (tmp_path / "eq.parquet").is_file()
    above = write(frame(1_001), tmp_path / "above.parquet", partition_rows=1_000)
    assert [f["rows"] for f in above.partitions["files"]] == [1_000, 1]
    assert write(df, tmp_path / "never.parquet", partition_rows=None).partitions is None
    for bad in (0, -5, 1.5, True, "100"):
        with pytest.raises(DatasetError, match="partition_rows must be a positive integer"):
            write(df, tmp_path / "bad.parquet", partition_rows=bad)
    assert not (tmp_path / "bad.parquet").exists()


def test_rerun_replaces_the_other_layout_without_leftovers(tmp_path):
    df = frame()
    uri = tmp_path / "run" / "training_set.parquet"
    single = write(df, uri)
    parts = write(df, uri, partition_rows=1_000)
    assert uri.is_dir() and read_dataset(parts).shape == (N, df.shape[1])
    with pytest.raises(DatasetError, match="changed since it was written"):
        read_dataset(single)  # the old manifest no longer describes what is there
    back = write(df, uri)
    assert uri.is_file() and back.sha256 == single.sha256
    write(df, uri, partition_rows=600)
    smaller = write(df, uri, partition_rows=1_000)  # fewer parts than the last attempt: none left over
    assert smaller.sha256 == parts.sha256
    assert sorted(p.name for p in uri.iterdir()) == [PARTITION_INDEX] + [f"part-0000{i}.parquet" for i in range(3)]
    assert sorted(p.name for p in uri.parent.iterdir()) == ["training_set.parquet"]


def _rewrite_part(path, change) -> None:
    table = pq.read_table(path).to_pandas()
    change(table)
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), path)


def test_tampered_parts_are_named(tmp_path):
    df = frame()
    root = tmp_path / "ds.parquet"
    manifest = write(df, root, partition_rows=1_000)
    # what the drift check builds from a champion's lineage tags: uri + sha256 only
    lineage = DatasetManifest(uri=manifest.uri, sha256=manifest.sha256, rows=0, columns={})
    assert len(read_dataset(lineage)) == N

    _rewrite_part(root / "part-00001.parquet", lambda t: t.__setitem__("amount", t["amount"] * 2))
    for m in (manifest, manifest.to_dict(), lineage):
        with pytest.raises(DatasetError, match=r"part file .*ds\.parquet/part-00001\.parquet changed") as err:
            read_dataset(m)
        assert "part-00000" not in str(err.value) and "part-00002" not in str(err.value)
    assert len(read_dataset(manifest, verify=False)) == N  # verification is what catches it

    manifest = write(df, root, partition_rows=1_000)
    (root / "part-00002.parquet").unlink()
    with pytest.raises(DatasetError, match=r"part-00002\.parquet is missing"):
        verify_dataset(manifest)

    manifest = write(df, root, partition_rows=1_000)
    (root / "part-00003.parquet").write_bytes((root / "part-00000.parquet").read_bytes())
    with pytest.raises(DatasetError, match=r"part-00003\.parquet is not part of the dataset"):
        read_dataset(lineage)

    # the index can be altered as well: the digest from the files still decides
    manifest = write(df, root, partition_rows=1_000)
    _rewrite_part(root / "part-00000.parquet", lambda t: t.__setitem__("is_fraud", 1 - t["is_fraud"]))
    (root / PARTITION_INDEX).write_text("{}")
    with pytest.raises(DatasetError, match=r"changed since it was written: its part files differ"):
        read_dataset(lineage)
    with pytest.raises(DatasetError, match=r"part-00000\.parquet changed"):
        read_dataset(manifest)  # the manifest's own part list still names the file


def test_unreadable_part_is_named_and_empty_directory_refused(tmp_path):
    df = frame()
    root = tmp_path / "ds.parquet"
    manifest = write(df, root, partition_rows=1_000)
    (root / "part-00001.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(DatasetError, match=r"part-00001\.parquet changed"):
        read_dataset(manifest)
    with pytest.raises(DatasetError, match=r"part file .*part-00001\.parquet is not readable parquet"):
        read_dataset(manifest, verify=False)

    empty = tmp_path / "empty.parquet"
    empty.mkdir()
    with pytest.raises(DatasetError, match="directory without part files"):
        read_dataset({"uri": str(empty), "sha256": "0" * 64, "rows": 0, "columns": {}})
    with pytest.raises(DatasetError, match="does not exist"):
        read_dataset({"uri": str(tmp_path / "nope.parquet"), "sha256": "0" * 64, "rows": 0, "columns": {}})


def test_single_file_tampering_still_detected(tmp_path):
    manifest = write(frame(), tmp_path / "one.parquet")
    _rewrite_part(tmp_path / "one.parquet", lambda t: t.__setitem__("amount", t["amount"] + 1))
    with pytest.raises(DatasetError, match=r"one\.parquet changed since it was written: sha256"):
        read_dataset(manifest)
