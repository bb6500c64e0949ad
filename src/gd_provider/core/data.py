"""Datasets passed between tasks by URI, described by a small JSON-serializable manifest.

A dataset is either **one parquet file** or, when it has more rows than ``partition_rows``, a
**partitioned** dataset: a directory at the same URI holding ``part-00000.parquet``, ``part-00001.parquet``,
... (``partition_rows`` rows each, the last one fewer; rows in the same order as the single file would
hold them) and an index ``_gd_dataset.json`` listing each part with its rows and sha256.

The manifest's ``sha256`` identifies the bytes on disk:

* one file: the sha256 of the file (what ``sha256sum`` prints);
* partitioned: the sha256 of the canonical part list ``"gd-partitioned-parquet/1\\n"`` followed by
  ``"<part name> <part sha256>\\n"`` per part, in order (see ``partitioned_sha256``).

Both are deterministic: the same rows and the same ``partition_rows`` give the same digest on every rerun,
wherever the dataset is written. The digest depends on the layout (a partitioned write and a single-file
write of the same rows have different digests, as two compressions would); the *content* read back is
the same. ``read_dataset`` recomputes the digest from the files alone (no manifest field other than
``uri`` and ``sha256`` is needed, so a reference found through lineage tags is verified too) and names the
part file that changed, is missing or is unexpected.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

PARTITION_FORMAT = "gd-partitioned-parquet/1"
PARTITION_INDEX = "_gd_dataset.json"
PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
DEFAULT_PARTITION_ROWS = 1_000_000


class DatasetError(ValueError):
    """A dataset is missing, unreadable, or not what its manifest says."""


@dataclass(frozen=True)
class DatasetManifest:
    uri: str
    sha256: str
    rows: int
    columns: dict[str, str]
    entity_keys: list[str] = field(default_factory=list)
    timestamp_column: str | None = None
    label_column: str | None = None
    feature_refs: list[str] = field(default_factory=list)
    event_time_range: list[str] | None = None
    data_interval: list[str] | None = None
    # None for one file; else {"format", "parts", "rows_per_part", "files": [{"name", "rows", "sha256"}]}
    partitions: dict[str, Any] | None = None

    @property
    def partitioned(self) -> bool:
        return self.partitions is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetManifest:
        if not isinstance(data, dict):
            raise DatasetError(f"dataset manifest must be a mapping, got {type(data).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        missing = {"uri", "sha256", "rows", "columns"} - set(data)
        if missing:
            raise DatasetError(f"dataset manifest lacks {sorted(missing)}: {data!r}")
        return cls(**{k: v for k, v in data.items() if k in known})


def uri_to_path(uri: str) -> Path:
    """Local path for a ``file://`` URI or a plain path; other schemes are not supported yet."""
    if uri.startswith("file://"):
        return Path(uri[len("file://") :])
    if "://" in uri:
        raise DatasetError(f"unsupported dataset URI scheme in {uri!r} (only local paths and file:// for now)")
    return Path(uri)


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def part_name(index: int) -> str:
    return f"{PART_PREFIX}{index:05d}{PART_SUFFIX}"


def partitioned_sha256(parts: list[tuple[str, str]]) -> str:
    """Digest of a partitioned dataset from its ``(part name, part sha256)`` pairs, in order."""
    h = hashlib.sha256(f"{PARTITION_FORMAT}\n".encode())
    for name, digest in parts:
        h.update(f"{name} {digest}\n".encode())
    return h.hexdigest()


def part_files(path: Path) -> list[Path]:
    """The part files of a partitioned dataset directory, in order (by name: names are zero-padded)."""
    return sorted(
        (p for p in path.iterdir() if p.name.startswith(PART_PREFIX) and p.name.endswith(PART_SUFFIX)),
        key=lambda p: p.name,
    )


def dataset_files(uri: str) -> list[Path]:
    """The parquet file(s) of the dataset at ``uri``: the file itself, or the parts of a directory."""
    path = uri_to_path(uri)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = part_files(path)
        if not files:
            raise DatasetError(f"dataset {uri} is a directory without part files ({PART_PREFIX}*{PART_SUFFIX})")
        return files
    raise DatasetError(f"dataset {uri} does not exist")


