"""Ingest: read raw source files into one canonical points table plus one quarantine table.

``ingest(sources, root)`` writes ``<root>/ingest/<key>/`` with

- ``points.parquet``: canonical points (``schema.to_canonical``: lon/lat WGS84 degrees, ``t``
  ``datetime64[ns, UTC]``), sorted by ``traj_id, t`` (ties keep file order);
- ``quarantine.parquet``: ``file, line, raw, reason, detail`` for every rejected row;
- ``manifest.json``: ``rows_read == rows_kept + rows_quarantined``, counts by reason and per file,
  the source fingerprints and parameters.

``key`` hashes the files' fingerprints (path, size, mtime) and the parameters, so re-ingesting
unchanged files returns the existing directory without reading anything.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from trajfm.data.readers import READERS, ReadResult, read_file
from trajfm.data.readers.base import empty_quarantine
from trajfm.data.schema import empty_points, to_canonical
from trajfm.store import (
    SCHEMA_VERSION,
    StageWriter,
    data_root,
    file_fingerprint,
    is_complete,
    read_manifest,
    stable_hash,
    stage_dir,
)

STAGE = "ingest"
INGEST_VERSION = 1  # bump when reader behaviour changes, so cached outputs are not reused
DEFAULT_PARAMS = {"kind": "vessel", "format": None}
SOURCE_SUFFIXES = (".traj", ".csv")  # files picked up when a source is a directory


@dataclass(frozen=True)
class IngestSummary:
    """Counts of one ingest run, read back from its manifest (all counts are rows = fixes)."""

    path: Path
    key: str
    rows_read: int
    rows_kept: int
    rows_quarantined: int
    quarantined_by_reason: dict[str, int]
    per_file: dict[str, dict]
    n_trajectories: int
    n_objects: int
    params: dict = field(default_factory=dict)
    sources: list[dict] = field(default_factory=list)

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> "IngestSummary":
        m = read_manifest(path)
        return cls(
            path=Path(path),
            key=m["key"],
            rows_read=m["rows_read"],
            rows_kept=m["rows_kept"],
            rows_quarantined=m["rows_quarantined"],
            quarantined_by_reason=m["quarantined_by_reason"],
            per_file=m["per_file"],
            n_trajectories=m["n_trajectories"],
            n_objects=m["n_objects"],
            params=m["params"],
            sources=m["sources"],
        )


def read_ingest_summary(path: str | os.PathLike) -> IngestSummary:
    """Counts of the ingest output directory ``path``."""
    return IngestSummary.from_dir(path)


def load_points(path: str | os.PathLike) -> pd.DataFrame:
    """Canonical points of an ingest (or any stage) directory."""
    return pd.read_parquet(Path(path) / "points.parquet")


def load_quarantine(path: str | os.PathLike) -> pd.DataFrame:
    """Quarantine table of a stage directory."""
    return pd.read_parquet(Path(path) / "quarantine.parquet")


def resolve_sources(sources: list[str | os.PathLike] | str | os.PathLike) -> list[Path]:
    """Absolute, de-duplicated, sorted file paths; a directory contributes its .traj/.csv files.

    Sorting makes the output and the cache key independent of the order sources are given in.
    Raises ``FileNotFoundError`` for a missing path and ``ValueError`` when two files share a
    stem (the stem is the ``source`` name and prefixes every ``traj_id``, so it must be unique).
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    paths: set[Path] = set()
    for src in sources:
        p = Path(src).expanduser().resolve()
        if p.is_dir():
            paths.update(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in SOURCE_SUFFIXES)
        elif p.is_file():
            paths.add(p)
        else:
            raise FileNotFoundError(f"ingest source not found: {src}")
    ordered = sorted(paths, key=str)
    stems: dict[str, Path] = {}
    for p in ordered:
        if p.stem in stems:
            raise ValueError(f"two sources share the name {p.stem!r}: {stems[p.stem]} and {p}")
        stems[p.stem] = p
    return ordered


