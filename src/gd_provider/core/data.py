"""Datasets passed between tasks by URI, described by a small JSON-serializable manifest."""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetManifest:
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
) -> DatasetManifest:
    """Write ``df`` as one parquet file at ``uri`` and describe it.

    Rows are sorted by ``sort_by`` first, so the same rows always give the same bytes and digest.
    The file is written to a temporary name and renamed, so a reader never sees half a file.
    """
    path = uri_to_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    if sort_by:
        df = df.sort_values(list(sort_by), kind="mergesort")
    df = df.reset_index(drop=True)
    tmp = path.with_name(path.name + ".tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    time_range = None
    if timestamp_column and len(df):
        ts = df[timestamp_column]
        time_range = [ts.min().isoformat(), ts.max().isoformat()]
    return DatasetManifest(
        uri=str(path),
        sha256=file_sha256(path),
        rows=len(df),
        columns={c: str(t) for c, t in df.dtypes.items()},
        entity_keys=list(entity_keys or []),
        timestamp_column=timestamp_column,
        label_column=label_column,
        feature_refs=list(feature_refs or []),
        event_time_range=time_range,
        data_interval=data_interval,
    )


def read_dataset(manifest: DatasetManifest | dict[str, Any], *, verify: bool = True) -> pd.DataFrame:
    """Read a dataset back; with ``verify`` the file must still have the digest in its manifest."""
    if isinstance(manifest, dict):
        manifest = DatasetManifest.from_dict(manifest)
    path = uri_to_path(manifest.uri)
    if not path.exists():
        raise DatasetError(f"dataset {manifest.uri} does not exist")
    if verify:
        digest = file_sha256(path)
        if digest != manifest.sha256:
            raise DatasetError(
                f"dataset {manifest.uri} changed since it was written: sha256 {digest[:12]}… "
                f"!= manifest {manifest.sha256[:12]}…"
            )
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise DatasetError(f"dataset {manifest.uri} is not readable parquet: {exc}") from exc