def dataset_sha256(uri: str) -> str:
    """The digest of the dataset at ``uri`` as it is on disk now (file sha256, or ``partitioned_sha256``)."""
    path = uri_to_path(uri)
    files = dataset_files(uri)
    if path.is_file():
        return file_sha256(path)
    return partitioned_sha256([(f.name, file_sha256(f)) for f in files])


def check_partition_rows(partition_rows: Any) -> None:
    if partition_rows is not None and (
        isinstance(partition_rows, bool) or not isinstance(partition_rows, int) or partition_rows < 1
    ):
        raise DatasetError(f"partition_rows must be a positive integer or None, got {partition_rows!r}")


def _install(tmp: Path, path: Path) -> None:
    """Put ``tmp`` (file or directory) at ``path``, replacing whatever is there."""
    if not path.exists() and not path.is_symlink():
        os.replace(tmp, path)
        return
    if path.is_file() and tmp.is_file():
        os.replace(tmp, path)  # atomic
        return
    aside = path.with_name(f"{path.name}.old-{os.getpid()}")
    _remove(aside)
    os.replace(path, aside)
    os.replace(tmp, path)
    _remove(aside)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _write_parts(df: pd.DataFrame, tmp: Path, partition_rows: int) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)  # what DataFrame.to_parquet(index=False) writes
    tmp.mkdir(parents=True)
    files = []
    for i, start in enumerate(range(0, table.num_rows, partition_rows)):
        name = part_name(i)
        part = table.slice(start, partition_rows)
        pq.write_table(part, tmp / name, compression="snappy")
        files.append({"name": name, "rows": part.num_rows, "sha256": file_sha256(tmp / name)})
    digest = partitioned_sha256([(f["name"], f["sha256"]) for f in files])
    partitions = {
        "format": PARTITION_FORMAT,
        "parts": len(files),
        "rows_per_part": partition_rows,
        "files": files,
    }
    index = {"sha256": digest, "rows": table.num_rows, **partitions}
    (tmp / PARTITION_INDEX).write_text(json.dumps(index, indent=1) + "\n")
    return {"sha256": digest, "partitions": partitions}


def write_dataset(
    df: pd.DataFrame,
    uri: str,
    *,
    sort_by: list[str] | None = None,
    entity_keys: list[str] | None = None,
    timestamp_column: str | None = None,
    label_column: str | None = None,
    feature_refs: list[str] | None = None,
    data_interval: list[str] | None = None,
    partition_rows: int | None = None,
) -> DatasetManifest:
    """Write ``df`` at ``uri`` and describe it: one parquet file, or - with more than ``partition_rows``
    rows - a directory of part files of ``partition_rows`` rows each (see the module docstring).

    Rows are sorted by ``sort_by`` first, so the same rows always give the same bytes and digest.
    The file (or directory) is written under a temporary name and renamed, so a reader never sees half
    of it; a rerun replaces what an earlier attempt wrote, whichever layout that had.
    ``partition_rows=None`` never partitions.
    """
    check_partition_rows(partition_rows)
    path = uri_to_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    if sort_by:
        df = df.sort_values(list(sort_by), kind="mergesort")
    df = df.reset_index(drop=True)
    tmp = path.with_name(path.name + ".tmp")
    _remove(tmp)  # left over by a killed attempt
    partitions = None
    if partition_rows is not None and len(df) > partition_rows:
        written = _write_parts(df, tmp, partition_rows)
        digest, partitions = written["sha256"], written["partitions"]
    else:
        df.to_parquet(tmp, index=False)
        digest = file_sha256(tmp)
    _install(tmp, path)
    time_range = None
    if timestamp_column and len(df):
        ts = df[timestamp_column]
        time_range = [ts.min().isoformat(), ts.max().isoformat()]
    return DatasetManifest(
        uri=str(path),
        sha256=digest,
        rows=len(df),
        columns={c: str(t) for c, t in df.dtypes.items()},
        entity_keys=list(entity_keys or []),
        timestamp_column=timestamp_column,
        label_column=label_column,
        feature_refs=list(feature_refs or []),
        event_time_range=time_range,
        data_interval=data_interval,
        partitions=partitions,
    )