def _check_params(params: dict | None) -> dict:
    merged = {**DEFAULT_PARAMS, **(params or {})}
    unknown = set(merged) - set(DEFAULT_PARAMS)
    if unknown:
        raise ValueError(f"unknown ingest params {sorted(unknown)}; known: {sorted(DEFAULT_PARAMS)}")
    if merged["format"] is not None and merged["format"] not in READERS:
        raise ValueError(f"unknown format {merged['format']!r}; known: {sorted(READERS)}")
    return merged


def ingest_key(paths: list[Path], params: dict) -> str:
    """Cache key: input file fingerprints, parameters, reader and schema versions."""
    return stable_hash(
        {
            "stage": STAGE,
            "version": INGEST_VERSION,
            "schema_version": SCHEMA_VERSION,
            "files": [file_fingerprint(p) for p in paths],
            "params": params,
        }
    )


def ingest(
    sources: list[str | os.PathLike] | str | os.PathLike,
    root: str | os.PathLike | None = None,
    params: dict | None = None,
) -> Path:
    """Read every source file and write the ``ingest`` stage; returns its directory.

    ``params``: ``kind`` (mover kind written to every point, default ``"vessel"``) and ``format``
    (force a reader for all files; default ``None`` detects per file). A complete directory for
    the same key is returned as is.
    """
    params = _check_params(params)
    paths = resolve_sources(sources)
    root = data_root(root)
    key = ingest_key(paths, params)
    out = stage_dir(root, STAGE, key)
    if is_complete(out):
        return out

    started = time.perf_counter()
    results = [read_file(p, format=params["format"], kind=params["kind"]) for p in paths]
    points = _combine_points(results)
    quarantine = _combine_quarantine(results)
    rows_read = sum(r.rows_read for r in results)
    if rows_read != len(points) + len(quarantine):
        raise AssertionError(f"ingest lost rows: read {rows_read}, kept {len(points)}, quarantined {len(quarantine)}")

    with StageWriter(root, STAGE, key) as writer:
        writer.write_frame("points", points)
        writer.write_frame("quarantine", quarantine)
        writer.manifest.update(
            rows_read=int(rows_read),
            rows_kept=int(len(points)),
            rows_quarantined=int(len(quarantine)),
            quarantined_by_reason=_count_reasons(quarantine),
            per_file={r.path.name: _file_counts(r) for r in results},
            n_trajectories=int(points["traj_id"].nunique()),
            n_objects=int(points["obj_id"].nunique()),
            t_min=str(points["t"].min()) if len(points) else None,
            t_max=str(points["t"].max()) if len(points) else None,
            sources=[file_fingerprint(p) for p in paths],
            params=params,
            elapsed_s=round(time.perf_counter() - started, 3),
        )
    return writer.final


def _combine_points(results: list[ReadResult]) -> pd.DataFrame:
    frames = [r.points for r in results if len(r.points)]
    if not frames:
        return to_canonical(empty_points())
    points = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    points = to_canonical(points)
    # Stable sort: fixes of one track at the same instant keep their file order.
    return points.sort_values(["traj_id", "t"], kind="stable", ignore_index=True)


def _combine_quarantine(results: list[ReadResult]) -> pd.DataFrame:
    frames = [r.quarantine for r in results if len(r.quarantine)]
    if not frames:
        return empty_quarantine()
    return pd.concat(frames, ignore_index=True)


def _count_reasons(quarantine: pd.DataFrame) -> dict[str, int]:
    if quarantine.empty:
        return {}
    return {str(k): int(v) for k, v in sorted(quarantine["reason"].value_counts().items())}


def _file_counts(result: ReadResult) -> dict:
    return {
        "path": str(result.path),
        "format": result.format,
        "rows_read": result.rows_read,
        "rows_kept": result.rows_kept,
        "rows_quarantined": result.rows_quarantined,
        "quarantined_by_reason": result.quarantined_by_reason(),
        "notes": result.notes[:20],
    }