def _expected_parts(manifest: DatasetManifest, path: Path) -> tuple[list[dict[str, Any]] | None, str]:
    """The part list a partitioned dataset was written with: from the manifest, else from its index."""
    if manifest.partitions and manifest.partitions.get("files"):
        return list(manifest.partitions["files"]), "its manifest"
    index = path / PARTITION_INDEX
    try:
        data = json.loads(index.read_text())
        if data.get("sha256") == manifest.sha256 and isinstance(data.get("files"), list):
            return list(data["files"]), f"its index {PARTITION_INDEX}"
    except (OSError, ValueError, AttributeError):
        pass
    return None, ""


def _verify_parts(manifest: DatasetManifest, path: Path, files: list[Path]) -> None:
    actual = [(f.name, file_sha256(f)) for f in files]
    digest = partitioned_sha256(actual)
    if digest == manifest.sha256:
        return
    expected, where = _expected_parts(manifest, path)
    problems = []
    if expected is not None:
        want = {p["name"]: p["sha256"] for p in expected}
        have = dict(actual)
        for name in sorted(set(want) - set(have)):
            problems.append(f"part file {path / name} is missing")
        for name in sorted(set(have) - set(want)):
            problems.append(f"part file {path / name} is not part of the dataset")
        for name in sorted(set(want) & set(have)):
            if want[name] != have[name]:
                problems.append(
                    f"part file {path / name} changed: sha256 {have[name][:12]}… != {want[name][:12]}… (per {where})"
                )
    detail = "; ".join(problems) if problems else "its part files differ from what was written"
    raise DatasetError(
        f"dataset {manifest.uri} changed since it was written: {detail} (dataset sha256 {digest[:12]}… "
        f"!= manifest {manifest.sha256[:12]}…)"
    )


def verify_dataset(manifest: DatasetManifest | dict[str, Any]) -> list[Path]:
    """Check that the dataset on disk still has its manifest's digest; returns its parquet file(s).

    A partitioned dataset's error names each part file that changed, is missing or is unexpected.
    """
    if isinstance(manifest, dict):
        manifest = DatasetManifest.from_dict(manifest)
    path = uri_to_path(manifest.uri)
    files = dataset_files(manifest.uri)
    if path.is_file():
        digest = file_sha256(path)
        if digest != manifest.sha256:
            raise DatasetError(
                f"dataset {manifest.uri} changed since it was written: sha256 {digest[:12]}… "
                f"!= manifest {manifest.sha256[:12]}…"
            )
    else:
        _verify_parts(manifest, path, files)
    return files


def read_dataset(manifest: DatasetManifest | dict[str, Any], *, verify: bool = True) -> pd.DataFrame:
    """Read a dataset back (one file or all parts, in order) as one frame.

    With ``verify`` the file(s) must still have the digest in the manifest.
    """
    if isinstance(manifest, dict):
        manifest = DatasetManifest.from_dict(manifest)
    path = uri_to_path(manifest.uri)
    files = verify_dataset(manifest) if verify else dataset_files(manifest.uri)
    if path.is_file():
        try:
            return pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for damaged files
            raise DatasetError(f"dataset {manifest.uri} is not readable parquet: {exc}") from exc
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for f in files:
        try:
            tables.append(pq.read_table(f))
        except Exception as exc:
            raise DatasetError(f"dataset {manifest.uri}: part file {f} is not readable parquet: {exc}") from exc
    try:
        table = pa.concat_tables(tables)
    except Exception as exc:  # parts written with different schemas
        raise DatasetError(f"dataset {manifest.uri}: its part files do not share one schema: {exc}") from exc
    return table.to_pandas()
